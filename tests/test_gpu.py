"""What only a CUDA GPU can show (marked ``gpu``; skipped, with the reason, where CUDA is absent):
fused AdamW really used in training, TF32 on when asked, pinned loaders, bf16 and fp16 runs end to end
with fp32 weights, two processes on two GPUs. Run them with ``python -m pytest -m gpu -rs`` (or
scripts/gpu_check.sh, which also benches)."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
import torch

from bitfit import RunConfig, run
from conftest import REPO, accelerate_launch
from test_cli import make_glue_dir, read_jsonl

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
    return make_glue_dir(tmp_path_factory.mktemp("glue"))


def cfg(out, model, data, **kw) -> RunConfig:
    return RunConfig(output_path=str(out), task_name="rte", model_name=str(model), data_dir=str(data), epochs=1,
                     batch_size=8, verbose=False, gpu_device=0, **kw)


def started(c: RunConfig):
    """The run set up and started (model prepared, loaders, optimizer) but not trained; caller releases."""
    from bitfit.training.loop import start
    from bitfit.training.setup import prepare

    su = prepare(c)
    return su, start(su, time.time())


def test_training_uses_fused_adamw_and_pinned_loaders_on_the_gpu(tmp_path, tiny_bert_dir, glue_dir):
    su, tr = started(cfg(tmp_path / "run", tiny_bert_dir, glue_dir, fine_tune_type="full_ft", num_workers=2))
    try:
        assert tr.accelerator.device.type == "cuda"
        optimizer = getattr(tr.optimizer, "optimizer", tr.optimizer)  # accelerate's wrapper
        assert optimizer.defaults.get("fused") is True, optimizer.defaults
        assert all(p.is_cuda for p in tr.params)
        loaders = [tr.train_dl] + [dl.loader for dl in tr.eval_dls.values()]
        assert all(dl.pin_memory and dl.num_workers == 2 for dl in loaders)
        batch = next(iter(tr.train_dl))
        assert batch["input_ids"].is_cuda
    finally:
        if su.lock is not None:
            su.lock.release()


def test_tf32_and_determinism_are_on_when_asked_and_recorded(tmp_path, tiny_bert_dir, glue_dir):
    try:
        run(cfg(tmp_path / "tf32", tiny_bert_dir, glue_dir, tf32=True, deterministic=True))
        assert torch.backends.cuda.matmul.allow_tf32 and torch.get_float32_matmul_precision() == "high"
        saved = json.loads((tmp_path / "tf32" / "config.json").read_text())
        assert saved["tf32_matmul"] is True and saved["deterministic_algorithms"] is True
        assert saved["gpu_name"] == torch.cuda.get_device_name(0) and saved["gpu_index"] == 0
        assert saved["cuda_version"] == torch.version.cuda and saved["world_size"] == 1
        run(cfg(tmp_path / "fp32", tiny_bert_dir, glue_dir))  # the default: the paper's fp32
        assert not torch.backends.cuda.matmul.allow_tf32
        assert json.loads((tmp_path / "fp32" / "config.json").read_text())["tf32_matmul"] is False
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_float32_matmul_precision("highest")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_runs_end_to_end_with_fp32_weights(precision, tmp_path, tiny_bert_dir, glue_dir):
    if precision == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip(f"{torch.cuda.get_device_name(0)} has no native bf16")
    su, tr = started(cfg(tmp_path / "probe", tiny_bert_dir, glue_dir, precision=precision))
    assert {p.dtype for p in tr.named.values()} == {torch.float32}
    if su.lock is not None:
        su.lock.release()
    res = run(cfg(tmp_path / "run", tiny_bert_dir, glue_dir, precision=precision, fine_tune_type="bitfit", epochs=2))
    assert res["status"] == "complete" and res["device"].startswith("cuda")
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert all(r["loss"] == r["loss"] for r in rows)  # finite: no NaN
    assert json.loads((tmp_path / "run" / "config.json").read_text())["precision"] == precision


@pytest.mark.parametrize("fine_tune_type, precision", [("bitfit", "fp32"), ("full_ft", "bf16")])
def test_the_training_step_waits_for_the_gpu_only_at_checks(fine_tune_type, precision, tmp_path, tiny_bert_dir,
                                                            glue_dir):
    """torch's own detector of synchronizing CUDA calls, per training step (batches drawn beforehand)."""
    import itertools
    import warnings

    from bitfit import checkpoint
    from bitfit.training import loop

    su, tr = started(cfg(tmp_path / "run", tiny_bert_dir, glue_dir, fine_tune_type=fine_tune_type, precision=precision,
                         check_every=4, batch_size=4))
    try:
        tr.model.train()
        tr.train_dl.set_epoch(1)
        batches = list(itertools.islice(iter(tr.train_dl), 9))
        totals = torch.zeros(2, dtype=torch.float64, device="cuda")
        counts = []
        with checkpoint.Interrupt() as interrupt:
            loop._step(tr, batches[0], 1, interrupt, totals, 4)  # warm-up (lazy state, the first check's tensors)
            for batch in batches[1:]:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    torch.cuda.set_sync_debug_mode("warn")
                    try:
                        loop._step(tr, batch, 1, interrupt, totals, 4)
                    finally:
                        torch.cuda.set_sync_debug_mode("default")
                counts.append(sum("synchroniz" in str(w.message) for w in caught))
    finally:
        if su.lock is not None:
            su.lock.release()
    assert tr.mask_4d  # BERT takes the 4D mask: transformers' per-forward padding_mask.all() is gone
    assert [i for i, c in enumerate(counts, 2) if c] == [4, 8], counts  # steps 4 and 8: the checks
    assert all(counts[i - 2] <= 2 for i in (4, 8)), counts


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_two_processes_on_two_gpus(tmp_path, tiny_bert_dir, glue_dir):
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"} | {"CUDA_VISIBLE_DEVICES": "0,1",
                                                                                   "OMP_NUM_THREADS": "1"}
    out = tmp_path / "two"
    proc = subprocess.run([*accelerate_launch(2), str(REPO / "run_glue.py"), "-t", "rte", "-f", "bitfit", "-m", str(tiny_bert_dir),
                           "--data-dir", str(glue_dir), "-e", "1", "-b", "4", "-o", str(out), "--no-verbose"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads((out / "config.json").read_text())
    assert saved["num_processes"] == 2 and saved["world_size"] == 2 and saved["device"].startswith("cuda")
    assert json.loads((out / "results.json").read_text())["status"] == "complete"
