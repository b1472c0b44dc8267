"""``--early-stop asha``: asynchronous successive halving within each group of comparable runs, decided
by the trial itself from the run folders on disk.

    from bitfit.sweep.asha import decide
    decide(Path("runs/minilm/full/rte/bitfit/lr1e-3_seed0"), "rte", epoch=2, value=0.61, epochs=10)
    # None (go on), or why the run is cut

A sweep mixes tasks and methods whose dev main metrics are not on one scale (CoLA's MCC near 0.1
beside MRPC's F1 near 0.8), so one ASHA over all of them would cut every CoLA run. A group is what
``report`` compares to choose a learning rate: one model, training size, task and method, i.e. the
runs of one method folder. Rungs are at epochs 1, 2, 4, ... below the run's last epoch (grace period
1, reduction factor 2); at a rung, a run below the median of what the group's other runs recorded
at that rung is cut. As Tune's ``ASHAScheduler``: asynchronous (a run is compared with those that
reached the rung before it), the first to arrive and a tie are never cut.

The record is each run folder's own ``metrics.jsonl``: every run of the group that reached the rung,
in this invocation or an earlier one. So a rerun is ranked against the whole group (a resumed run is
not compared only with the runs resumed with it), the decision needs no scheduler state in the
driver and no private Ray class, and on a cluster it works wherever the run folders are shared.
"""

from __future__ import annotations

import math
from pathlib import Path
from statistics import median

from ..errors import UnreadableFile
from ..io import read_jsonl_file
from ..tasks import dev_main
from .driver import run_task

REDUCTION = 2  # keep the better half at each rung
GRACE = 1  # epochs every run trains before it can be cut


def rungs(epochs: int) -> list[int]:
    """The epochs at which a run of ``epochs`` epochs can be cut: 1, 2, 4, ... below its last."""
    out, r = [], GRACE
    while r < epochs:
        out.append(r)
        r *= REDUCTION
    return out


def recorded(run: Path, task_name: str, epoch: int) -> dict[Path, float]:
    """The dev main metric at ``epoch`` of every other run in ``run``'s group that has reached it. The task is GLUE's
    ``task_name``, or a task of the user's as ``run``'s config.json defines it (``driver.run_task``)."""
    task = run_task(run, task_name)
    found = {}
    for other in sorted(run.parent.iterdir()) if run.parent.is_dir() else []:
        if other == run or not other.is_dir():
            continue
        rows = _rows(other / "metrics.jsonl", epoch)
        try:
            value = float(dev_main(task, rows))
        except (StopIteration, KeyError, TypeError, ValueError):
            continue  # has not reached the epoch, or not a run of this task
        if math.isfinite(value):
            found[other] = value
    return found


def _rows(path: Path, epoch: int) -> list[dict]:
    """``path``'s rows of ``epoch``; none where it is absent or unreadable (a FIFO, a symlink, too large, a line
    that is not JSON or nested too deeply: ``io.read_jsonl_file``), so such a run counts for nothing."""
    try:
        rows = read_jsonl_file(path)
    except (FileNotFoundError, UnreadableFile):
        return []
    return [row for row in rows if isinstance(row, dict) and row.get("epoch") == epoch]


def decide(run: Path, task_name: str, epoch: int, value: float, epochs: int) -> str | None:
    """Why ``run`` is cut after ``epoch`` (dev main metric ``value``), or None to go on."""
    if epoch not in rungs(epochs):
        return None
    others = recorded(Path(run), task_name, epoch)
    if not others:
        return None
    cutoff = median(others.values())
    if value < cutoff:
        return (f"ASHA cut it at epoch {epoch}: dev {run_task(run, task_name).main_metric} {value:.4f} is below the median "
                f"{cutoff:.4f} of the {len(others)} other run{'s' if len(others) > 1 else ''} of its group at that epoch")
    return None
