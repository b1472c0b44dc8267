"""Markdown tables and the numbers in them: metrics ×100 with one decimal, mean ± sample std over seeds.

    from bitfit.report.tables import markdown_table, results_table
    markdown_table(["method", "RTE (acc)"], [["bitfit", "67.0 ± 1.4"]])   # ["| method | RTE (acc) |", ...]
    results_table(groups)     # rows: methods; columns: % trained, every task's dev metrics, the average

Every function returns a list of lines; nothing here reads files or draws.
"""

from __future__ import annotations

from ..methods import BIAS_ROLES
from ..tasks import TASKS, GlueTask
from .groups import MeanStd, RunGroup, group_name, method_order, task_order

SHORT_METRIC = {"accuracy": "acc", "mcc": "MCC", "f1": "F1", "pearson": "Pearson", "spearmanr": "Spearman"}


def seeds_text(n: int) -> str:
    """``1 seed``, ``3 seeds``."""
    return f"{n} seed{'s' * (n != 1)}"


def x100(value: float) -> str:
    """A metric in [0, 1] as the tables show it: ×100, one decimal."""
    return f"{100 * value:.1f}"


def mean_std_text(s: MeanStd | None) -> str:
    """``67.0 ± 1.4`` (×100); one seed: ``67.0``; nothing: ``–``."""
    if s is None:
        return "–"
    return x100(s.mean) + ("" if s.std is None else f" ± {x100(s.std)}")


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
    """The tasks the groups cover, in GLUE's order."""
    present = {g.key.task for g in groups}
    return [t for t in TASKS.values() if t.name in present]


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
    """One method's cells, one per (task, dev split) column, and the column's first metric where it has one."""
    cells, firsts = [], []
    for task, split in columns:
        group = mine.get(task.name)
        if group is None:
            cells.append("–")
            continue
        values = [group.metric(split, m) for m in task.metrics]
        text = " / ".join(mean_std_text(s) for s in values)
        cells.append(text + (f" ({seeds_text(len(group.runs))})" if len(group.runs) < most else ""))
        if values[0] is not None:
            firsts.append(values[0].mean)
    return cells, firsts


BASELINE_LABEL = "trivial baseline (majority class; STS-B: a constant)"


def baseline_row(groups: list[RunGroup], columns: list[tuple[GlueTask, str]]) -> list[str]:
    """What always giving one answer scores on each column's dev split, as the runs recorded it
    (results.json ``baseline``; runs written before it existed leave the cell empty)."""
    cells, firsts = [], []
    for task, split in columns:
        base = next((r.results["baseline"][split] for g in groups if g.task.name == task.name for r in g.runs
                     if split in (r.results.get("baseline") or {})), None)
        cells.append("–" if base is None else " / ".join(x100(base[m]) for m in task.metrics))
        if base is not None:
            firsts.append(base[task.main_metric])
    avg = x100(sum(firsts) / len(firsts)) if len(firsts) == len(columns) else "–"
    return [BASELINE_LABEL, "0", "0"] + cells + [avg]


def results_table(groups: list[RunGroup]) -> list[str]:
    """Rows: methods; columns: % trained, every task's dev split (all its metrics), the average."""
    columns = [(t, s.name) for t in tasks_of(groups) for s in t.dev_splits]
    header = ["method", "% params", "% in layers"] + [_column_title(t, s) for t, s in columns] + ["Avg"]
    most = max(len(g.runs) for g in groups)  # groups with fewer seeds than this say how many they have
    rows, partial = [], False
    for method, mine in by_method(groups).items():
        cells, firsts = _results_cells(mine, columns, most)
        avg = x100(sum(firsts) / len(firsts)) if firsts else "–"
        if firsts and len(firsts) < len(columns):
            avg, partial = avg + "*", True
        rows.append([method, percent_range([p for g in mine.values() for p in g.trainable_percents()]),
                     percent_range([p for g in mine.values() for p in g.trainable_percents(in_layers=True)])]
                    + cells + [avg])
    rows.append(baseline_row(groups, columns))
    fewer = any(len(g.runs) < most for g in groups)
    lines = markdown_table(header, rows) + ["", f"Seeds per cell: {most}"
                                            + (", or as many as the cell says." if fewer else ".")]
    if partial:
        lines += ["", "\\* averaged over the columns this method has runs for only."]
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
             "tables use (best mean; ties go to the smaller rate).", ""]
    order = method_order(groups)
    for g in sorted(groups, key=lambda g: (g.key.model, g.key.max_train_samples or 0, task_order(g.key.task),
                                           order(g.key.method))):
        rows = []
        for lr, runs in g.by_lr.items():
            mark = "**" if lr == g.lr else ""
            rows.append([f"{mark}{lr:g}{mark}", f"{mark}{mean_std_text(g.main(lr))}{mark}",
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
