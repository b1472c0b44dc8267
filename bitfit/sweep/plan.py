"""What a sweep does with each run folder, from ``bitfit.runstate.read_state`` (the one state reader).

    from bitfit.sweep.plan import plan
    for p in plan(trials):
        print(p.action, p.trial.path, p.state.reason)   # "skip" / "resume" / "overwrite" / "new" / "busy"

- complete: skip;  interrupted: resume (``--resume``);  broken: overwrite (``--overwrite``);
- stopped (cut by ``--early-stop asha``): resume when the sweep runs without early stopping (or with
  ``complete_stopped``), else skip: the same ASHA sweep run again trains nothing;
- new: start it;  diverged: skip and say so (``retry_diverged``: overwrite);
- a folder another process holds now (its lock): busy, left alone.

The decision is taken again by each trial just before it starts, so a run finished meanwhile by
someone else is not trained twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..runstate import BROKEN, COMPLETE, DIVERGED, INTERRUPTED, NEW, STOPPED, RunState, read_state
from .grid import Trial

SKIP, RESUME, OVERWRITE, START, BUSY, SKIP_DIVERGED, SKIP_STOPPED = ("skip", "resume", "overwrite", "new", "busy",
                                                                    "skip-diverged", "skip-stopped")
TO_RUN = (RESUME, OVERWRITE, START)


def action_for(state: RunState, retry_diverged: bool = False, complete_stopped: bool = True) -> str:
    if state.running is not None:
        return BUSY
    if state.status == DIVERGED:
        return OVERWRITE if retry_diverged else SKIP_DIVERGED
    if state.status == STOPPED and not complete_stopped:
        return SKIP_STOPPED
    return {COMPLETE: SKIP, INTERRUPTED: RESUME, STOPPED: RESUME, BROKEN: OVERWRITE, NEW: START}[state.status]


def flags_for(action: str) -> dict:
    """RunConfig's resume/overwrite for an action that trains."""
    return {"resume": action == RESUME, "overwrite": action == OVERWRITE}


@dataclass(frozen=True)
class Planned:
    trial: Trial
    state: RunState
    action: str


def plan(trials: list[Trial], retry_diverged: bool = False, complete_stopped: bool = True) -> list[Planned]:
    return [Planned(t, st, action_for(st, retry_diverged, complete_stopped)) for t in trials for st in [read_state(t.path)]]


def plan_lines(planned: list[Planned]) -> list[str]:
    """``<action>\\t<state>\\t<folder>\\t<reason>`` per run, then one line of counts."""
    lines = [f"{p.action}\t{p.state.status}\t{p.trial.path}\t{p.state.reason}" for p in planned]
    return lines + [counts_line(planned)]


def counts_line(planned: list[Planned]) -> str:
    counts: dict[str, int] = {}
    for p in planned:
        counts[p.action] = counts.get(p.action, 0) + 1
    words = {SKIP: "complete (skipped)", SKIP_DIVERGED: "diverged (skipped; --retry-diverged runs them again)",
             SKIP_STOPPED: "stopped early (skipped; a sweep without --early-stop, or --complete-stopped, completes them)",
             RESUME: "to resume", OVERWRITE: "to restart", START: "to start", BUSY: "running elsewhere (left alone)"}
    parts = [f"{counts[a]} {words[a]}" for a in (SKIP, SKIP_DIVERGED, SKIP_STOPPED, BUSY, RESUME, OVERWRITE, START)
             if counts.get(a)]
    return f"{len(planned)} runs: " + ", ".join(parts)
