"""Reading run folders: which folders under the roots hold runs, and which runs the report can use.

    from bitfit.report.runs import collect
    runs, skipped = collect(["runs/"])          # complete runs; every other run folder with the reason
    runs[0].label, runs[0].method, runs[0].main  # ("runs/rte/bitfit/lr1e-3_seed0", "bitfit", 0.71)

A folder is a run folder when it holds ``results.json``, ``metrics.jsonl`` or a run's ``config.json``;
nothing inside a run folder is searched. Whether a run is complete is ``bitfit.runstate.read_state``'s
call; this module only words the reason a run is left out: ``incomplete: ...`` (it may still finish,
or be resumed) or ``failed: ...``. Folders are named relative to the current working directory
(``../...`` for a root outside it), never by an absolute path.

A task given as files (``run_glue.py -t NAME --train-file ...``) is the one its run's config.json
defines (``task_definition``: classes, text columns, metrics); runs of one name that define it
differently are never mixed: the definition most of them share is the task's (a tie: the first
run's, by folder), and the others are skipped with both definitions.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..config import RunConfig
from ..errors import UnreadableFile, UserError
from ..io import read_jsonl_file
from ..methods import method_label
from ..runstate import BROKEN, COMPLETE, INTERRUPTED, STOPPED, RunState, read_state
from ..tasks import GlueTask, define, get_task, task_definition

# Settings that do not change what a run measures, or that the group key already holds.
NOT_COMPARED = {"output_path", "seed", "learning_rate", "gpu_device", "cpu", "overwrite", "resume", "verbose",
                "data_dir", "eval_batch_size", "keep_checkpoint", "save_evaluator", "predict_test",
                "max_predict_samples", "trust_remote_code", "eval_train",
                "task_name", "model_name", "fine_tune_type", "bias_terms", "layers", "rand_budget", "mask_sparsity",
                "max_train_samples", "fast_cpu_ops", "compile", "gradient_checkpointing", "num_workers", "report_to",
                "deterministic",
                # a task given as files: where its files are (as data_dir above), and the options its definition
                # (config.json's task_definition, which runs of one name must share) already holds
                "train_file", "validation_file", "test_file", "id_column", "text_columns", "task_type", "main_metric"}
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RunConfig)}  # for the fields an older run lacks


def shown_path(path: str | os.PathLike) -> str:
    """``path`` as the report names it: relative to the current working directory (never absolute)."""
    return Path(os.path.relpath(path)).as_posix()


@dataclass(frozen=True)
class GroupKey:
    """What runs must share to be averaged over seeds and compared over learning rates."""

    model: str
    max_train_samples: int | None
    task: str
    method: str


@dataclass
class Run:
    """One complete run folder, read."""

    path: Path  # relative to the current working directory
    label: str  # the folder as the report names it (``shown_path``)
    cfg: dict  # RunConfig fields; fields an older run lacks get today's defaults
    results: dict
    history: list[dict]  # metrics.jsonl's rows
    num_processes: int = 1
    own_task: GlueTask | None = None  # a task given as files: the one config.json's task_definition describes

    @property
    def task(self) -> GlueTask:
        return self.own_task if self.own_task is not None else get_task(self.cfg["task_name"])

    @property
    def lr(self) -> float:
        return float(self.cfg["learning_rate"])

    @property
    def seed(self) -> int:
        return int(self.cfg["seed"])

    @property
    def method(self) -> str:
        return method_label(self.cfg)

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
        """The dev main metric at the best epoch."""
        value = self.metric(self.task.main_dev_split, self.task.main_metric)
        return float(self.results["best_main_metric"]) if value is None else value

    def train_size(self) -> int | None:
        """Training examples per epoch (what ``--max-train-samples`` left, or the whole set)."""
        seen, epochs = self.results.get("train_samples"), self.results.get("completed_epochs")
        if seen and epochs:
            return round(seen / epochs)
        return self.cfg.get("max_train_samples")


@dataclass
class Skipped:
    """A run folder the report leaves out, and why."""

    label: str
    reason: str


def _is_run_folder(path: Path) -> bool:
    if (path / "results.json").is_file() or (path / "metrics.jsonl").is_file():
        return True
    return read_state(path).config is not None  # a Hugging Face model folder has a config.json too


def find_run_folders(roots: list[Path], exclude: Path | None = None) -> list[Path]:
    """Every run folder under ``roots``, relative to the current working directory; run folders are not searched."""
    found = []
    for root in roots:
        if not root.is_dir():
            raise UserError(f"runs folder {str(root)!r} does not exist; accepted: folders holding run folders")
        stack = [Path(shown_path(root))]
        while stack:
            folder = stack.pop()
            if exclude is not None and folder.resolve() == exclude:
                continue
            if _is_run_folder(folder):
                found.append(folder)
                continue
            stack += sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), reverse=True)
    return found


def _read_history(folder: Path) -> list[dict] | str:
    """metrics.jsonl's rows (none if it is absent), or why it cannot be used: read bounded, never through a
    symlink or a FIFO (``io.read_jsonl_file``)."""
    try:
        rows = read_jsonl_file(folder / "metrics.jsonl")
    except FileNotFoundError:
        return []  # the tables need results.json only; the learning curve says it has no points
    except UnreadableFile as e:
        return f"metrics.jsonl is unreadable ({e.why})"
    return rows if all(isinstance(r, dict) for r in rows) else "metrics.jsonl is unreadable (a row is not a JSON object)"


def skip_reason(state: RunState) -> str:
    """The report's words for a run it cannot use, from ``read_state``'s verdict."""
    if state.status == INTERRUPTED:
        return f"incomplete: {state.reason}"
    if state.status == STOPPED:
        return state.reason  # "stopped early after epoch N of M: ... (not complete: ...)"
    if state.status == BROKEN and state.config is not None and not (state.path / "results.json").exists():
        history = _read_history(state.path)
        if isinstance(history, str):
            return f"failed: no results.json, {history}; {state.reason}"
        done = max((row.get("epoch", 0) for row in history), default=0)
        of = f" of {state.config['epochs']}" if state.config.get("epochs") else ""
        return f"incomplete: no results.json, {done}{of} epochs in metrics.jsonl; {state.reason}"
    return f"failed: {state.reason}"


def _own_task(name: object, definition: object) -> GlueTask | None:
    """The task of a run given as files, from config.json's ``task_definition`` (made known to ``get_task``, replacing
    what this process knew by that name); None for a GLUE task; UserError, one line, for anything else."""
    if definition is None:
        task = get_task(name) if isinstance(name, str) else None
        if task is None or task.custom:  # a name only an earlier run of this process defined is no GLUE task
            raise UserError(f"{name!r} is not a GLUE task and config.json records no task_definition "
                            "(a run of a task given as files records one); accepted: a run of run_glue.py")
        return None
    try:
        task = define(definition, replace=True)
    except UserError as e:
        raise UserError(f"config.json's task_definition is unusable: {e}") from None
    if task.name != name:
        raise UserError(f"config.json's task_definition names {task.name!r} but its task_name is "
                        f"{name!r}; accepted: the config.json run_glue.py wrote")
    return task


def read_run(folder: Path, label: str) -> Run | Skipped:
    """A complete run, or why the report cannot use it."""
    state = read_state(folder)
    if state.status != COMPLETE:
        return Skipped(label, skip_reason(state))
    cfg = _DEFAULTS | state.config
    try:
        own = _own_task(cfg["task_name"], state.saved.get("task_definition"))
    except UserError as e:
        return Skipped(label, f"unknown task: {e}")
    history = _read_history(folder)
    if isinstance(history, str):
        return Skipped(label, f"failed: {history}")
    run = Run(folder, label, cfg, state.results, history, int(state.saved.get("num_processes") or 1), own)
    try:
        main = run.main
    except (KeyError, TypeError, ValueError):
        main = None
    if main is None or not math.isfinite(main):
        return Skipped(label, "failed: results.json has no finite dev main metric")
    return run


def _definition_text(definition: dict, keys: list[str]) -> str:
    return ", ".join(f"{k} {definition[k]}" for k in keys)


def agree_on_tasks(runs: list[Run]) -> tuple[list[Run], list[Skipped]]:
    """Runs of one task given as files must define it alike: the definition most of them share is the task's (a tie:
    the first run's by folder), made the one ``get_task`` knows; the other runs are skipped, with both definitions."""
    by_name: dict[str, dict[str, list[Run]]] = {}
    for r in sorted(runs, key=lambda r: r.label):
        if r.own_task is not None:
            text = repr(task_definition(r.own_task))
            by_name.setdefault(r.own_task.name, {}).setdefault(text, []).append(r)
    skipped: dict[str, Skipped] = {}
    for name, variants in by_name.items():
        order = list(variants)  # first seen first: the runs are in folder order
        kept = min(order, key=lambda v: (-len(variants[v]), order.index(v)))
        theirs = task_definition(variants[kept][0].own_task)
        define(theirs, replace=True)
        for v in order:
            if v == kept:
                continue
            for r in variants[v]:
                mine = task_definition(r.own_task)
                diff = [k for k in mine if mine[k] != theirs.get(k)]
                skipped[r.label] = Skipped(r.label, (
                    f"task {name!r} defined differently: {_definition_text(mine, diff)} here, where the other "
                    f"{len(variants[kept])} run(s) of {name!r} (e.g. {variants[kept][0].label}) have "
                    f"{_definition_text(theirs, diff)}; not mixed (give different tasks different names: -t)"))
    return [r for r in runs if r.label not in skipped], list(skipped.values())


def collect(roots: list[str | os.PathLike], exclude: str | os.PathLike | None = None) -> tuple[list[Run], list[Skipped]]:
    """Read every run folder under ``roots``: (complete runs, skipped folders with reasons)."""
    ex = Path(exclude).resolve() if exclude is not None else None
    folders = find_run_folders([Path(r) for r in roots], ex)
    if not folders:
        raise UserError(f"no run folder under {', '.join(map(str, roots))}; accepted: folders holding "
                        "run folders (each with config.json, metrics.jsonl, results.json)")
    runs, skipped = [], []
    for folder in folders:
        got = read_run(folder, folder.as_posix())
        (skipped if isinstance(got, Skipped) else runs).append(got)
    runs, differing = agree_on_tasks(runs)
    return runs, skipped + differing
