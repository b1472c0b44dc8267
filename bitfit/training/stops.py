"""Why a run stops before its end, decided the same way by every process.

A process can find a reason of its own: a non-finite loss on its batch, a signal that reached it and
not (yet) the others, an early-stopping callback that runs on the main process only. If it stopped
alone, the others would wait in the next all-reduce until a timeout killed them, and results.json's
status would depend on which process stopped first. So each optimizer step (and each epoch's end)
ends with one agreement through accelerate's trigger, a one-number all-reduce; only when some
process raised it are the reasons exchanged, and the most serious one is the run's everywhere:

    stop = agree(accelerator, mine)   # every process, at the same point; mine: a Stop or None
    if stop is not None:
        ...  # every process stops here, with the same status, message and exit code
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


def agree(accelerator, mine: Stop | None) -> Stop | None:
    """The stop every process makes here: None if no process has a reason, else the most serious reason of
    any process (the first process's among equals). Every process must call it at the same point."""
    if mine is not None:
        accelerator.set_trigger()
    if not accelerator.check_trigger():
        return None
    if accelerator.num_processes == 1:
        return mine
    from accelerate.utils import gather_object

    reasons = [s for s in gather_object([mine]) if s is not None]
    return min(reasons, key=lambda s: SEVERITY.index(s.status))


class LossWatch:
    """The loss of the current optimizer step's micro-batches, summed on the device (reading a GPU number
    waits for the GPU, so it is read once per optimizer step, not per micro-batch), and how many steps in a
    row had a non-finite loss. ``tolerate`` such steps are left to fp16's loss scaler, which skips them."""

    def __init__(self, tolerate: int = 0):
        self.tolerate = tolerate
        self.window: torch.Tensor | None = None
        self.streak = 0

    def add(self, loss: torch.Tensor) -> None:
        self.window = loss if self.window is None else self.window + loss

    def verdict(self) -> float | None:
        """At the end of an optimizer step: the non-finite loss that ends the run, or None."""
        value = float(self.window) if self.window is not None else 0.0
        self.window = None
        if math.isfinite(value):
            self.streak = 0
            return None
        self.streak += 1
        return value if self.streak > self.tolerate else None
