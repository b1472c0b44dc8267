"""``write_report``: read the runs, choose, and write ``README.md``, ``grid.md`` and ``figures/``.

    from bitfit.report import write_report
    write_report(["runs/"], "report/")                  # -> Path("report/README.md")
    write_report(["runs/"], "report/", overwrite=True, deltas=False)   # tables and curves only: fast

README.md holds one section per (model, training-set size): the results table, the learning rates
chosen and links to every group's learning curves; then the delta figures (``deltas.py``), the
training-set-size curves, what could not be drawn and the skipped runs.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from .. import io, preflight
from .figures import group_slug, model_slug, plot_data_size, plot_group_curves, slug
from .groups import MeanStd, RunGroup, method_order, model_name, select, size_name, task_order
from .runs import Skipped, collect, shown_path
from .tables import grid_lines, lr_table, markdown_table, mean_std_text, results_table, tasks_of

log = logging.getLogger("bitfit")

HOW_TO_READ = ("Each cell: dev metrics at the best epoch (×100), mean ± sample std over seeds, at the learning rate "
               "whose mean dev main metric (the task's first metric) is best for that method and task; every rate "
               "tried is in [grid.md](grid.md). % params: trained parameters (head included) over all parameters; "
               "% in layers: those inside the encoder layers (the paper's count). Avg: mean of each column's first "
               "metric.")
OWN_TASKS = ("Tasks given as files (run_glue.py --train-file: {names}) follow GLUE's, by name, each with its own "
             "metrics and baseline; they are not in the average column, which is GLUE's tasks only.")


def _link(path: Path, out: Path) -> str:
    return path.relative_to(out).as_posix()


def _roots_text(roots: list) -> str:
    shown = ", ".join(f"`{shown_path(r)}`" for r in roots[:3])
    return shown if len(roots) <= 3 else f"{shown} and {len(roots) - 3} more"


def _intro(roots: list, found: int, groups: list[RunGroup], skipped: list[Skipped]) -> list[str]:
    used = sum(len(g.runs) for g in groups)
    tried = sum(len(rs) for g in groups for rs in g.by_lr.values())
    own = sorted({g.key.task for g in groups if g.task.custom})
    how = HOW_TO_READ + (" " + OWN_TASKS.format(names=", ".join(own)) if own else "")
    return ["# Results", "",
            f"Made by `python -m bitfit report` from {found} run folder(s) under {_roots_text(roots)}; nothing was "
            f"trained. {tried} run(s) are compared, {used} of them at the chosen learning rates; {len(skipped)} "
            "skipped (listed at the end).", "", how, ""]


def _curves_table(groups: list[RunGroup], figures: Path, out: Path) -> list[str]:
    """Draw every group's learning curves; a table of links, rows methods, columns tasks."""
    links: dict[str, dict[str, str]] = {}
    for g in groups:
        path = figures / f"curves_{group_slug(g)}.png"
        plot_group_curves(g, path)
        links.setdefault(g.key.method, {})[g.key.task] = f"[png]({_link(path, out)})"
    tasks = tasks_of(groups)
    rows = [[m] + [links[m].get(t.name, "–") for t in tasks] for m in sorted(links, key=method_order(groups))]
    return markdown_table(["method"] + [t.glue_name for t in tasks], rows)


def model_sections(groups: list[RunGroup], figures: Path, out: Path) -> list[str]:
    """One section per (model, training-set size): results, learning rates chosen, learning curves."""
    tables: dict[tuple[str, int | None], list[RunGroup]] = {}
    for g in groups:
        tables.setdefault((g.key.model, g.key.max_train_samples), []).append(g)
    lines = []
    for (model, n), mine in sorted(tables.items(), key=lambda kv: (kv[0][0], kv[0][1] is not None, kv[0][1] or 0)):
        lines += [f"## {model_name(model)}, {size_name(n).replace('set', 'sets')}", ""] + results_table(mine) + [""]
        lines += ["Learning rate chosen on dev (seeds at that rate, rates tried):", ""] + lr_table(mine) + [""]
        lines += ["Learning curves (dev main metric per epoch, every learning rate):", ""]
        lines += _curves_table(mine, figures, out) + [""]
    return lines


def _size_points(groups: list[RunGroup]) -> list[tuple[int, MeanStd]]:
    """(training examples per epoch, main metric) of one method's groups, by size."""
    points = []
    for g in groups:
        sizes = [s for r in g.runs if (s := r.train_size()) is not None]
        if sizes:
            points.append((round(sum(sizes) / len(sizes)), g.main()))
    return sorted(points, key=lambda p: p[0])


def data_size_sections(groups: list[RunGroup], figures: Path, out: Path) -> list[str]:
    """Per task and model: the main metric against the training-set size, one line per method that has several."""
    by_task: dict[tuple[str, str], dict[str, list[RunGroup]]] = {}
    for g in groups:
        by_task.setdefault((g.key.model, g.key.task), {}).setdefault(g.key.method, []).append(g)
    lines, order = [], method_order(groups)
    for (model, task_name), methods in sorted(by_task.items(), key=lambda kv: (kv[0][0], task_order(kv[0][1]))):
        several = sorted((m for m, gs in methods.items() if len({g.key.max_train_samples for g in gs}) > 1), key=order)
        if not several:
            continue
        task, curves = methods[several[0]][0].task, {m: _size_points(methods[m]) for m in several}
        path = figures / f"data_size_{slug(model_slug(model), task_name)}.png"
        ylabel = f"{task.main_dev_split} {task.main_metric} (×100)"
        plot_data_size(curves, path, f"{task.glue_name}, {model_name(model)}: best learning rate per size", ylabel)
        sizes = sorted({x for pts in curves.values() for x, _ in pts})
        rows = [[m] + [next((mean_std_text(s) for x, s in pts if x == size), "–") for size in sizes]
                for m, pts in curves.items()]
        lines += [f"### {task.glue_name}, {model_name(model)}", "", f"![data size]({_link(path, out)})", "",
                  f"{ylabel}, mean ± std over seeds at each size's best learning rate:", ""]
        lines += markdown_table(["method"] + [f"{s:,}" for s in sizes], rows) + [""]
    if lines:
        lines = ["## Training-set size", "",
                 "Runs that differ only in --max-train-samples; x: training examples per epoch (log scale).", ""] + lines
    return lines


def _skipped_section(skipped: list[Skipped]) -> list[str]:
    if not skipped:
        return ["## Skipped runs", "", "None: every run folder found was used."]
    rows = [[s.label, s.reason] for s in sorted(skipped, key=lambda s: s.label)]
    return ["## Skipped runs", ""] + markdown_table(["run folder", "reason"], rows)


def _fresh_figures(out: Path) -> Path:
    figures = out / "figures"
    if figures.is_dir():
        shutil.rmtree(figures)  # a previous report's figures (only with --overwrite: checked first)
    try:
        figures.mkdir(parents=True)
    except OSError as e:
        raise io.environment_failure(figures, e) from None  # a full disk or read-only file system: exit 74
    return figures


def write_report(roots: list[str | os.PathLike], out: str | os.PathLike, overwrite: bool = False,
                 deltas: bool = True) -> Path:
    """Read the runs under ``roots``, write ``out/README.md``, ``out/grid.md`` and ``out/figures/``.

    Run folders are named relative to the current working directory; ``deltas=False`` skips the
    figures that load base models (bias change, per-layer distance)."""
    out = Path(out)
    preflight.check_output_folder(str(out), overwrite)
    runs, skipped = collect(roots, exclude=out)
    found = len(runs) + len(skipped)
    groups, more = select(runs)
    skipped += more
    figures = _fresh_figures(out)
    lines = _intro(roots, found, groups, skipped) + model_sections(groups, figures, out)
    notes = []
    if deltas:
        from .deltas import delta_sections  # torch and the base models: only when asked

        section, notes = delta_sections(groups, figures, out)
        lines += section
    lines += data_size_sections(groups, figures, out)
    if notes:
        lines += ["## Figures not drawn", ""] + [f"- {n}" for n in notes] + [""]
    io.write_text(out / "README.md", "\n".join(lines + _skipped_section(skipped)) + "\n")
    io.write_text(out / "grid.md", "\n".join(grid_lines(groups)) + "\n")
    for s in skipped:
        log.info("skipped %s: %s", s.label, s.reason)
    log.info("report: %d group(s), %d run(s) skipped -> %s", len(groups), len(skipped), out / "README.md")
    return out / "README.md"
