"""Markdown tables and the numbers in them: metrics ×100 with one decimal (MSE as it is, 4 significant digits),
mean ± sample std over seeds.

    from bitfit.report.tables import markdown_table, results_table
    markdown_table(["method", "RTE (acc)"], [["bitfit", "67.0 ± 1.4"]])   # ["| method | RTE (acc) |", ...]
    results_table(groups)     # rows: methods; columns: % trained, every task's dev metrics, the GLUE average

Tasks given as files (``bitfit.userdata``) come after GLUE's, by name, with their own metrics; the
average is over GLUE's columns only (the paper's), and says so when such a task is in the table.

Every function returns a list of lines; nothing here reads files or draws.
"""

from __future__ import annotations

from ..methods import BIAS_ROLES
from ..tasks import GlueTask
from .groups import MeanStd, RunGroup, group_name, method_order, task_order

SHORT_METRIC = {"accuracy": "acc", "mcc": "MCC", "f1": "F1", "pearson": "Pearson", "spearmanr": "Spearman",
                "macro_f1": "macro-F1", "mse": "MSE"}
RAW_METRICS = frozenset({"mse"})  # not in [0, 1] (nor ±1): shown as they are, never ×100
MSE_NOTE = ("MSE (tasks given as files): mean squared error on the labels' own scale, shown as it is (4 significant "
            "digits, not ×100); lower is better, the baseline's is the dev labels' variance. It never chooses an "
            "epoch or a learning rate: the task's first metric does.")


def seeds_text(n: int) -> str:
    """``1 seed``, ``3 seeds``."""
    return f"{n} seed{'s' * (n != 1)}"


def x100(value: float) -> str:
    """A metric in [0, 1] as the tables show it: ×100, one decimal."""
    return f"{100 * value:.1f}"


def metric_text(metric: str | None, value: float) -> str:
    """A metric's value as the tables show it: ``x100``, but MSE as it is, 4 significant digits (``0.2413``)."""
    return f"{value:.4g}" if metric in RAW_METRICS else x100(value)


def mean_std_text(s: MeanStd | None, metric: str | None = None) -> str:
    """``67.0 ± 1.4`` (×100; ``metric`` MSE: as it is); one seed: ``67.0``; nothing: ``–``."""
    if s is None:
        return "–"
    return metric_text(metric, s.mean) + ("" if s.std is None else f" ± {metric_text(metric, s.std)}")


def percent_range(values: list[float]) -> str:
    """``0.09``, or ``0.08–0.09`` where runs differ; ``–`` for none."""
    if not values:
        return "–"
    lo, hi = f"{min(values):.3g}", f"{max(values):.3g}"
    return lo if lo == hi else f"{lo}–{hi}"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def row(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
    return [row(header), "| " + " | ".join("---" for _ in header) + " |"] + [row(r) for r in rows]


def tasks_of(groups: list[RunGroup]) -> list[GlueTask]:
    """The tasks the groups cover, in GLUE's order, then the tasks given as files by name."""
    present = {g.key.task: g.task for g in groups}
    return [present[name] for name in sorted(present, key=task_order)]


def by_method(groups: list[RunGroup]) -> dict[str, dict[str, RunGroup]]:
    """method -> task -> group, methods in the report's row order."""
    out: dict[str, dict[str, RunGroup]] = {}
    for g in groups:
        out.setdefault(g.key.method, {})[g.key.task] = g
    return {m: out[m] for m in sorted(out, key=method_order(groups))}


def _column_title(task: GlueTask, split: str) -> str:
    name = task.glue_name if len(task.dev_splits) == 1 else f"{task.glue_name}-{split.removeprefix('dev_')}"
    return f"{name} ({' / '.join(SHORT_METRIC.get(m, m) for m in task.metrics)})"


def _results_cells(mine: dict[str, RunGroup], columns: list[tuple[GlueTask, str]],
                   most: int) -> tuple[list[str], list[float]]:
    """One method's cells, one per (task, dev split) column, and each GLUE column's first metric where it has one."""
    cells, firsts = [], []
    for task, split in columns:
        group = mine.get(task.name)
        if group is None:
            cells.append("–")
            continue
        values = [group.metric(split, m) for m in task.metrics]
        text = " / ".join(mean_std_text(s, m) for s, m in zip(values, task.metrics))
        cells.append(text + (f" ({seeds_text(len(group.runs))})" if len(group.runs) < most else ""))
        if values[0] is not None and not task.custom:
            firsts.append(values[0].mean)
    return cells, firsts


BASELINE_LABEL = "trivial baseline (majority class; STS-B: a constant)"


def _baseline_label(columns: list[tuple[GlueTask, str]]) -> str:
    own = sorted({t.name for t, _ in columns if t.custom and t.is_regression})
    return BASELINE_LABEL if not own else BASELINE_LABEL.replace("STS-B:", f"STS-B, {', '.join(own)}:")


def baseline_row(groups: list[RunGroup], columns: list[tuple[GlueTask, str]]) -> list[str]:
    """What always giving one answer scores on each column's dev split, as the runs recorded it
    (results.json ``baseline``; runs written before it existed leave the cell empty); then the GLUE
    columns' average, where the table has GLUE columns."""
    cells, firsts = [], []
    for task, split in columns:
        base = next((r.results["baseline"][split] for g in groups if g.task.name == task.name for r in g.runs
                     if split in (r.results.get("baseline") or {})), None)
        cells.append("–" if base is None else " / ".join(
            "–" if not isinstance(base.get(m), (int, float)) else metric_text(m, base[m]) for m in task.metrics))
        if base is not None and not task.custom and isinstance(base.get(task.main_metric), (int, float)):
            firsts.append(base[task.main_metric])
    glue = [c for c in columns if not c[0].custom]
    avg = [x100(sum(firsts) / len(firsts)) if firsts and len(firsts) == len(glue) else "–"] if glue else []
    return [_baseline_label(columns), "0", "0"] + cells + avg


def results_table(groups: list[RunGroup]) -> list[str]:
    """Rows: methods; columns: % trained, every task's dev split (all its metrics), the average of the GLUE
    columns' first metric (none without a GLUE column; "GLUE avg" beside tasks given as files, which it leaves out)."""
    columns = [(t, s.name) for t in tasks_of(groups) for s in t.dev_splits]
    glue, own = [c for c in columns if not c[0].custom], [t.name for t, _ in columns if t.custom]
    avg_title = [] if not glue else ["GLUE avg"] if own else ["Avg"]
    header = ["method", "% params", "% in layers"] + [_column_title(t, s) for t, s in columns] + avg_title
    most = max(len(g.runs) for g in groups)  # groups with fewer seeds than this say how many they have
    rows, partial = [], False
    for method, mine in by_method(groups).items():
        cells, firsts = _results_cells(mine, columns, most)
        avg = x100(sum(firsts) / len(firsts)) if firsts else "–"
        if firsts and len(firsts) < len(glue):
            avg, partial = avg + "*", True
        rows.append([method, percent_range([p for g in mine.values() for p in g.trainable_percents()]),
                     percent_range([p for g in mine.values() for p in g.trainable_percents(in_layers=True)])]
                    + cells + ([avg] if glue else []))
    rows.append(baseline_row(groups, columns))
    fewer = any(len(g.runs) < most for g in groups)
    lines = markdown_table(header, rows) + ["", f"Seeds per cell: {most}"
                                            + (", or as many as the cell says." if fewer else ".")]
    if partial:
        lines += ["", f"\\* averaged over the {'GLUE ' * bool(own)}columns this method has runs for only."]
    if glue and own:
        lines += ["", f"GLUE avg: mean of the GLUE columns' first metric, as the paper's Avg; the tasks given as "
                      f"files ({', '.join(own)}) are not in it."]
    if any(m in RAW_METRICS for t, _ in columns for m in t.metrics):
        lines += ["", MSE_NOTE]
    return lines


def lr_table(groups: list[RunGroup]) -> list[str]:
    """Rows: methods; columns: tasks; each cell the learning rate chosen, its seeds and the rates tried."""
    tasks = tasks_of(groups)
    rows = []
    for method, mine in by_method(groups).items():
        row = [method]
        for t in tasks:
            g = mine.get(t.name)
            row.append("–" if g is None else f"{g.lr:g} ({seeds_text(len(g.runs))} of "
                                             f"{len(g.by_lr)} rate{'s' * (len(g.by_lr) != 1)})")
        rows.append(row)
    return markdown_table(["method"] + [t.glue_name for t in tasks], rows)


def grid_lines(groups: list[RunGroup]) -> list[str]:
    """grid.md: every learning rate of every group, the evidence behind each choice."""
    lines = ["# Every learning rate tried", "",
             "Dev main metric at the best epoch (×100), mean ± sample std over seeds; **bold**: the rate the "
             "tables use (best mean among the rates with the most seeds; ties go to the smaller rate).", ""]
    order = method_order(groups)
    for g in sorted(groups, key=lambda g: (g.key.model, g.key.max_train_samples or 0, task_order(g.key.task),
                                           order(g.key.method))):
        rows = []
        for lr, runs in g.by_lr.items():
            mark = "**" if lr == g.lr else ""
            rows.append([f"{mark}{lr:g}{mark}", f"{mark}{mean_std_text(g.main(lr), g.task.main_metric)}{mark}",
                         ", ".join(str(r.seed) for r in runs), "<br>".join(r.label for r in runs)])
        header = ["learning rate", f"{g.task.main_dev_split} {g.task.main_metric}", "seeds", "run folders"]
        lines += [f"## {group_name(g.key)}", ""] + markdown_table(header, rows) + [""]
    return lines


def bias_axes(change: dict[tuple[str, int], float]) -> tuple[list[str], list[int]]:
    """The bias roles present (in ``bitfit.methods.BIAS_ROLES`` order) and the layers present, of a bias change."""
    roles = [r for r in BIAS_ROLES if any(k[0] == r for k in change)]
    return roles, sorted({k[1] for k in change})


def bias_table(change: dict[tuple[str, int], float]) -> list[str]:
    """The numbers behind a bias-change heatmap, folded away: rows roles, columns layers (from 1)."""
    roles, layers = bias_axes(change)
    rows = [[BIAS_ROLES[r]] + [f"{change[(r, i)]:.2e}" if (r, i) in change else "" for i in layers] for r in roles]
    table = markdown_table(["bias"] + [str(i + 1) for i in layers], rows)
    return ["<details><summary>numbers</summary>", ""] + table + ["", "</details>"]
