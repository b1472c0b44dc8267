"""``--early-stop asha`` within each group of comparable runs.

    from bitfit.sweep.asha import GroupedASHA
    scheduler = GroupedASHA({"runs/minilm/full/rte/bitfit/lr1e-3_seed0": ("runs/minilm/full/rte/bitfit", 10), ...})

Tune's ASHA ranks every trial of a sweep against every other at each rung. A sweep mixes tasks and
methods whose dev main metrics are not on one scale (CoLA's MCC near 0.1 beside MRPC's F1 near 0.8),
so one ASHA over all of them would cut every CoLA run for being "worse" than MRPC's. Here each group
of runs that ``report`` compares with one another (one model, training size, task and method: the
run folder's parent) has its own successive-halving bracket, rungs at epochs 1, 2, 4, ... up to the
group's epochs; a run is cut only when it is among the worse half of its own group at a rung.
"""

from __future__ import annotations

from ray.tune.schedulers.async_hyperband import AsyncHyperBandScheduler, _Bracket

REDUCTION = 2  # keep the better half at each rung
GRACE = 1  # epochs every run trains before it can be cut


class GroupedASHA(AsyncHyperBandScheduler):
    """Ray's asynchronous successive halving, one bracket per group of comparable runs."""

    def __init__(self, groups: dict[str, tuple[str, int]], metric: str = "main", time_attr: str = "epoch"):
        """``groups``: run folder -> (its group, the group's epochs)."""
        top = max((epochs for _, epochs in groups.values()), default=2)
        super().__init__(time_attr=time_attr, metric=metric, mode="max", grace_period=GRACE,
                         reduction_factor=REDUCTION, max_t=max(top, 2))
        self._groups = dict(groups)
        self._group_brackets: dict[str, _Bracket] = {}

    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)  # checks metric and mode, then picks the shared bracket ...
        group, epochs = self._groups[trial.config["run"]["path"]]
        if group not in self._group_brackets:
            self._group_brackets[group] = _Bracket(GRACE, max(epochs, 2), REDUCTION, 0)
        self._trial_info[trial.trial_id] = self._group_brackets[group]  # ... which its group's replaces
