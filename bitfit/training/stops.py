"""Why a run stops before its end, decided the same way by every process, without a wait per step.

A process can find a reason of its own: a non-finite loss on its batch, a signal that reached it and
not (yet) the others, an early-stopping callback that runs on the main process only. If it stopped
alone, the others would wait in the next all-reduce until a timeout killed them, and results.json's
status would depend on which process stopped first. So the processes agree, at the same points, and
the most serious reason of any process is the run's everywhere.

Reading a number the GPU computed makes the CPU wait for the GPU, and the loop loses its lead (the
GPU idles while Python queues the next step). So a loss is never read per step: ``LossWatch`` keeps
its flags on the device, and every ``--check-every`` optimizer steps (and at each epoch's end)
``check`` reads every process's flags in one ``tolist`` (after one all-reduce on the device):

    anything, found = check(accelerator, watch, interrupted)   # every process, at the same step
    if anything:
        stop = most_serious(accelerator, my_reason(found))      # the same Stop on every process

A run that diverges is stopped within ``--check-every`` steps, named by the step where it did. At
an epoch's end, where the main process alone may have a reason (the sweep's early stop), ``agree``
does the same for a reason known on the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SEVERITY = ("diverged", "interrupted", "stopped")  # where processes' reasons differ, the first of these wins
FP16_PATIENCE = 8  # optimizer steps in a row whose loss fp16's loss scaler may skip before the run has diverged


@dataclass(frozen=True)
class Stop:
    """A decision to end the run now: results.json's status, the message, the process exit code."""

    status: str
    message: str
    exit_code: int
    step: int | None = None  # where it was found: among processes that diverged, the earliest step names the run's


def agree(accelerator, mine: Stop | None) -> Stop | None:
    """The stop every process makes here: None if no process has a reason, else the most serious reason of
    any process (the first process's among equals). Every process must call it at the same point."""
    if mine is not None:
        accelerator.set_trigger()
    if not accelerator.check_trigger():
        return None
    return most_serious(accelerator, mine)


def most_serious(accelerator, mine: Stop | None) -> Stop:
    """Once some process has a reason (every process calls it): the most serious reason of any process."""
    if accelerator.num_processes == 1:
        return mine
    from accelerate.utils import gather_object

    reasons = [s for s in gather_object([mine]) if s is not None]
    # a NaN on one process reaches the others' parameters through the all-reduce: they diverge a step later
    return min(reasons, key=lambda s: (SEVERITY.index(s.status), math.inf if s.step is None else s.step))


class LossWatch:
    """Non-finite losses, watched on the device. Nothing here reads a number on the host or copies one to
    the device (a blocking copy waits too): only kernels are queued, with Python numbers as their
    arguments, so the GPU runs ahead of the Python loop between checks (``check``). Per optimizer step:
    the loss of its micro-batches (``add``); at its end (``close``), how many steps in a row had a
    non-finite loss, and the first step (with its loss) where that streak passed ``tolerate`` (such
    steps are left to fp16's loss scaler, which skips them)."""

    def __init__(self, tolerate: int = 0):
        self.tolerate = tolerate
        self.window: torch.Tensor | None = None  # this optimizer step's loss so far
        self.streak: torch.Tensor | None = None  # steps in a row with a non-finite loss
        self.step: torch.Tensor | None = None  # the first step past tolerance since the last check (-1: none)
        self.loss: torch.Tensor | None = None  # and its loss

    def add(self, loss: torch.Tensor) -> None:
        self.window = loss if self.window is None else self.window + loss

    def close(self, step: int) -> None:
        """The end of optimizer step ``step``."""
        if self.window is None:
            return
        window, self.window = self.window.detach().double(), None
        if self.streak is None:
            self.streak = torch.zeros((), dtype=torch.int64, device=window.device)
            self.step = torch.full((), -1.0, dtype=torch.float64, device=window.device)
            self.loss = torch.zeros((), dtype=torch.float64, device=window.device)
        self.streak = torch.where(torch.isfinite(window), 0, self.streak + 1)
        hit = (self.streak > self.tolerate) & (self.step < 0)
        self.step = torch.where(hit, float(step), self.step)
        self.loss = torch.where(hit, window, self.loss)

    def reset(self) -> None:
        """After a check that stopped nothing (the streak goes on: it counts steps in a row across checks)."""
        if self.step is not None:
            self.step = torch.full_like(self.step, -1.0)


@dataclass(frozen=True)
class Found:
    """What one process found since the last check: the first step past tolerance and its loss, a signal."""

    step: int | None
    loss: float
    interrupted: bool


def check(accelerator, watch: LossWatch, interrupted: bool) -> tuple[bool, Found]:
    """Every process, at the same optimizer step: (whether any process has a reason to stop, what this one
    found). This is the check interval's one wait for the device: the flags of every process (summed by an
    all-reduce on the device when there are several) and this process's first bad step come back in one
    ``tolist``."""
    if watch.step is None:  # no step closed yet
        step = loss = torch.full((), -1.0, dtype=torch.float64, device=accelerator.device)
    else:
        step, loss = watch.step, watch.loss
    flags = torch.stack([(step >= 0).double(), torch.zeros_like(step) + float(interrupted)])
    if accelerator.num_processes > 1:
        flags = accelerator.reduce(flags, "sum")
    any_bad, any_signal, step, loss = torch.cat([flags, step.view(1), loss.view(1)]).tolist()  # the one wait
    watch.reset()
    return bool(any_bad or any_signal), Found(int(step) if step >= 0 else None, loss, interrupted)
