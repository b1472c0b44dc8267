"""Golden run: a fixed-seed BitFit run on real RTE gives the same metrics and delta, bit for bit, as
the code before the package restructuring (commit 8978460).

The reference digests below were computed at commit 8978460 (``git worktree add /tmp/ref 8978460``,
then this test's ``golden_digests`` on that tree with ``bitfit.train.run``) and again after every
change since; a refactor that moves a single bit of a metric or a learned tensor fails here. The run:
``python run_glue.py -t rte -f bitfit -e 2 --max-train-samples 256 -s 0 --data-dir ../shared/glue_data``
with the bundled MiniLM, on one CPU thread (the test session's setting).
"""

from __future__ import annotations

import hashlib
import json

from safetensors import safe_open

from bitfit import RunConfig, run
from conftest import GLUE_DIR, needs_glue

METRICS_SHA256 = "3f989ece896fe16b23333254b6ab4da2b00cd64feced5f9b9063d94b0286d9c2"  # metrics.jsonl without times
DELTA_SHA256 = "sha256:4a7a6caecf14918fc67e028f58772ee99cc187f5e4802bc46fbdb8fc6b4d9336"  # every delta tensor's bytes
DEV_ACCURACY = [0.48014440433212996, 0.48736462093862815]  # for a readable failure


def golden_digests(out) -> tuple[str, str, list[float]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("seconds", None)
    metrics = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
    with safe_open(str(out / "delta.safetensors"), "pt") as f:
        delta = f.metadata()["tensors_sha256"]
    return metrics, delta, [r["accuracy"] for r in rows if r["split"] == "dev"]


@needs_glue("RTE")
def test_fixed_seed_rte_run_is_bit_identical_to_the_reference(tmp_path):
    out = tmp_path / "rte"
    run(RunConfig(output_path=str(out), task_name="rte", fine_tune_type="bitfit", epochs=2, max_train_samples=256,
                  seed=0, data_dir=str(GLUE_DIR), verbose=False))
    metrics, delta, dev = golden_digests(out)
    assert dev == DEV_ACCURACY
    assert metrics == METRICS_SHA256
    assert delta == DELTA_SHA256
