"""bitfit/accelcompat.py: the one private name of Accelerate this tool uses still exists and still does what
the tool needs (a second accelerator in one process with another precision)."""

from __future__ import annotations

import pytest
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from bitfit import accelcompat


def test_a_second_accelerator_with_another_precision_needs_the_reset_and_gets_it():
    accelcompat.reset_state()
    assert Accelerator(cpu=True, mixed_precision="no").mixed_precision == "no"
    with pytest.raises(ValueError, match="already been initialized"):  # why the reset exists
        Accelerator(cpu=True, mixed_precision="bf16")
    accelcompat.reset_state()
    assert Accelerator(cpu=True, mixed_precision="bf16").mixed_precision == "bf16"
    accelcompat.reset_state()
    assert AcceleratorState._shared_state == {}
