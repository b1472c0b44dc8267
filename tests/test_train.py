"""The training loop through the Python API: MNLI's splits and AX, precision, accumulation, schedule."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from bitfit.config import RunConfig
from bitfit.errors import UserError
from bitfit import run
from bitfit.data import EpochBatches
from bitfit.delta import apply_tensors
from bitfit.training.optim import make_scheduler
from conftest import WORDS
from test_cli import make_glue_dir, read_jsonl

MNLI_LABELS = ["contradiction", "entailment", "neutral"]


def make_mnli_dir(root: Path, n: int = 24) -> Path:
    """MNLI's real column layout: 12 columns in train, 16 in dev (5 annotator labels + gold), 10 in test."""
    rng = random.Random(0)
    sent = lambda: " ".join(rng.choice(WORDS[:30]) for _ in range(rng.randint(3, 9)))  # noqa: E731
    (root / "MNLI").mkdir(parents=True)
    (root / "diagnostic").mkdir()
    parses = "\t".join(["(p)"] * 4)
    train = ["index\tpromptID\tpairID\tgenre\ts1_bp\ts2_bp\ts1_p\ts2_p\tsentence1\tsentence2\tlabel1\tgold_label"]
    train += [f"{i}\t{i}\t{i}e\tfiction\t{parses}\t{sent()}\t{sent()}\tx\t{rng.choice(MNLI_LABELS)}" for i in range(n)]
    (root / "MNLI" / "train.tsv").write_text("\n".join(train) + "\n")
    for split in ("dev_matched", "dev_mismatched"):
        rows = ["index\tpromptID\tpairID\tgenre\ts1_bp\ts2_bp\ts1_p\ts2_p\tsentence1\tsentence2\tl1\tl2\tl3\tl4\tl5\tgold_label"]
        rows += [f"{i}\t{i}\t{i}e\tfiction\t{parses}\t{sent()}\t{sent()}\tx\tx\tx\tx\tx\t{rng.choice(MNLI_LABELS)}"
                 for i in range(n // 2)]
        (root / "MNLI" / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    for split, count in (("test_matched", 7), ("test_mismatched", 5)):
        rows = ["index\tpromptID\tpairID\tgenre\ts1_bp\ts2_bp\ts1_p\ts2_p\tsentence1\tsentence2"]
        rows += [f"{i}\t{i}\t{i}e\tfiction\t{parses}\t{sent()}\t{sent()}" for i in range(count)]
        (root / "MNLI" / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    (root / "diagnostic" / "diagnostic.tsv").write_text(
        "index\tsentence1\tsentence2\n" + "\n".join(f"{i}\t{sent()}\t{sent()}" for i in range(4)) + "\n")
    return root


def cfg(out, model, data, **kw) -> RunConfig:
    base = dict(output_path=str(out), task_name="rte", model_name=str(model), data_dir=str(data), epochs=1,
                verbose=False, learning_rate=1e-3)
    return RunConfig(**(base | kw))


def test_mnli_reports_both_dev_splits_and_writes_m_mm_and_ax(tmp_path, tiny_bert_dir):
    data = make_mnli_dir(tmp_path / "glue")
    results = run(cfg(tmp_path / "run", tiny_bert_dir, data, task_name="MNLI", fine_tune_type="bitfit",
                      predict_test=True, epochs=2))
    assert set(results["best_metrics"]) == {"dev_matched", "dev_mismatched"}
    splits = [m["split"] for m in read_jsonl(tmp_path / "run" / "metrics.jsonl")]
    assert splits == ["train", "dev_matched", "dev_mismatched"] * 2
    for name, rows in (("MNLI-m.tsv", 7), ("MNLI-mm.tsv", 5), ("AX.tsv", 4)):
        lines = (tmp_path / "run" / name).read_text().splitlines()
        assert lines[0] == "index\tprediction" and len(lines) == rows + 1
        assert {l.split("\t")[1] for l in lines[1:]} <= set(MNLI_LABELS)


def test_grad_accum_equals_the_larger_batch(tmp_path, tiny_bert_dir):
    data = make_glue_dir(tmp_path / "glue")
    big = run(cfg(tmp_path / "b8", tiny_bert_dir, data, fine_tune_type="full_ft", batch_size=8, epochs=2,
              group_by_length=False))
    acc = run(cfg(tmp_path / "b4x2", tiny_bert_dir, data, fine_tune_type="full_ft", batch_size=4, grad_accum=2, epochs=2,
              group_by_length=False))
    a = read_jsonl(tmp_path / "b8" / "metrics.jsonl")
    b = read_jsonl(tmp_path / "b4x2" / "metrics.jsonl")
    for x, y in zip(a, b):
        if x["split"] == "dev":
            assert x["loss"] == pytest.approx(y["loss"], rel=1e-4)
    assert big["best_main_metric"] == acc["best_main_metric"]


def _first_update_gradients(out, model, data, **kw) -> dict[str, torch.Tensor]:
    """The gradients the optimizer's first update sees (full fine-tuning, no clipping, no dropout)."""
    import itertools
    import time

    from bitfit import checkpoint
    from bitfit.training import loop
    from bitfit.training.setup import prepare

    su = prepare(cfg(out, model, data, fine_tune_type="full_ft", group_by_length=False, max_grad_norm=0.0, **kw))
    try:
        tr = loop.start(su, time.time())
        seen = []
        inner = tr.optimizer.optimizer  # accelerate's wrapper calls it at the end of each accumulation window
        inner.step = lambda *a, **k: seen.append({n: p.grad.clone() for n, p in tr.named.items() if p.grad is not None})
        tr.model.train()
        tr.train_dl.set_epoch(1)
        tr.sampler.set_epoch(1)
        totals = torch.zeros(2, dtype=torch.float64)
        with checkpoint.Interrupt() as interrupt:
            for batch in itertools.islice(iter(tr.train_dl), kw.get("grad_accum", 1)):
                loop._step(tr, batch, 1, interrupt, totals, batch["labels"].shape[0])
        assert len(seen) == 1
        return seen[0]
    finally:
        su.lock.release()


def test_an_accumulated_update_has_the_larger_batch_gradient(tmp_path, tiny_bert_dir):
    """AdamW hides the scale of a gradient, so this compares the gradients themselves: a loss summed over the
    window instead of averaged would double them."""
    data = make_glue_dir(tmp_path / "glue")
    big = _first_update_gradients(tmp_path / "b8", tiny_bert_dir, data, batch_size=8)
    accumulated = _first_update_gradients(tmp_path / "b4x2", tiny_bert_dir, data, batch_size=4, grad_accum=2)
    assert big.keys() == accumulated.keys() and len(big) > 10
    for name in big:
        torch.testing.assert_close(accumulated[name], big[name], rtol=1e-4, atol=1e-6, msg=name)


def test_bf16_autocast_runs_on_cpu_and_keeps_trainable_params_fp32(tmp_path, tiny_bert_dir, monkeypatch):
    """The training matmuls run in bf16 (so --precision was not ignored) while what trains stays fp32."""
    seen = {"outputs": set(), "trainable": set(), "calls": 0}
    linear_forward = torch.nn.Linear.forward

    def watched(self, x):
        out = linear_forward(self, x)
        if self.training and torch.is_grad_enabled():  # training steps only, not evaluation
            seen["calls"] += 1
            seen["outputs"].add(out.dtype)
            seen["trainable"] |= {p.dtype for p in self.parameters() if p.requires_grad}
        return out

    monkeypatch.setattr(torch.nn.Linear, "forward", watched)
    data = make_glue_dir(tmp_path / "glue")
    run(cfg(tmp_path / "run", tiny_bert_dir, data, precision="bf16", fine_tune_type="bitfit"))
    assert seen["calls"] > 0, "no nn.Linear ran in a training step: the hook watched nothing"
    assert seen["outputs"] == {torch.bfloat16}, f"training matmul outputs were {seen['outputs']}, not bf16 autocast"
    assert seen["trainable"] == {torch.float32}
    from safetensors.torch import load_file

    delta = load_file(tmp_path / "run" / "delta.safetensors")
    assert delta and all(t.dtype == torch.float32 for t in delta.values())


def test_fp16_without_a_gpu_is_refused_before_writing(tmp_path, tiny_bert_dir):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: fp16 is allowed")
    with pytest.raises(UserError, match="precision 'fp16' needs a CUDA GPU"):
        run(cfg(tmp_path / "run", tiny_bert_dir, make_glue_dir(tmp_path / "glue"), precision="fp16"))
    assert not (tmp_path / "run").exists()


def test_epoch_batches_cover_everything_once_and_depend_only_on_seed_and_epoch():
    s = EpochBatches(10, 4, seed=3)
    s.set_epoch(1)
    first = list(s)
    assert [len(b) for b in first] == [4, 4, 2] and sorted(i for b in first for i in b) == list(range(10))
    again = EpochBatches(10, 4, seed=3)
    again.set_epoch(1)
    assert list(again) == first
    s.set_epoch(2)
    assert list(s) != first


def test_schedules():
    p = torch.nn.Parameter(torch.zeros(1))
    for name, warmup, lrs in (("constant", 0.0, [1.0] * 4), ("constant", 0.5, [0.0, 0.5, 1.0, 1.0]),
                              ("linear", 0.0, [1.0, 0.75, 0.5, 0.25])):
        opt = torch.optim.AdamW([p], lr=1.0)
        sched = make_scheduler(RunConfig(output_path="x", task_name="rte", scheduler=name, warmup_ratio=warmup), opt, 4)
        seen = []
        for _ in range(4):
            seen.append(sched.get_last_lr()[0])
            opt.step()
            sched.step()
        assert seen == pytest.approx(lrs), name


def test_length_grouped_batches_are_a_seeded_partition_with_little_padding():
    import random as r

    lengths = [r.Random(i).randint(5, 120) for i in range(1000)]
    s = EpochBatches(1000, 8, seed=0, lengths=lengths)
    s.set_epoch(1)
    batches = list(s)
    assert sorted(i for b in batches for i in b) == list(range(1000)) and len(batches) == len(s) == 125
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    plain = EpochBatches(1000, 8, seed=0)
    plain.set_epoch(1)
    padded_plain = sum(max(lengths[i] for i in b) * len(b) for b in plain)
    assert padded < 0.7 * padded_plain  # tokens processed, padding included
    again = EpochBatches(1000, 8, seed=0, lengths=lengths)
    again.set_epoch(1)
    assert list(again) == batches


POLICY_RUNS = {
    "bitfit": {}, "frozen": {}, "full_ft": {},
    "bitfit q+i last layer": {"fine_tune_type": "bitfit", "bias_terms": ["query", "intermediate"], "layers": ["last:1"]},
    "rand_uniform": {"rand_budget": 500}, "rand_row_col": {}, "layers": {"layers": ["auto:1"]},
    "sparse_mask": {"mask_sparsity": 0.2},
}


@pytest.mark.parametrize("case", list(POLICY_RUNS))
def test_every_policy_runs_end_to_end_and_its_delta_rebuilds_the_model(case, tmp_path, tiny_bert_dir):
    """Train, then rebuild the best model from base + delta alone: same dev predictions as the run."""
    from safetensors.torch import load_file

    from bitfit.models import load_model
    from bitfit.tasks import get_task

    kw = {"fine_tune_type": case} | POLICY_RUNS[case]
    data = make_glue_dir(tmp_path / "glue")
    results = run(cfg(tmp_path / "run", tiny_bert_dir, data, epochs=2, **kw))
    assert results["trainable_params"] > 0
    if kw["fine_tune_type"] == "sparse_mask":
        assert 0.15 < results["achieved_sparsity"] <= 0.2
    if kw["fine_tune_type"] == "rand_uniform":
        assert results["trainable_params"] == 500 + 66  # the budget plus the 2-way head
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    if case == "layers":
        assert any("auto" in note for note in config["policy_notes"])

    model, _ = load_model(str(tiny_bert_dir), get_task("rte"))
    apply_tensors(model, load_file(tmp_path / "run" / "delta.safetensors"))
    from bitfit.data import encode, load_glue
    from bitfit.models import load_tokenizer
    from bitfit.data import collator

    tok = load_tokenizer(str(tiny_bert_dir))
    dev = encode(load_glue(get_task("rte"), str(data))["dev"], tok, 128, False)
    batch = collator(tok)([dev[i] for i in range(len(dev))])
    model.eval()
    with torch.no_grad():
        out = model(**batch)
    preds = out.logits.argmax(-1).numpy()
    assert float(out.loss) == pytest.approx(results["best_metrics"]["dev"]["loss"], rel=1e-5)
    from bitfit.metrics import compute_metrics

    assert compute_metrics(("accuracy",), preds, batch["labels"].numpy())["accuracy"] == \
        results["best_metrics"]["dev"]["accuracy"]


def test_dynamic_padding_computes_what_padding_to_max_length_computes(tiny_bert_dir):
    """The speed of per-batch padding is free: the original recipe's padding to a fixed length (128 there, the
    tiny model's 64 here) changes no logit and no bias gradient (padded keys are masked), so only the batch
    order differs between the two recipes."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    from bitfit.data import collator

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, hidden_dropout_prob=0.0,
                                                               attention_probs_dropout_prob=0.0)
    rng = random.Random(0)
    feats = [dict(tok(" ".join(rng.choices(WORDS, k=rng.randint(2, 20)))), labels=i % 2) for i in range(6)]
    dynamic = collator(tok)(feats)
    padded = DataCollatorWithPadding(tok, padding="max_length", max_length=64)(feats)
    assert dynamic["input_ids"].shape[1] <= 22 and padded["input_ids"].shape[1] == 64
    grads = []
    for batch in (dynamic, padded):
        model.zero_grad()
        out = model(**batch)
        out.loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if n.endswith(".bias")})
        if batch is dynamic:
            logits = out.logits.detach()
    assert torch.allclose(out.logits, logits, atol=1e-5)
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6), n
