"""Choosing: group the runs, keep the settings most of a group share, choose each group's learning rate.

    from bitfit.report.groups import select
    from bitfit.report.runs import collect
    groups, skipped = select(collect(["runs/"])[0])
    g = groups[0]
    g.key.method, g.lr, g.main()     # ("bitfit", 0.001, MeanStd(mean=0.71, std=0.012, n=3))

Runs group by ``GroupKey`` (model, ``--max-train-samples``, task, method). Runs of a group whose
settings (epochs, batch size, ...) differ from those most of the group share are left out, never
mixed; so is a second run of the same learning rate and seed. Within a group the learning rate with
the best mean dev main metric over seeds is chosen (ties: the smaller rate), among the rates with the
most seeds: a rate run on one seed never wins on one lucky seed over a rate confirmed on three (the
two-stage protocol of docs/SWEEPS.md: every rate on seed 0, then more seeds at the best).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from ..methods import METHODS
from ..tasks import TASKS, GlueTask, get_task
from .runs import GroupKey, Run, Skipped, shown_path


@dataclass
class MeanStd:
    """A metric over seeds."""

    mean: float
    std: float | None  # sample std; None for one seed
    n: int


def mean_std(values: list[float]) -> MeanStd:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return MeanStd(mean, std, n)


@dataclass
class RunGroup:
    """One method on one task (one model, one training size): its runs by learning rate, and the rate chosen."""

    key: GroupKey
    by_lr: dict[float, list[Run]]
    lr: float = field(init=False)  # the learning rate with the best mean dev main metric (ties: the smaller)

    def __post_init__(self):
        means = {lr: mean_std([r.main for r in self.by_lr[lr]]).mean for lr in self.eligible}
        self.lr = min(means, key=lambda lr: (-means[lr], lr))

    @property
    def eligible(self) -> list[float]:
        """The rates that may be chosen: those with the most seeds (all of them when every rate has as many)."""
        most = max(len(runs) for runs in self.by_lr.values())
        return [lr for lr, runs in self.by_lr.items() if len(runs) == most]

    @property
    def runs(self) -> list[Run]:
        """The runs at the chosen learning rate."""
        return self.by_lr[self.lr]

    @property
    def task(self) -> GlueTask:
        return self.runs[0].task  # a task given as files: the definition its runs share (runs.agree_on_tasks)

    def metric(self, split: str, metric: str, lr: float | None = None) -> MeanStd | None:
        """``metric`` on ``split`` over the seeds of ``lr`` (the chosen rate by default); None if no run has it."""
        values = [v for r in self.by_lr[self.lr if lr is None else lr] if (v := r.metric(split, metric)) is not None]
        return mean_std(values) if values else None

    def main(self, lr: float | None = None) -> MeanStd:
        """The dev main metric over the seeds of ``lr`` (the chosen rate by default)."""
        return mean_std([r.main for r in self.by_lr[self.lr if lr is None else lr]])

    def trainable_percents(self, in_layers: bool = False) -> list[float]:
        """Per run at the chosen rate: % of all parameters trained (or, ``in_layers``, those inside the layers)."""
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


def _keep_agreeing(key: GroupKey, members: list[Run], signature: dict[str, str],
                   everywhere: dict[str, int]) -> tuple[list[Run], list[Skipped]]:
    """The runs of a group with the settings most of them share; the others, skipped with the difference."""
    variants: dict[str, list[Run]] = {}
    for r in members:
        variants.setdefault(signature[r.label], []).append(r)
    # most runs of the group; on a tie, the settings most runs of the tree share (e.g. the default
    # beside a one-off option run), so a comparison run never stands in for the main one
    kept_sig = min(variants, key=lambda s: (-len(variants[s]), -everywhere[s], s))
    kept, skipped = variants[kept_sig], []
    for sig, others in variants.items():
        if sig == kept_sig:
            continue
        mine, theirs = others[0].settings, kept[0].settings
        diff = {k: mine.get(k) for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)}
        skipped += [Skipped(r.label, f"different settings: {_describe(diff)}, where the other {len(kept)} run(s) of "
                                     f"{group_name(key)} have {_describe({k: theirs.get(k) for k in diff})}; not mixed")
                    for r in others]
    return kept, skipped


def _by_lr(runs: list[Run]) -> tuple[dict[float, list[Run]], list[Skipped]]:
    """Runs by learning rate (ascending); a second run of the same rate and seed is skipped as a duplicate."""
    by_lr: dict[float, list[Run]] = {}
    seen: dict[tuple[float, int], Run] = {}
    skipped = []
    for r in runs:
        first = seen.setdefault((r.lr, r.seed), r)
        if first is not r:
            skipped.append(Skipped(r.label, "duplicate: same method, task, model, training size, learning rate "
                                            f"and seed as {first.label}"))
            continue
        by_lr.setdefault(r.lr, []).append(r)
    return dict(sorted(by_lr.items())), skipped


def select(runs: list[Run]) -> tuple[list[RunGroup], list[Skipped]]:
    """Group runs; keep the settings most of a group share; drop duplicates; choose each group's rate."""
    members: dict[GroupKey, list[Run]] = {}
    signature = {r.label: json.dumps(r.settings, sort_keys=True, default=str) for r in runs}
    everywhere: dict[str, int] = {}  # how many runs of the whole tree have each settings signature
    for r in sorted(runs, key=lambda r: r.label):
        members.setdefault(r.key, []).append(r)
        everywhere[signature[r.label]] = everywhere.get(signature[r.label], 0) + 1
    groups, skipped = [], []
    for key, group_runs in members.items():
        kept, differing = _keep_agreeing(key, group_runs, signature, everywhere)
        by_lr, duplicates = _by_lr(kept)
        groups.append(RunGroup(key, by_lr))
        skipped += differing + duplicates
    return groups, skipped


def model_name(model: str) -> str:
    """The model as the report names it: a local folder given by an absolute path, relative to the cwd."""
    return shown_path(model) if os.path.isabs(model) else model


def size_name(n: int | None) -> str:
    return "full training set" if n is None else f"first {n:,} training examples"


def group_name(key: GroupKey) -> str:
    """``bitfit on RTE (minilm, full training set)``."""
    task = get_task(key.task).glue_name if key.task in TASKS else key.task  # a task given as files: its name
    return f"{key.method} on {task} ({model_name(key.model)}, {size_name(key.max_train_samples)})"


def method_order(groups: list[RunGroup]) -> Callable[[str], tuple]:
    """Sort key for method names: the order of ``bitfit.methods.METHODS`` (the paper's); within a method
    (e.g. BitFit's bias subsets) the most trained parameters first, as the paper's Table 3."""
    kinds = list(METHODS)
    percents: dict[str, list[float]] = {}
    for g in groups:
        percents.setdefault(g.key.method, []).extend(g.trainable_percents())

    def key(method: str) -> tuple:
        kind, mine = method.split(" ")[0], percents.get(method) or [0.0]
        return (kinds.index(kind) if kind in kinds else len(kinds), -sum(mine) / len(mine), method)
    return key


def task_order(task_name: str) -> tuple:
    """Sort key for task names: GLUE's order (``bitfit.tasks.TASKS``), then tasks given as files by name."""
    return (0, list(TASKS).index(task_name), "") if task_name in TASKS else (1, 0, task_name)
