"""Golden run: a fixed-seed BitFit run on real RTE learns what the code before the package restructuring
(commit 8978460) learned.

The reference losses below were computed at commit 8978460 (``git worktree add /tmp/ref 8978460``,
then the same run there with ``bitfit.train.run``). They are compared to 5e-8 relative, not bit for
bit: the same code on another CPU model (or thread count) rounds differently, and three machines this
test ran on gave three delta digests and training losses 8e-9 (relative) apart, where a learning rate
changed by 0.01% moves them 2.5e-7 and the delta's norm 4e-7. Bit-identity on one machine is what
test_resume/test_train assert. The run:
``python run_glue.py -t rte -f bitfit -e 2 --max-train-samples 256 -s 0 --data-dir ../shared/glue_data``
with the bundled MiniLM, on one CPU thread (the test session's setting).
"""

from __future__ import annotations

import json
import math

import pytest

from safetensors.torch import load_file

from bitfit import RunConfig, run
from conftest import GLUE_DIR, needs_glue

# metrics.jsonl of the reference run, without "seconds"
TRAIN_ROWS = [{"epoch": 1, "split": "train", "loss": 0.697065282613039, "lr": 0.001},
              {"epoch": 2, "split": "train", "loss": 0.6921988539397717, "lr": 0.001}]
ROUNDING = 5e-8  # relative: what another CPU's rounding moves (<= 1.1e-8 seen) and a real change does not (>= 2.5e-7)
DELTA_TENSORS = 52  # BitFit's biases and LayerNorm biases of MiniLM, the pooler and the classifier
DELTA_NORM = 18.10483498389565  # L2 norm over every delta tensor (measured at fcca050, one thread, AMD EPYC)
DEV_ACCURACY = [0.48014440433212996, 0.48736462093862815]
# Evaluation batches are sorted by length since issue 16 (less padding), which changes the last bits of
# the dev loss (other batch shapes round differently); predictions and accuracy are unchanged.
DEV_LOSS = [0.6944235369616898, 0.6929626419656113]


def read_run(out) -> tuple[list[dict], list[dict], dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("seconds", None)
    return ([r for r in rows if r["split"] == "train"], [r for r in rows if r["split"] == "dev"],
            load_file(str(out / "delta.safetensors")))


@pytest.mark.slow
@needs_glue("RTE")
def test_fixed_seed_rte_run_learns_what_the_reference_learned(tmp_path):
    out = tmp_path / "rte"
    run(RunConfig(output_path=str(out), task_name="rte", fine_tune_type="bitfit", epochs=2, max_train_samples=256,
                  seed=0, data_dir=str(GLUE_DIR), verbose=False))
    train, dev, delta = read_run(out)
    assert [{k: v for k, v in r.items() if k != "loss"} for r in train] == \
        [{k: v for k, v in r.items() if k != "loss"} for r in TRAIN_ROWS]  # epochs and schedule: exact
    assert [r["loss"] for r in train] == pytest.approx([r["loss"] for r in TRAIN_ROWS], rel=ROUNDING, abs=0)
    assert [r["accuracy"] for r in dev] == DEV_ACCURACY
    assert [r["loss"] for r in dev] == pytest.approx(DEV_LOSS, rel=ROUNDING, abs=0)
    assert len(delta) == DELTA_TENSORS
    norm = math.sqrt(sum(float(t.double().square().sum()) for t in delta.values()))
    assert norm == pytest.approx(DELTA_NORM, rel=ROUNDING, abs=0)
