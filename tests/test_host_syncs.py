"""The training loop waits for the device once per --check-every optimizer steps, never per step.

A read of a device number on the host (``.item()``, ``float()``, ``.tolist()``, ``.cpu()``, ...) makes the
CPU wait for the GPU. On the CPU nothing waits, but the reads can be counted: every such call made by
code outside torch itself (torch's optimizers read their CPU-side step counters by design) is counted
per training step, over steps whose batches are drawn in advance. A per-step read that comes back fails
here; on a GPU, tests/test_gpu.py checks the same with torch's own sync detector.
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

import pytest
import torch

from bitfit import RunConfig, checkpoint
from bitfit.errors import RunStopped
from bitfit.training import loop
from bitfit.training import setup as training_setup
from test_cli import make_glue_dir

READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__")
TORCH = str(Path(torch.__file__).parent)


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory) -> Path:
    return make_glue_dir(tmp_path_factory.mktemp("glue"), n_train=96)  # 24 steps an epoch at batch 4


def cfg(out, model, data, **kw) -> RunConfig:
    return RunConfig(**{"output_path": str(out), "task_name": "rte", "model_name": str(model), "data_dir": str(data),
                        "epochs": 1, "batch_size": 4, "verbose": False, "cpu": True, **kw})


class HostReads:
    """Counts host reads of tensors made outside torch's own code while installed."""

    def __init__(self, monkeypatch):
        self.count, self.where = 0, []
        for name in READS:
            real = getattr(torch.Tensor, name)

            def counted(t, *a, _real=real, _name=name, **kw):
                caller = sys._getframe(1).f_code.co_filename
                if not caller.startswith(TORCH):
                    self.count += 1
                    self.where.append(f"{_name} from {caller}:{sys._getframe(1).f_lineno}")
                return _real(t, *a, **kw)

            monkeypatch.setattr(torch.Tensor, name, counted)


def per_step_reads(tr, batches, monkeypatch) -> tuple[list[int], list[str]]:
    """Host reads made by each ``loop._step`` over ``batches`` (drawn beforehand: the loader's own work is
    not a step's)."""
    reads = HostReads(monkeypatch)
    totals = torch.zeros(2, dtype=torch.float64)
    counts = []
    with checkpoint.Interrupt() as interrupt:
        for batch in batches:
            before = reads.count
            loop._step(tr, batch, 1, interrupt, totals, batch["labels"].shape[0])
            counts.append(reads.count - before)
    monkeypatch.undo()
    return counts, reads.where


def started(c: RunConfig):
    su = training_setup.prepare(c)
    return su, loop.start(su, time.time())


@pytest.mark.parametrize("check_every", [4, 1])
def test_one_host_read_per_check_and_none_in_between(check_every, tmp_path, tiny_bert_dir, glue_dir, monkeypatch):
    su, tr = started(cfg(tmp_path / "run", tiny_bert_dir, glue_dir, check_every=check_every, fine_tune_type="full_ft",
                         max_grad_norm=1.0))
    try:
        tr.model.train()
        tr.train_dl.set_epoch(1)
        tr.sampler.set_epoch(1)
        batches = list(itertools.islice(iter(tr.train_dl), 13))
        loop._step(tr, batches[0], 1, checkpoint.Interrupt(), torch.zeros(2, dtype=torch.float64), 4)  # warm-up
        counts, where = per_step_reads(tr, batches[1:], monkeypatch)
    finally:
        su.lock.release()
    checks = [i for i in range(1, 13) if (i + 1) % check_every == 0]  # step 1 was the warm-up: the 4th is index 2
    assert [i for i, c in enumerate(counts, 1) if c] == checks, (counts, where)
    assert all(counts[i - 1] == 1 for i in checks), (counts, where)  # one read per check, all flags at once


def _poison_forward(monkeypatch, at: int) -> dict:
    """The model's ``at``-th training forward pass returns a NaN loss; returns the forward-pass count."""
    real_load, calls = training_setup.load_model, {"n": 0}

    def poisoned(*args, **kw):
        model, fresh = real_load(*args, **kw)

        def hook(module, inputs, output):
            if module.training:
                calls["n"] += 1
                if calls["n"] == at:
                    output["loss"] = output.loss * float("nan")
            return output

        model.register_forward_hook(hook)
        return model, fresh

    monkeypatch.setattr(training_setup, "load_model", poisoned)
    return calls


@pytest.mark.parametrize("check_every, forwards", [(4, 4), (1, 3), (50, 24)])
def test_a_diverged_run_stops_at_the_next_check_naming_the_step(check_every, forwards, tmp_path, tiny_bert_dir,
                                                                 glue_dir, monkeypatch):
    calls = _poison_forward(monkeypatch, at=3)
    with pytest.raises(RunStopped) as stop:
        loop.run(cfg(tmp_path / "run", tiny_bert_dir, glue_dir, check_every=check_every, epochs=2))
    assert "non-finite loss (nan) at epoch 1, step 3 with learning rate 0.001" in str(stop.value)
    assert calls["n"] == forwards  # stopped at the first check after step 3 (50: the epoch's end, step 24)
    assert not (tmp_path / "run" / "checkpoint").exists()  # the diverged epoch is never saved


def test_check_every_is_refused_below_one_and_may_change_on_resume(tmp_path):
    from bitfit.config import RESUMABLE_CHANGES
    from bitfit.errors import UserError

    with pytest.raises(UserError, match=r"check every 0 is out of range"):
        RunConfig(output_path=str(tmp_path), task_name="rte", check_every=0)
    assert "check_every" in RESUMABLE_CHANGES


@pytest.mark.parametrize("fast_cpu_ops", [True, False])
def test_the_4d_mask_trains_the_very_same_numbers(fast_cpu_ops, tmp_path, tiny_bert_dir, glue_dir, monkeypatch):
    from safetensors.torch import load_file

    from bitfit.training import masks

    kw = {"fine_tune_type": "full_ft", "fast_cpu_ops": fast_cpu_ops, "check_every": 8}
    real, used = masks.as_4d, []
    monkeypatch.setattr(masks, "as_4d", lambda batch: used.append(1) or real(batch))
    taken = loop.run(cfg(tmp_path / "4d", tiny_bert_dir, glue_dir, **kw))
    assert len(used) >= 24  # every training step of the epoch took the 4D mask (and the probe)
    calls = []
    monkeypatch.setattr(masks, "prepared_mask_works", lambda *a: calls.append(1) or False)
    plain = loop.run(cfg(tmp_path / "2d", tiny_bert_dir, glue_dir, **kw))
    assert calls == [1]
    assert taken["best_metrics"] == plain["best_metrics"]
    a, b = load_file(tmp_path / "4d" / "delta.safetensors"), load_file(tmp_path / "2d" / "delta.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_probe_takes_the_4d_mask_only_where_the_logits_agree(tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification

    from bitfit.training import masks

    sdpa = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, attn_implementation="sdpa")
    assert masks.prepared_mask_works(sdpa, torch.device("cpu"), sdpa.config.vocab_size)
    assert sdpa.training is False  # from_pretrained's mode, restored
    eager = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, attn_implementation="eager")
    assert not masks.prepared_mask_works(eager, torch.device("cpu"), eager.config.vocab_size)  # a float mask there
    sdpa.train()
    sdpa.forward = lambda **kw: (_ for _ in ()).throw(ValueError("no 4D masks here"))
    assert not masks.prepared_mask_works(sdpa, torch.device("cpu"), sdpa.config.vocab_size)
    assert sdpa.training is True
