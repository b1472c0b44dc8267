"""Diff-Pruning (-f diff_prune): the gated search, the projection, the fixed mask, the sparse delta, the command line."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bitfit import delta, policies
from bitfit.__main__ import main
from bitfit.policies import anatomy, diff
from test_cli import make_glue_dir, run_cli
from test_delta import batch, logits
from test_policies import cfg, model


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
    return make_glue_dir(tmp_path_factory.mktemp("glue"))


def steps(m, guard, opt, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    m.train()
    for _ in range(n):
        ids = torch.randint(3, m.config.vocab_size, (4, 8), generator=g)
        labels = torch.randint(0, m.config.num_labels, (4,), generator=g)
        loss = m(input_ids=ids, labels=labels).loss
        penalty = guard.penalty()
        (loss if penalty is None else loss + penalty).backward()
        opt.step()
        opt.zero_grad()
        guard.after_step()


def effective(m) -> dict[str, torch.Tensor]:
    return {n: delta._tensor(m, n).detach().clone() for n in anatomy.plain_params(m)}


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_search_then_projection_then_only_the_kept_differences_train(arch):
    m = model(arch)
    base = effective(m)
    inputs = batch(m)
    before = logits(m, inputs)
    sel = policies.select(m, cfg("diff_prune", diff_sparsity=0.02, diff_search_epochs=1))
    guard = policies.apply(m, sel)
    assert torch.equal(logits(m, inputs), before)  # the difference starts at zero: the pretrained model
    guard.start_epoch(1)
    gates = diff.gates(m)
    assert set(gates) == set(sel.diffed) and sel.diffed
    expected = diff.L0_PENALTY * sum(torch.sigmoid(g.log_alpha).sum() for g in gates.values())
    assert torch.allclose(guard.penalty(), expected)  # log(-l / r) = 0 for (l, r) = (-1.5, 1.5)
    opt = torch.optim.AdamW(guard.param_groups(m), lr=1e-2)
    assert [g["lr"] for g in opt.param_groups] == [1e-2, diff.ALPHA_LR]
    steps(m, guard, opt, 4)
    for name, g in gates.items():  # the pretrained tensors never move; the difference and the gates do
        assert torch.equal(dict(m.named_parameters())[name.rpartition(".")[0] + ".parametrizations."
                                                    + name.rpartition(".")[2] + ".original"], base[name])
        assert (g.diff != 0).any() and (g.log_alpha != diff.ALPHA_INIT).any()

    with torch.no_grad():
        wanted = torch.cat([(g.deterministic() * g.diff).abs().flatten() for g in gates.values()])
    kept = guard.end_epoch(1)
    budget = math.floor(0.02 * sum(g.diff.numel() for g in gates.values()))
    assert kept == budget == policies.trainable_counts(m, sel)["trained_encoder"]
    threshold = torch.topk(wanted, budget).values.min()
    after = effective(m)
    moved = 0
    for name, g in gates.items():
        keep = g.log_alpha > 0
        assert torch.equal(after[name][~keep], base[name][~keep])  # outside the mask: exactly the pretrained entries
        moved += int(keep.sum())
    assert moved == budget and threshold > 0

    guard.start_epoch(2)
    assert guard.penalty() is None and guard.eligible(2) and not guard.eligible(1)
    steps(m, guard, opt, 4, seed=1)
    final = effective(m)
    changed = 0
    for name, g in gates.items():
        keep = g.log_alpha > 0
        assert torch.equal(final[name][~keep], base[name][~keep]), name
        changed += int((final[name][keep] != after[name][keep]).sum())
    assert changed > 0.9 * budget

    # the delta: the kept entries only, as indices + values; applied to a fresh model it is the trained one
    tensors = delta.encode(m, sel)
    assert sum(t.numel() for k, t in tensors.items() if k.endswith("::indices")) == budget
    assert not any(k in tensors for k in sel.diffed)  # never a whole tensor
    fresh = model(arch)
    delta.apply_tensors(fresh, tensors, policy="diff_prune")
    m.eval()
    assert torch.equal(logits(fresh, inputs), logits(m, inputs))


def test_runs_write_a_sparse_delta_that_predicts_and_merges_as_the_run(tmp_path, glue_dir, tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "run"
    assert run_cli("-t", "rte", "-f", "diff_prune", "--diff-sparsity", "0.01", "-m", tiny_bert_dir, "-o", out,
                   "--data-dir", glue_dir, "-e", 3, "-l", "1e-2", "--predict-test", "--no-verbose") == 0
    res = json.loads((out / "results.json").read_text())
    assert res["best_epoch"] in (2, 3)  # never the dense search epoch
    conf = json.loads((out / "config.json").read_text())["config"]
    assert conf["diff_search_epochs"] == 1 and conf["diff_sparsity"] == 0.01
    d = delta.read(out)
    kept = {k.partition("::")[0]: t.numel() for k, t in d.tensors.items() if k.endswith("::indices")}
    assert sum(kept.values()) == res["trainable_params_encoder"] and 0 < sum(kept.values()) <= 0.01 * res["total_params"]
    assert res["trainable_params_in_layers"] == sum(n for k, n in kept.items() if ".layer." in k)  # counted as kept
    assert main(["predict", "--delta", str(out), "--input", str(glue_dir / "RTE" / "test.tsv"), "-o",
                 str(tmp_path / "p.tsv"), "--no-verbose"]) == 0
    assert (tmp_path / "p.tsv").read_text() == (out / "RTE.tsv").read_text()
    assert main(["merge", str(out), "-o", str(tmp_path / "merged"), "--no-verbose"]) == 0
    applied, _ = delta.load(d)
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    inputs = batch(applied)
    assert torch.allclose(logits(applied, inputs), logits(merged, inputs), rtol=0, atol=1e-5)


@pytest.mark.cluster  # minutes on a CPU: with the other multi-process emulations (python -m pytest -m cluster)
def test_two_gloo_processes_search_project_and_write_one_sparse_delta(tmp_path, glue_dir, tiny_bert_dir):
    """Under DDP every process draws its own gates (seed + rank), so two processes do not equal one; what must
    hold: the run completes past the projection (the fixed gates keep a zero gradient for DDP), the delta is
    the budget's kept entries, and it predicts what the run wrote."""
    import os
    import subprocess

    from conftest import REPO, accelerate_launch

    out = tmp_path / "two"
    proc = subprocess.run([*accelerate_launch(2), str(REPO / "run_glue.py"), "-t", "rte", "-f", "diff_prune",
                           "--diff-sparsity", "0.02", "-m", str(tiny_bert_dir), "--data-dir", str(glue_dir), "-e", "2",
                           "-b", "4", "--predict-test", "--no-verbose", "-o", str(out)],
                          capture_output=True, text=True, timeout=300, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "config.json").read_text())["num_processes"] == 2
    res = json.loads((out / "results.json").read_text())
    d = delta.read(out)
    kept = sum(t.numel() for k, t in d.tensors.items() if k.endswith("::indices"))
    head = sum(t.numel() for k, t in d.tensors.items() if k.startswith("classifier."))
    assert kept == res["trainable_params_encoder"] == math.floor(0.02 * (res["total_params"] - head) + 1e-9)
    assert main(["predict", "--delta", str(out), "--input", str(glue_dir / "RTE" / "test.tsv"), "-o",
                 str(tmp_path / "p.tsv"), "--no-verbose"]) == 0
    assert (tmp_path / "p.tsv").read_text() == (out / "RTE.tsv").read_text()
