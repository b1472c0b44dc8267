"""The paper's tables and figures from a tree of finished run folders; never trains anything.

    python -m bitfit report runs/ -o report/
    python -m bitfit.report runs/ -o report/ --no-deltas      # tables and curves only: fast

    from bitfit.report import collect, select
    runs, skipped = collect(["runs/"])
    cells, skipped_more = select(runs)

Every folder under the roots that holds a run (``config.json`` of a run, ``results.json`` or
``metrics.jsonl``) is read. Runs group by (method, task, model, ``--max-train-samples``), where the
method is the fine-tune type with its bias terms and layers, e.g. ``bitfit (query, intermediate)``.
Within a group the learning rate with the best mean dev main metric over seeds is chosen (ties: the
smaller rate), and the table shows that rate's mean ± sample std over seeds (a cell with fewer seeds
than the table's most says how many it has). A run is left out, and listed with the reason, when it
is incomplete (no results, interrupted), failed (diverged), a duplicate, or its settings (epochs,
batch size, ...) differ from the rest of its group, which are never silently mixed: the settings
most runs of the group share win.

    report/README.md   one table per model and training-set size (rows: methods; columns: tasks),
                       the learning rates chosen, links to every figure, the skipped runs
    report/grid.md     every learning rate of every group, mean ± std and seeds, the chosen one marked
    report/figures/    curves_*.png        dev main metric per epoch, one line per learning rate
                       bias_change_*.png   BitFit: mean |b_final - b_initial| per bias role and layer
                       distance_*.png      full fine-tuning: ||W_ft - W_0|| / ||W_0|| per layer
                       data_size_*.png     main metric against training-set size, one line per method

The delta figures compare a run's ``delta.safetensors`` with its base model loaded again (and
checked against the delta's fingerprint); for a hub model that means the local cache.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import io
from .config import RunConfig
from .errors import UserError
from .tasks import TASKS, GlueTask, get_task

log = logging.getLogger("bitfit")

# Settings that do not change what a run measures, or that the group key already holds.
NOT_COMPARED = {"output_path", "seed", "learning_rate", "gpu_device", "cpu", "overwrite", "resume", "verbose",
                "data_dir", "eval_batch_size", "keep_checkpoint", "save_evaluator", "predict_test",
                "max_predict_samples", "trust_remote_code", "eval_train",
                "task_name", "model_name", "fine_tune_type", "bias_terms", "layers", "rand_budget", "mask_sparsity",
                "max_train_samples", "fast_cpu_ops", "compile", "gradient_checkpointing"}
METHOD_ORDER = ("full_ft", "bitfit", "layers", "sparse_mask", "rand_uniform", "rand_row_col", "frozen")
SHORT_METRIC = {"accuracy": "acc", "mcc": "MCC", "f1": "F1", "pearson": "Pearson", "spearmanr": "Spearman"}
ROLE_LABEL = {"query": "query", "key": "key", "value": "value", "attention_output": "attention output",
              "intermediate": "intermediate", "output": "output", "attention_layernorm": "attention LayerNorm",
              "output_layernorm": "output LayerNorm"}
_LAYER = re.compile(r"(?:^|\.)layers?\.(\d+)\.")


# ---------------------------------------------------------------------------------------------
# Reading run folders


@dataclass
class Run:
    """One complete run folder, read."""

    path: Path
    label: str  # the folder as the report names it (the root as given, then the path below it)
    cfg: dict  # RunConfig fields; fields an older run lacks get today's defaults
    results: dict
    history: list[dict]
    num_processes: int = 1

    @property
    def task(self) -> GlueTask:
        return get_task(self.cfg["task_name"])

    @property
    def lr(self) -> float:
        return float(self.cfg["learning_rate"])

    @property
    def seed(self) -> int:
        return int(self.cfg["seed"])

    @property
    def method(self) -> str:
        return method_name(self.cfg)

    @property
    def key(self) -> GroupKey:
        return GroupKey(self.cfg["model_name"], self.cfg.get("max_train_samples"), self.task.name, self.method)

    @property
    def settings(self) -> dict:
        """What must agree between runs that are averaged or compared: epochs, batch size, ..."""
        s = {k: v for k, v in self.cfg.items() if k not in NOT_COMPARED}
        return s | {"num_processes": self.num_processes}

    def metric(self, split: str, metric: str) -> float | None:
        value = self.results.get("best_metrics", {}).get(split, {}).get(metric)
        return None if value is None else float(value)

    @property
    def main(self) -> float:
        value = self.metric(self.task.main_dev_split, self.task.main_metric)
        return float(self.results["best_main_metric"]) if value is None else value

    def train_size(self) -> int | None:
        """Training examples per epoch (what ``--max-train-samples`` left, or the whole set)."""
        seen, epochs = self.results.get("train_samples"), self.results.get("completed_epochs")
        if seen and epochs:
            return round(seen / epochs)
        return self.cfg.get("max_train_samples")


@dataclass(frozen=True)
class GroupKey:
    model: str
    max_train_samples: int | None
    task: str
    method: str


@dataclass
class Skipped:
    label: str
    reason: str


def method_name(cfg: dict) -> str:
    """``bitfit``, ``bitfit (query, intermediate)``, ``full_ft (layers 9 10 11)``, ``rand_uniform (budget 1,000)``."""
    from .policies import BIAS_ROLES

    kind = cfg["fine_tune_type"]
    extras = []
    terms = cfg.get("bias_terms")
    if kind == "bitfit" and terms and "all" not in terms:
        extras.append(", ".join(sorted(set(terms), key=BIAS_ROLES.index)))
    if kind == "rand_uniform" and cfg.get("rand_budget") is not None:
        extras.append(f"budget {cfg['rand_budget']:,}")
    if kind == "sparse_mask":
        extras.append(f"sparsity {cfg['mask_sparsity']:g}")
    if cfg.get("layers"):
        extras.append("layers " + " ".join(map(str, cfg["layers"])))
    return kind + (f" ({'; '.join(extras)})" if extras else "")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        return e


def _is_run_folder(path: Path) -> bool:
    if (path / "results.json").is_file() or (path / "metrics.jsonl").is_file():
        return True
    cfg = _read_json(path / "config.json")
    return isinstance(cfg, dict) and "config" in cfg  # a Hugging Face model folder has a config.json too


def find_run_folders(roots: list[Path], exclude: Path | None = None) -> list[tuple[Path, str]]:
    """(folder, label) of every run folder under ``roots``; nothing inside a run folder is searched."""
    found = []
    for root in roots:
        if not root.is_dir():
            raise UserError(f"runs folder {str(root)!r} does not exist; accepted: folders holding run folders")
        stack = [root]
        while stack:
            folder = stack.pop()
            if exclude is not None and folder.resolve() == exclude:
                continue
            if _is_run_folder(folder):
                found.append((folder, folder.as_posix()))  # as the user named it: runs/rte/bitfit/...
                continue
            stack += sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), reverse=True)
    return found


def _unfinished(folder: Path, epochs: int | None) -> str:
    state = _read_json(folder / "checkpoint" / "state.json")
    of = f" of {epochs}" if epochs else ""
    if isinstance(state, dict) and state.get("epoch"):
        return f"incomplete: no results.json; checkpoint after epoch {state['epoch']}{of} (still running, or stopped: resume with --resume)"
    try:
        lines = (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        done = max((json.loads(line).get("epoch", 0) for line in lines if line.strip()), default=0)
    except (OSError, ValueError):
        done = 0
    return f"incomplete: no results.json; {done}{of} epochs in metrics.jsonl (still running, or stopped without a checkpoint)"


def read_run(folder: Path, label: str) -> Run | Skipped:
    """A complete run, or why it cannot be used."""
    saved = _read_json(folder / "config.json")
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        why = "missing" if saved is None else f"unreadable ({saved})" if isinstance(saved, Exception) else "not a run's"
        return Skipped(label, f"no usable config.json ({why})")
    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    cfg = defaults | saved["config"]
    results = _read_json(folder / "results.json")
    if results is None:
        return Skipped(label, _unfinished(folder, cfg.get("epochs")))
    if not isinstance(results, dict):
        return Skipped(label, f"failed: unreadable results.json ({results})")
    status = results.get("status", "complete" if results.get("best_epoch") is not None else None)
    if status == "interrupted":
        return Skipped(label, f"incomplete: interrupted after epoch {results.get('completed_epochs')} of "
                              f"{results.get('epochs')} (continue it with --resume)")
    if status == "diverged":
        return Skipped(label, f"failed: diverged ({results.get('message', 'non-finite loss')})")
    if status != "complete":
        return Skipped(label, f"incomplete: results.json has status {status!r} and no best epoch")
    try:
        get_task(cfg["task_name"])
    except UserError as e:
        return Skipped(label, f"unknown task: {e}")
    history = []
    try:
        history = [json.loads(line) for line in (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError):
        pass  # the tables need results.json only; the learning curve says it has no points
    run = Run(folder, label, cfg, results, history, int(saved.get("num_processes") or 1))
    try:
        main = run.main
    except (KeyError, TypeError, ValueError):
        main = None
    if main is None or not math.isfinite(main):
        return Skipped(label, "failed: results.json has no finite dev main metric")
    return run


def collect(roots: list[str | Path], exclude: str | Path | None = None) -> tuple[list[Run], list[Skipped]]:
    """Read every run folder under ``roots``: (complete runs, skipped folders with reasons)."""
    ex = Path(exclude).resolve() if exclude is not None else None
    folders = find_run_folders([Path(r) for r in roots], ex)
    if not folders:
        raise UserError(f"no run folder under {', '.join(map(str, roots))}; accepted: folders holding run folders "
                        "(each with config.json, metrics.jsonl, results.json)")
    runs, skipped = [], []
    for folder, label in folders:
        got = read_run(folder, label)
        (skipped if isinstance(got, Skipped) else runs).append(got)
    return runs, skipped


# ---------------------------------------------------------------------------------------------
# Choosing: settings that agree, then the best learning rate on dev


@dataclass
class Stat:
    mean: float
    std: float | None  # sample std over seeds; None for one seed
    n: int


def stat(values: list[float]) -> Stat:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return Stat(mean, std, n)


@dataclass
class Cell:
    """One group: its runs by learning rate, and the rate chosen on dev."""

    key: GroupKey
    by_lr: dict[float, list[Run]]
    lr: float = field(init=False)

    def __post_init__(self):
        means = {lr: stat([r.main for r in runs]).mean for lr, runs in self.by_lr.items()}
        self.lr = min(means, key=lambda lr: (-means[lr], lr))

    @property
    def runs(self) -> list[Run]:
        return self.by_lr[self.lr]

    @property
    def task(self) -> GlueTask:
        return get_task(self.key.task)

    def stat(self, split: str, metric: str, lr: float | None = None) -> Stat | None:
        values = [v for r in self.by_lr[self.lr if lr is None else lr] if (v := r.metric(split, metric)) is not None]
        return stat(values) if values else None

    def main(self, lr: float | None = None) -> Stat:
        return stat([r.main for r in self.by_lr[self.lr if lr is None else lr]])

    def percent(self, in_layers: bool = False) -> list[float]:
        out = []
        for r in self.runs:
            res = r.results
            if in_layers and res.get("trainable_params_in_layers") is not None and res.get("total_params"):
                out.append(100 * res["trainable_params_in_layers"] / res["total_params"])
            elif not in_layers and res.get("trainable_percent") is not None:
                out.append(float(res["trainable_percent"]))
        return out


def _describe(settings: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items())


def select(runs: list[Run]) -> tuple[list[Cell], list[Skipped]]:
    """Group runs; keep the settings most of a group share; drop duplicates; choose each group's rate."""
    groups: dict[GroupKey, list[Run]] = {}
    sigs = {r.label: json.dumps(r.settings, sort_keys=True, default=str) for r in runs}
    everywhere: dict[str, int] = {}  # how many runs of the whole tree have each settings signature
    for r in sorted(runs, key=lambda r: r.label):
        groups.setdefault(r.key, []).append(r)
        everywhere[sigs[r.label]] = everywhere.get(sigs[r.label], 0) + 1
    cells, skipped = [], []
    for key, members in groups.items():
        variants: dict[str, list[Run]] = {}
        for r in members:
            variants.setdefault(sigs[r.label], []).append(r)
        # most runs of the group; on a tie, the settings most runs of the tree share (e.g. the default
        # beside a one-off option run), so a comparison run never stands in for the main one
        kept_sig = min(variants, key=lambda s: (-len(variants[s]), -everywhere[s], s))
        kept = variants[kept_sig]
        for sig, others in variants.items():
            if sig == kept_sig:
                continue
            mine, theirs = others[0].settings, kept[0].settings
            diff = {k: mine.get(k) for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)}
            for r in others:
                skipped.append(Skipped(r.label, f"different settings: {_describe(diff)}, where the other "
                                                f"{len(kept)} run(s) of {_group_name(key)} have "
                                                f"{_describe({k: theirs.get(k) for k in diff})}; not mixed"))
        by_lr: dict[float, list[Run]] = {}
        seen: dict[tuple[float, int], Run] = {}
        for r in kept:
            first = seen.setdefault((r.lr, r.seed), r)
            if first is not r:
                skipped.append(Skipped(r.label, f"duplicate: same method, task, model, training size, learning rate "
                                                f"and seed as {first.label}"))
                continue
            by_lr.setdefault(r.lr, []).append(r)
        cells.append(Cell(key, dict(sorted(by_lr.items()))))
    return cells, skipped


def _group_name(key: GroupKey) -> str:
    return f"{key.method} on {get_task(key.task).glue_name} ({key.model}, {_size_name(key.max_train_samples)})"


def _size_name(n: int | None) -> str:
    return "full training set" if n is None else f"first {n:,} training examples"


def _method_order(cells: list[Cell]) -> Callable[[str], tuple]:
    """Sort key for method names: the paper's order of kinds; within a kind (e.g. BitFit's bias subsets)
    the most trained parameters first, as the paper's Table 3 (all biases, query+intermediate, ...)."""
    percents: dict[str, list[float]] = {}
    for c in cells:
        percents.setdefault(c.key.method, []).extend(c.percent())

    def key(method: str) -> tuple:
        kind, mine = method.split(" ")[0], percents.get(method) or [0.0]
        return (METHOD_ORDER.index(kind) if kind in METHOD_ORDER else len(METHOD_ORDER), -sum(mine) / len(mine), method)
    return key


# ---------------------------------------------------------------------------------------------
# Tables


def _seeds(n: int) -> str:
    return f"{n} seed{'s' * (n != 1)}"


def _num(x: float) -> str:
    return f"{100 * x:.1f}"


def _fmt(s: Stat | None) -> str:
    if s is None:
        return "–"
    return _num(s.mean) + ("" if s.std is None else f" ± {_num(s.std)}")


def _pct(values: list[float]) -> str:
    if not values:
        return "–"
    lo, hi = f"{min(values):.3g}", f"{max(values):.3g}"
    return lo if lo == hi else f"{lo}–{hi}"


def _columns(cells: list[Cell]) -> list[tuple[GlueTask, str]]:
    present = {c.key.task for c in cells}
    return [(t, s.name) for t in TASKS.values() if t.name in present for s in t.dev_splits]


def _column_title(task: GlueTask, split: str) -> str:
    name = task.glue_name if len(task.dev_splits) == 1 else f"{task.glue_name}-{split.removeprefix('dev_')}"
    return f"{name} ({' / '.join(SHORT_METRIC.get(m, m) for m in task.metrics)})"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [_row(header), "| " + " | ".join("---" for _ in header) + " |"] + [_row(r) for r in rows]


def results_table(cells: list[Cell]) -> list[str]:
    """Rows: methods; columns: % trained, every task's dev split (all its metrics), the average."""
    columns = _columns(cells)
    by_method: dict[str, dict[str, Cell]] = {}
    for c in cells:
        by_method.setdefault(c.key.method, {})[c.key.task] = c
    header = ["method", "% params", "% in layers"] + [_column_title(t, s) for t, s in columns] + ["Avg"]
    most = max(len(c.runs) for c in cells)  # cells with fewer seeds than this say how many they have
    rows, partial, fewer = [], False, False
    for method in sorted(by_method, key=_method_order(cells)):
        mine = by_method[method]
        row = [method, _pct([p for c in mine.values() for p in c.percent()]),
               _pct([p for c in mine.values() for p in c.percent(in_layers=True)])]
        firsts = []
        for task, split in columns:
            cell = mine.get(task.name)
            if cell is None:
                row.append("–")
                continue
            stats = [cell.stat(split, m) for m in task.metrics]
            text = " / ".join(_fmt(s) for s in stats)
            if len(cell.runs) < most:
                text, fewer = text + f" ({_seeds(len(cell.runs))})", True
            row.append(text)
            if stats[0] is not None:
                firsts.append(stats[0].mean)
        avg = _num(sum(firsts) / len(firsts)) if firsts else "–"
        if firsts and len(firsts) < len(columns):
            avg, partial = avg + "*", True
        rows.append(row + [avg])
    lines = _table(header, rows) + ["", f"Seeds per cell: {most}" + (", or as many as the cell says." if fewer else ".")]
    if partial:
        lines += ["", "\\* averaged over the columns this method has runs for only."]
    return lines


def lr_table(cells: list[Cell]) -> list[str]:
    tasks = [t for t in TASKS.values() if t.name in {c.key.task for c in cells}]
    by_method: dict[str, dict[str, Cell]] = {}
    for c in cells:
        by_method.setdefault(c.key.method, {})[c.key.task] = c
    rows = []
    for method in sorted(by_method, key=_method_order(cells)):
        row = [method]
        for t in tasks:
            c = by_method[method].get(t.name)
            row.append("–" if c is None else f"{c.lr:g} ({_seeds(len(c.runs))} of "
                                             f"{len(c.by_lr)} rate{'s' * (len(c.by_lr) != 1)})")
        rows.append(row)
    return _table(["method"] + [t.glue_name for t in tasks], rows)


def grid_lines(cells: list[Cell]) -> list[str]:
    """Every learning rate of every group: the evidence behind each choice."""
    lines = ["# Every learning rate tried", "",
             "Dev main metric at the best epoch (×100), mean ± sample std over seeds; **bold**: the rate the "
             "tables use (best mean; ties go to the smaller rate).", ""]
    order = _method_order(cells)
    for c in sorted(cells, key=lambda c: (c.key.model, c.key.max_train_samples or 0, list(TASKS).index(c.key.task),
                                          order(c.key.method))):
        task = c.task
        lines += [f"## {_group_name(c.key)}", ""]
        rows = []
        for lr, runs in c.by_lr.items():
            mark = "**" if lr == c.lr else ""
            rows.append([f"{mark}{lr:g}{mark}", f"{mark}{_fmt(c.main(lr))}{mark}", ", ".join(str(r.seed) for r in runs),
                         "<br>".join(r.label for r in runs)])
        lines += _table(["learning rate", f"{task.main_dev_split} {task.main_metric}", "seeds", "run folders"], rows)
        lines.append("")
    return lines


# ---------------------------------------------------------------------------------------------
# Figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    plt = _plt()
    fig.tight_layout()
    io.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def slug(*parts) -> str:
    text = "_".join(str(p) for p in parts if p not in (None, ""))
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")


def _model_slug(model: str) -> str:
    return Path(model).name if "/" in model and Path(model).expanduser().exists() else model


def _cell_slug(c: Cell) -> str:
    n = "full" if c.key.max_train_samples is None else f"n{c.key.max_train_samples}"
    return slug(_model_slug(c.key.model), n, c.key.task, c.key.method)


def plot_learning_curves(c: Cell, path: Path) -> None:
    """Dev main metric per epoch: one line per learning rate (mean over its seeds), the chosen one bold."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    task = c.task
    fig, ax = plt.subplots(figsize=(6, 4))
    for lr, runs in c.by_lr.items():
        per_epoch: dict[int, list[float]] = {}
        for r in runs:
            for row in r.history:
                if row.get("split") == task.main_dev_split and row.get(task.main_metric) is not None:
                    per_epoch.setdefault(int(row["epoch"]), []).append(float(row[task.main_metric]))
        epochs = sorted(per_epoch)
        chosen = lr == c.lr
        ax.plot(epochs, [100 * sum(per_epoch[e]) / len(per_epoch[e]) for e in epochs], marker="o",
                lw=2.5 if chosen else 1, alpha=1 if chosen else 0.6,
                label=f"lr {lr:g} ({_seeds(len(runs))})" + (" chosen" if chosen else ""))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel=f"{task.main_dev_split} {task.main_metric} (×100)", title=_group_name(c.key))
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


class Bases:
    """Base models' encoder weights, loaded once each (as training loaded them) and checked by fingerprint."""

    def __init__(self):
        self._cache: dict[str, tuple[dict, set[str], str] | str] = {}

    def get(self, d) -> tuple[dict, set[str]]:
        """(parameter name -> pretrained tensor, names the base lacked) for the delta ``d``; UserError if unusable."""
        name = d.base_model
        if name not in self._cache:
            self._cache[name] = self._load(name, d.task)
        got = self._cache[name]
        if isinstance(got, str):
            raise UserError(got)
        params, fresh, fp = got
        if d.fingerprint is not None and d.fingerprint != fp:
            raise UserError(f"base model {name!r} here has other weights than the run was trained on (fingerprint "
                            f"{fp[:19]}..., delta {d.fingerprint[:19]}...)")
        return params, fresh

    @staticmethod
    def _load(name: str, task: GlueTask):
        from .delta import fingerprint, quiet_base_loading
        from .models import load_model
        from .policies import head_names

        import transformers

        transformers.logging.set_verbosity_error()  # as a run does: no notes on the fresh task head
        transformers.logging.disable_progress_bar()
        try:
            with quiet_base_loading():
                model, fresh = load_model(name, task)
        except (UserError, OSError) as e:
            return f"base model {name!r} cannot be loaded here: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        head = set(head_names(model))
        params = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if n not in head}
        return params, set(fresh) | head, fingerprint(model, fresh)


def _layer_of(name: str) -> int | None:
    m = _LAYER.search(name)
    return int(m[1]) if m else None


def _relative(name: str) -> str:
    """The name relative to the encoder (``encoder.layer.0...``), as ``ARCH_ROLES`` patterns expect."""
    first, _, rest = name.partition(".")
    return rest if rest and first not in ("embeddings", "encoder", "transformer", "pooler") else name


def bias_change(d, bases: Bases) -> dict[tuple[str, int], float]:
    """(role, layer) -> mean |b_final - b_initial| over the bias's entries, for every whole bias in the delta."""
    from .policies import ARCH_ROLES

    roles = ARCH_ROLES.get(d.meta["model_type"])
    if roles is None:
        raise UserError(f"no bias-role mapping for model type {d.meta['model_type']!r}; known: {', '.join(ARCH_ROLES)}")
    params, fresh = bases.get(d)
    out = {}
    for key, t in d.tensors.items():
        if "::" in key or not key.endswith(".bias") or key not in params or key in fresh:
            continue
        rel = _relative(key)
        role = next((r for r, pat in roles.items() if re.fullmatch(pat, rel)), None)
        layer = _layer_of(rel)
        if role in ROLE_LABEL and layer is not None:
            out[(role, layer)] = float((t.double() - params[key].double()).abs().mean())
    if not out:
        raise UserError("the delta holds no encoder bias of a known role")
    return out


def layer_distance(d, bases: Bases) -> dict[str, tuple[float, float]]:
    """Encoder part ("embeddings", "0", "1", ..., "pooler") -> (||W - W0|| / ||W0||, ||W - W0||), L2 over its tensors."""
    params, fresh = bases.get(d)
    diff2: dict[str, float] = {}
    norm2: dict[str, float] = {}
    for key, t in d.tensors.items():
        if "::" in key or key not in params or key in fresh:
            continue
        rel = _relative(key)
        layer = _layer_of(rel)
        part = str(layer) if layer is not None else "embeddings" if rel.startswith("embeddings.") else rel.split(".")[0]
        w0 = params[key].double()
        diff2[part] = diff2.get(part, 0.0) + float(((t.double() - w0) ** 2).sum())
        norm2[part] = norm2.get(part, 0.0) + float((w0 ** 2).sum())
    if not diff2:
        raise UserError("the delta holds no whole encoder tensor")
    order = sorted(diff2, key=lambda p: (0, -1) if p == "embeddings" else (1, int(p)) if p.isdigit() else (2, p))
    return {p: (math.sqrt(diff2[p] / norm2[p]) if norm2[p] else float("nan"), math.sqrt(diff2[p])) for p in order}


def _mean_maps(maps: list[dict]) -> dict:
    keys = [k for k in maps[0] if all(k in m for m in maps)]
    if isinstance(next(iter(maps[0].values())), tuple):
        return {k: tuple(sum(m[k][i] for m in maps) / len(maps) for i in range(len(maps[0][k]))) for k in keys}
    return {k: sum(m[k] for m in maps) / len(maps) for k in keys}


def plot_bias_change(change: dict[tuple[str, int], float], path: Path, title: str) -> None:
    plt = _plt()
    import numpy as np

    roles = [r for r in ROLE_LABEL if any(k[0] == r for k in change)]
    layers = sorted({k[1] for k in change})
    grid = np.full((len(roles), len(layers)), np.nan)
    for (role, layer), v in change.items():
        grid[roles.index(role), layers.index(layer)] = v
    fig, ax = plt.subplots(figsize=(4.0 + 0.5 * len(layers), 1.6 + 0.4 * len(roles)))
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(layers)), [str(i + 1) for i in layers])
    ax.set_yticks(range(len(roles)), [ROLE_LABEL[r] for r in roles])
    ax.set_xlabel("layer")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="mean |b_final - b_initial|")
    _save(fig, path)


def plot_layer_distance(dist: dict[str, tuple[float, float]], path: Path, title: str) -> None:
    plt = _plt()
    parts = list(dist)
    fig, ax = plt.subplots(figsize=(3.5 + 0.4 * len(parts), 3.5))
    ax.bar(range(len(parts)), [dist[p][0] for p in parts], color="tab:blue")
    ax.set_xticks(range(len(parts)), [_part_label(p) for p in parts], rotation=45 if len(parts) > 14 else 0)
    ax.set(xlabel="encoder part", ylabel="||W_ft - W_0|| / ||W_0||")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def _part_label(part: str) -> str:
    return str(int(part) + 1) if part.isdigit() else {"embeddings": "emb"}.get(part, part)


def plot_data_size(lines: dict[str, list[tuple[int, Stat]]], path: Path, title: str, ylabel: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, points in lines.items():
        xs = [x for x, _ in points]
        ax.errorbar(xs, [100 * s.mean for _, s in points], yerr=[100 * (s.std or 0.0) for _, s in points],
                    marker="o", capsize=3, label=method)
    ax.set_xscale("log")
    sizes = sorted({x for points in lines.values() for x, _ in points})
    ax.set_xticks(sizes, [f"{x:,}" for x in sizes])
    ax.minorticks_off()
    ax.set(xlabel="training examples", ylabel=ylabel, title=title)
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


# ---------------------------------------------------------------------------------------------
# The report


def _read_deltas(c: Cell) -> tuple[list, list[str]]:
    from .delta import read

    got, missing = [], []
    for r in c.runs:
        try:
            got.append(read(r.path))
        except UserError as e:
            missing.append(f"{r.label}: {e}")
    return got, missing


def delta_sections(cells: list[Cell], figures: Path, out: Path) -> tuple[list[str], list[str]]:
    """Markdown for the bias-change heatmaps (BitFit) and the per-layer distances (full fine-tuning)."""
    bases = Bases()
    bias, dist, notes = [], {}, []
    order = _method_order(cells)
    for c in sorted(cells, key=lambda c: (c.key.model, c.key.max_train_samples or 0, order(c.key.method),
                                          list(TASKS).index(c.key.task))):
        kind = c.runs[0].cfg["fine_tune_type"]
        if kind not in ("bitfit", "full_ft", "layers"):
            continue
        deltas, missing = _read_deltas(c)
        notes += [f"{_group_name(c.key)}: not drawn from {m}" for m in missing]
        if not deltas:
            continue
        compute = bias_change if kind == "bitfit" else layer_distance
        try:
            maps = [compute(d, bases) for d in deltas]
        except UserError as e:
            notes.append(f"{_group_name(c.key)}: not drawn: {e}")
            continue
        seeds = f"lr {c.lr:g}, mean over {_seeds(len(maps))}"
        if kind == "bitfit":
            change = _mean_maps(maps)
            path = figures / f"bias_change_{_cell_slug(c)}.png"
            plot_bias_change(change, path, f"{_group_name(c.key)}\n{seeds}")
            bias += [f"### {_group_name(c.key)}", "", f"{seeds}.", "", f"![bias change]({path.relative_to(out).as_posix()})", ""]
            bias += _bias_table(change) + [""]
        else:
            d = _mean_maps(maps)
            path = figures / f"distance_{_cell_slug(c)}.png"
            plot_layer_distance(d, path, f"{_group_name(c.key)}\n{seeds}")
            dist.setdefault((c.key.model, c.key.max_train_samples, c.key.method), []).append((c, d, path, seeds))
    lines = []
    if bias:
        lines += ["## Bias change (BitFit; the paper's Figure 1)", "",
                  "Mean |b_final - b_initial| over each bias vector's entries, per bias role and layer (layers "
                  "counted from 1), between the best epoch's delta and the pretrained base; blank: a bias that did "
                  "not train. The embeddings LayerNorm and pooler biases, outside the layers, are left out.", ""] + bias
    if dist:
        lines += ["## Distance from the pretrained weights (full fine-tuning)", "",
                  "Per encoder part, ||W_ft - W_0|| / ||W_0|| over all its tensors together (L2; the absolute "
                  "||W_ft - W_0|| in the figures' tables below), best epoch's delta against the pretrained base.", ""]
        for (model, n, method), rows in dist.items():
            parts = list(rows[0][1])
            lines += [f"### {method}, {model}, {_size_name(n)}", ""]
            table = [[f"{r[0].task.glue_name} ([png]({r[2].relative_to(out).as_posix()}))", r[3]]
                     + [f"{r[1][p][0]:.4f}" if p in r[1] else "–" for p in parts] for r in rows]
            lines += _table(["task", "runs"] + [_part_label(p) for p in parts], table) + [""]
            absolute = [[r[0].task.glue_name] + [f"{r[1][p][1]:.3g}" if p in r[1] else "–" for p in parts] for r in rows]
            lines += ["Absolute ||W_ft - W_0||:", ""] + _table(["task"] + [_part_label(p) for p in parts], absolute) + [""]
    return lines, notes


def _bias_table(change: dict[tuple[str, int], float]) -> list[str]:
    roles = [r for r in ROLE_LABEL if any(k[0] == r for k in change)]
    layers = sorted({k[1] for k in change})
    rows = [[ROLE_LABEL[r]] + [f"{change[(r, i)]:.2e}" if (r, i) in change else "" for i in layers] for r in roles]
    return ["<details><summary>numbers</summary>", ""] + _table(["bias"] + [str(i + 1) for i in layers], rows) + ["", "</details>"]


def data_size_sections(cells: list[Cell], figures: Path, out: Path) -> list[str]:
    """Per task and model: the main metric against the training-set size, one line per method."""
    by_task: dict[tuple[str, str], dict[str, list[Cell]]] = {}
    for c in cells:
        by_task.setdefault((c.key.model, c.key.task), {}).setdefault(c.key.method, []).append(c)
    lines, order = [], _method_order(cells)
    for (model, task_name), methods in sorted(by_task.items(), key=lambda kv: (kv[0][0], list(TASKS).index(kv[0][1]))):
        methods = {m: cs for m, cs in methods.items() if len({c.key.max_train_samples for c in cs}) > 1}
        if not methods:
            continue
        task = get_task(task_name)
        curves: dict[str, list[tuple[int, Stat]]] = {}
        for method in sorted(methods, key=order):
            points = []
            for c in methods[method]:
                sizes = [s for r in c.runs if (s := r.train_size()) is not None]
                if sizes:
                    points.append((round(sum(sizes) / len(sizes)), c.main()))
            curves[method] = sorted(points, key=lambda p: p[0])
        path = figures / f"data_size_{slug(_model_slug(model), task_name)}.png"
        ylabel = f"{task.main_dev_split} {task.main_metric} (×100)"
        plot_data_size(curves, path, f"{task.glue_name}, {model}: best learning rate per size", ylabel)
        sizes = sorted({x for pts in curves.values() for x, _ in pts})
        rows = [[m] + [next((_fmt(s) for x, s in pts if x == size), "–") for size in sizes] for m, pts in curves.items()]
        lines += [f"### {task.glue_name}, {model}", "", f"![data size]({path.relative_to(out).as_posix()})", "",
                  f"{ylabel}, mean ± std over seeds at each size's best learning rate:", ""]
        lines += _table(["method"] + [f"{s:,}" for s in sizes], rows) + [""]
    if lines:
        lines = ["## Training-set size", "",
                 "Runs that differ only in --max-train-samples; x: training examples per epoch (log scale).", ""] + lines
    return lines


def _roots_text(roots: list) -> str:
    shown = ", ".join(f"`{r}`" for r in roots[:3])
    return shown if len(roots) <= 3 else f"{shown} and {len(roots) - 3} more"


def write_report(roots: list[str | Path], out: str | Path, overwrite: bool = False, deltas: bool = True) -> Path:
    """Read the runs under ``roots``, write ``out/README.md``, ``out/grid.md`` and ``out/figures/``."""
    out = Path(out)
    io.check_output_folder(str(out), overwrite)
    runs, skipped = collect(roots, exclude=out)
    found = len(runs) + len(skipped)
    cells, more = select(runs)
    skipped += more
    figures = out / "figures"
    if figures.is_dir():
        shutil.rmtree(figures)  # a previous report's figures (only with --overwrite: checked above)
    figures.mkdir(parents=True)

    used = sum(len(c.runs) for c in cells)
    tried = sum(len(rs) for c in cells for rs in c.by_lr.values())
    lines = ["# Results", "",
             f"Made by `python -m bitfit report` from {found} run "
             f"folder(s) under {_roots_text(roots)}; nothing was trained. {tried} run(s) are compared, "
             f"{used} of them at the chosen learning rates; {len(skipped)} skipped (listed at the end).", "",
             "Each cell: dev metrics at the best epoch (×100), mean ± sample std over seeds, at the learning rate whose "
             "mean dev main metric (the task's first metric) is best for that method and task; every rate tried is in "
             "[grid.md](grid.md). % params: trained parameters (head included) over all parameters; % in layers: "
             "those inside the encoder layers (the paper's count). Avg: mean of each column's first metric.", ""]
    tables: dict[tuple[str, int | None], list[Cell]] = {}
    for c in cells:
        tables.setdefault((c.key.model, c.key.max_train_samples), []).append(c)
    for (model, n), group in sorted(tables.items(), key=lambda kv: (kv[0][0], kv[0][1] is not None, kv[0][1] or 0)):
        lines += [f"## {model}, {_size_name(n).replace('set', 'sets')}", ""] + results_table(group) + [""]
        lines += ["Learning rate chosen on dev (seeds at that rate, rates tried):", ""] + lr_table(group) + [""]
        curve_rows: dict[str, dict[str, str]] = {}
        for c in group:
            path = figures / f"curves_{_cell_slug(c)}.png"
            plot_learning_curves(c, path)
            curve_rows.setdefault(c.key.method, {})[c.key.task] = f"[png]({path.relative_to(out).as_posix()})"
        tasks = [t for t in TASKS.values() if t.name in {c.key.task for c in group}]
        lines += ["Learning curves (dev main metric per epoch, every learning rate):", ""]
        lines += _table(["method"] + [t.glue_name for t in tasks],
                        [[m] + [curve_rows[m].get(t.name, "–") for t in tasks] for m in sorted(curve_rows, key=_method_order(group))])
        lines.append("")
    notes = []
    if deltas:
        section, notes = delta_sections(cells, figures, out)
        lines += section
    lines += data_size_sections(cells, figures, out)
    if notes:
        lines += ["## Figures not drawn", ""] + [f"- {n}" for n in notes] + [""]
    lines += ["## Skipped runs", ""]
    if skipped:
        lines += _table(["run folder", "reason"], [[s.label, s.reason] for s in sorted(skipped, key=lambda s: s.label)])
    else:
        lines.append("None: every run folder found was used.")
    io.write_text(out / "README.md", "\n".join(lines) + "\n")
    io.write_text(out / "grid.md", "\n".join(grid_lines(cells)) + "\n")
    for s in skipped:
        log.info("skipped %s: %s", s.label, s.reason)
    log.info("report: %d group(s), %d run(s) skipped -> %s", len(cells), len(skipped), out / "README.md")
    return out / "README.md"


# ---------------------------------------------------------------------------------------------
# python -m bitfit report / python -m bitfit.report


def build_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("runs", nargs="+", help="folders holding run folders (searched recursively)")
    p.add_argument("--output", "-o", required=True, help="report folder to write (refused if not empty, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty folder (replaces its figures/)")
    p.add_argument("--deltas", action=argparse.BooleanOptionalAction, default=True,
                   help="draw the figures that read each run's delta and its base model (bias change, per-layer "
                        "distance); --no-deltas: tables and curves only")
    p.add_argument("--verbose", action=argparse.BooleanOptionalAction, default=True, help="log skipped runs and progress")
    return p


def cli(args) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO if args.verbose else logging.WARNING, force=True)
    print(write_report(args.runs, args.output, overwrite=args.overwrite, deltas=args.deltas))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m bitfit.report ...``: the same as ``python -m bitfit report ...``."""
    from .__main__ import main as bitfit_main

    return bitfit_main(["report", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
