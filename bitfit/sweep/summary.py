"""The end of a sweep: what happened to each run, and the best learning rate per task and method as
``python -m bitfit report`` picks it (``bitfit.report.groups.select``: best mean dev main metric over seeds).

    from bitfit.sweep.summary import best_rate_lines
    print("\\n".join(best_rate_lines([Path("runs/minilm/full/rte/bitfit/lr1e-3_seed0"), ...])))
"""

from __future__ import annotations

from pathlib import Path

from ..report.groups import group_name, select
from ..report.runs import Skipped, read_run, shown_path
from .driver import Outcome


def best_rate_lines(paths: list[Path]) -> list[str]:
    """One line per (model, size, task, method) group among the complete runs of ``paths``."""
    runs = [r for p in paths if p.is_dir() for r in [read_run(p, shown_path(p))] if not isinstance(r, Skipped)]
    if not runs:
        return ["best learning rates: no complete run yet"]
    groups, left_out = select(runs)
    lines = ["best learning rate (dev main metric, mean over seeds):"]
    for g in sorted(groups, key=lambda g: (g.key.model, g.key.max_train_samples or 0, g.key.task, g.key.method)):
        m = g.main()
        seeds = f"{m.n} seed{'s' if m.n > 1 else ''}"
        lines.append(f"  {group_name(g.key)}: lr {g.lr:g} -> {g.task.main_metric} {m.mean:.4f} ({seeds})")
    lines += [f"  left out: {s.label}: {s.reason}" for s in left_out]  # never a run dropped without a word
    return lines


def outcome_lines(outs: list[Outcome], skipped: int, skipped_diverged: int, busy: int) -> list[str]:
    """A line per run that did not finish (failed, stopped early, not finished), then the counts."""
    lines = [f"{o.status}: {o.path}: {o.reason}" for o in outs if o.status != "done"]
    counts: dict[str, int] = {}
    for o in outs:
        counts[o.status] = counts.get(o.status, 0) + 1
    parts = [f"{counts.get('done', 0)} done"] + [f"{counts[s]} {s}" for s in ("stopped", "failed", "not finished")
                                                  if counts.get(s)]
    parts += [f"{skipped} skipped (complete before)"] if skipped else []
    parts += [f"{skipped_diverged} skipped (diverged before)"] if skipped_diverged else []
    parts += [f"{busy} left alone (running elsewhere)"] if busy else []
    return lines + ["sweep: " + ", ".join(parts)]
