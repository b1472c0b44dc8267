"""What this tool leans on in Accelerate beyond its public API, in one place (tests/test_accelcompat.py
fails when Accelerate changes it).

- ``AcceleratorState._reset_state()``: Accelerate keeps one state per process, and an ``Accelerator`` built
  with another mixed precision than the process's first one raises ("AcceleratorState has already been
  initialized and cannot be changed"). A second run in one process (a test session, a notebook, the bench's
  regimes) may use another precision, so each run clears that state first; the process group
  (``PartialState``) is kept. Accelerate offers no public way to do this.
"""

from __future__ import annotations


def reset_state() -> None:
    """Forget the previous run's accelerator settings (precision, accumulation); keep the process group."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
