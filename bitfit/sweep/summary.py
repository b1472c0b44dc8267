"""The end of a sweep: what happened to each run, and the best learning rate per task and method as
``python -m bitfit report`` picks it (``bitfit.report.groups.select``: best mean dev main metric over seeds).

    from bitfit.sweep.summary import best_rate_lines
    print("\\n".join(best_rate_lines([Path("runs/minilm/full/rte/bitfit/lr1e-3_seed0"), ...])))
"""

from __future__ import annotations

from pathlib import Path

from ..metrics import baseline_answer
from ..report.groups import group_name, select
from ..report.runs import Skipped, read_run, shown_path
from .driver import Outcome, define_run_tasks


def _baseline(g) -> tuple[float, str] | None:
    """The group's trivial baseline on its main dev metric (its runs share the dev split): value, and what it is."""
    task = g.task
    for runs in g.by_lr.values():
        for r in runs:
            base = (r.results.get("baseline") or {}).get(task.main_dev_split) or {}
            if isinstance(base.get(task.main_metric), (int, float)):
                return float(base[task.main_metric]), baseline_answer(base)
    return None


def group_line(g) -> str:
    """The best learning rate of one group among the rates whose mean dev main metric beats the trivial
    baseline (and, as the report, among the rates with the most seeds); a group where none does says so;
    ties are named."""
    metric = g.task.main_metric
    means = {lr: g.main(lr) for lr in g.eligible}
    base = _baseline(g)
    learned = {lr: m for lr, m in means.items() if base is None or m.mean > base[0]}
    best_any = min(means, key=lambda lr: (-means[lr].mean, lr))
    against = f" ({base[1]}: {base[0]:.4f})" if base else ""
    if not learned:
        return (f"  {group_name(g.key)}: no learning rate beat the trivial baseline; best lr {best_any:g} -> {metric} "
                f"{means[best_any].mean:.4f}{against}")
    lr = min(learned, key=lambda x: (-learned[x].mean, x))
    m = learned[lr]
    ties = [x for x in learned if x != lr and learned[x].mean == m.mean]
    tie = f"; tied with lr {', '.join(f'{x:g}' for x in ties)} (the smaller is named)" if ties else ""
    seeds = f"{m.n} seed{'s' if m.n > 1 else ''}"
    return f"  {group_name(g.key)}: lr {lr:g} -> {metric} {m.mean:.4f} ({seeds}){against}{tie}"


def best_rate_lines(paths: list[Path]) -> list[str]:
    """One line per (model, size, task, method) group among the complete runs of ``paths``. A task of the user's is
    known here from its runs' config.json (``task_definition``), never from its files."""
    folders = [p for p in paths if p.is_dir()]
    unknown = define_run_tasks(folders)  # before read_run, which looks the task up by name
    runs = [r for p in folders if p not in unknown for r in [read_run(p, shown_path(p))] if not isinstance(r, Skipped)]
    if not runs:
        return ["best learning rates: no complete run yet"] + [f"  left out: {shown_path(p)}: {why}"
                                                               for p, why in unknown.items()]
    groups, left_out = select(runs)
    left_out += [Skipped(shown_path(p), why) for p, why in unknown.items()]
    lines = ["best learning rate (dev main metric, mean over seeds, among rates above the trivial baseline):"]
    for g in sorted(groups, key=lambda g: (g.key.model, g.key.max_train_samples or 0, g.key.task, g.key.method)):
        lines.append(group_line(g))
    lines += [f"  left out: {s.label}: {s.reason}" for s in left_out]  # never a run dropped without a word
    return lines


def outcome_lines(outs: list[Outcome], skipped: int, skipped_diverged: int, skipped_stopped: int, busy: int) -> list[str]:
    """A line per run that did not finish (failed, stopped early, not finished, left alone), then the counts."""
    lines = [f"{o.status}: {o.path}: {o.reason}" for o in outs if o.status != "done" or o.retried]
    counts: dict[str, int] = {}
    for o in outs:
        counts[o.status] = counts.get(o.status, 0) + 1
    parts = [f"{counts.get('done', 0)} done"] + [f"{counts[s]} {s}" for s in ("stopped", "failed", "not finished")
                                                  if counts.get(s)]
    retried = sum(1 for o in outs if o.retried)
    parts += [f"{retried} run again after a lost worker"] if retried else []
    parts += [f"{skipped} skipped (complete before)"] if skipped else []
    parts += [f"{skipped_diverged} skipped (diverged before)"] if skipped_diverged else []
    parts += [f"{skipped_stopped} skipped (stopped early before)"] if skipped_stopped else []
    parts += [f"{busy + counts.get('left alone', 0)} left alone (running elsewhere)"] if busy or counts.get("left alone") else []
    return lines + ["sweep: " + ", ".join(parts)]
