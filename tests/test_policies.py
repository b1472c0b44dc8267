"""Policies: the exact names each one picks, and that training moves exactly those (and nothing else)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from bitfit import delta
from bitfit import policies as P
from bitfit.config import LayerSpec, RunConfig, parse_layers
from bitfit.delta import apply_tensors, encode
from bitfit.methods import BIAS_ROLES, check_bias_terms
from bitfit.policies import anatomy, sparse
from bitfit.policies.random import sample_without_replacement
from bitfit.errors import UserError
from conftest import tiny_classifier


def cfg(fine_tune_type="bitfit", **kw):
    base = dict(fine_tune_type=fine_tune_type, bias_terms=None, layers=None, rand_budget=None, mask_sparsity=0.01, seed=0)
    base.update(kw)
    base["layer_spec"] = None if base["layers"] is None else parse_layers(base["layers"])  # as RunConfig parses it
    return SimpleNamespace(**base)


def model(arch="bert", seed=0):
    """Tiny classifier with every parameter random (BERT's init leaves biases at zero, where weight decay is a no-op)."""
    m = tiny_classifier(arch, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return m


def snapshot(m) -> dict[str, torch.Tensor]:
    """Every parameter as loaded, by its plain name (a masked weight by its frozen pretrained value)."""
    return {name: p.detach().clone() for name, p in anatomy.plain_params(m).items()}


def effective(m) -> dict[str, torch.Tensor]:
    """Every parameter as the forward pass sees it (a masked weight as W * mask)."""
    return {n: delta._tensor(m, n).detach().clone() for n in snapshot(m)}


def train(m, sel, steps=3, opt_cls=torch.optim.AdamW, seed=0):
    guard = P.apply(m, sel)
    opt = opt_cls([p for p in m.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    g = torch.Generator().manual_seed(seed)
    vocab = m.config.vocab_size
    for _ in range(steps):
        ids = torch.randint(3, vocab, (4, 8), generator=g)
        labels = torch.randint(0, m.config.num_labels, (4,), generator=g)
        m(input_ids=ids, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
        guard.after_step()
    return guard


def names(arch, **kw):
    return set(P.select(model(arch), cfg(**kw)).trainable)


def layer(arch, i, *suffixes):
    return {f"{arch}.encoder.layer.{i}.{s}" for s in suffixes}


BERT_HEAD = {"classifier.weight", "classifier.bias"}
ROBERTA_HEAD = {"classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight", "classifier.out_proj.bias"}

# ----------------------------------------------------------------------------------------------
# The exact names


def test_bitfit_all_bert():
    assert names("bert") == {
        "bert.embeddings.LayerNorm.bias",
        "bert.encoder.layer.0.attention.self.query.bias",
        "bert.encoder.layer.0.attention.self.key.bias",
        "bert.encoder.layer.0.attention.self.value.bias",
        "bert.encoder.layer.0.attention.output.dense.bias",
        "bert.encoder.layer.0.attention.output.LayerNorm.bias",
        "bert.encoder.layer.0.intermediate.dense.bias",
        "bert.encoder.layer.0.output.dense.bias",
        "bert.encoder.layer.0.output.LayerNorm.bias",
        "bert.encoder.layer.1.attention.self.query.bias",
        "bert.encoder.layer.1.attention.self.key.bias",
        "bert.encoder.layer.1.attention.self.value.bias",
        "bert.encoder.layer.1.attention.output.dense.bias",
        "bert.encoder.layer.1.attention.output.LayerNorm.bias",
        "bert.encoder.layer.1.intermediate.dense.bias",
        "bert.encoder.layer.1.output.dense.bias",
        "bert.encoder.layer.1.output.LayerNorm.bias",
        "bert.pooler.dense.bias",
        "classifier.weight",
        "classifier.bias",
    }
    assert names("bert", bias_terms=["all"]) == names("bert")


def test_bitfit_all_roberta():
    assert names("roberta") == {
        "roberta.embeddings.LayerNorm.bias",
        "roberta.encoder.layer.0.attention.self.query.bias",
        "roberta.encoder.layer.0.attention.self.key.bias",
        "roberta.encoder.layer.0.attention.self.value.bias",
        "roberta.encoder.layer.0.attention.output.dense.bias",
        "roberta.encoder.layer.0.attention.output.LayerNorm.bias",
        "roberta.encoder.layer.0.intermediate.dense.bias",
        "roberta.encoder.layer.0.output.dense.bias",
        "roberta.encoder.layer.0.output.LayerNorm.bias",
        "roberta.encoder.layer.1.attention.self.query.bias",
        "roberta.encoder.layer.1.attention.self.key.bias",
        "roberta.encoder.layer.1.attention.self.value.bias",
        "roberta.encoder.layer.1.attention.output.dense.bias",
        "roberta.encoder.layer.1.attention.output.LayerNorm.bias",
        "roberta.encoder.layer.1.intermediate.dense.bias",
        "roberta.encoder.layer.1.output.dense.bias",
        "roberta.encoder.layer.1.output.LayerNorm.bias",
        "classifier.dense.weight",
        "classifier.dense.bias",
        "classifier.out_proj.weight",
        "classifier.out_proj.bias",
    }


def test_bitfit_query_intermediate():
    assert names("bert", bias_terms=["query", "intermediate"]) == {
        "bert.encoder.layer.0.attention.self.query.bias",
        "bert.encoder.layer.0.intermediate.dense.bias",
        "bert.encoder.layer.1.attention.self.query.bias",
        "bert.encoder.layer.1.intermediate.dense.bias",
        "bert.pooler.dense.bias",
        "classifier.weight",
        "classifier.bias",
    }
    assert names("roberta", bias_terms=["query", "intermediate"]) == {
        "roberta.encoder.layer.0.attention.self.query.bias",
        "roberta.encoder.layer.0.intermediate.dense.bias",
        "roberta.encoder.layer.1.attention.self.query.bias",
        "roberta.encoder.layer.1.intermediate.dense.bias",
    } | ROBERTA_HEAD


def test_bitfit_output_is_the_block_output_only():
    chosen = names("bert", bias_terms=["output"])
    assert chosen == {
        "bert.encoder.layer.0.output.dense.bias",
        "bert.encoder.layer.1.output.dense.bias",
        "bert.pooler.dense.bias",
    } | BERT_HEAD
    assert "bert.encoder.layer.0.attention.output.dense.bias" not in chosen  # the original code's substring bug
    assert names("roberta", bias_terms=["attention_output"]) == {
        "roberta.encoder.layer.0.attention.output.dense.bias",
        "roberta.encoder.layer.1.attention.output.dense.bias",
    } | ROBERTA_HEAD


def test_bitfit_output_layernorm_is_not_the_attention_layernorm():
    chosen = names("roberta", bias_terms=["output_layernorm"])
    assert chosen == {
        "roberta.encoder.layer.0.output.LayerNorm.bias",
        "roberta.encoder.layer.1.output.LayerNorm.bias",
    } | ROBERTA_HEAD
    assert "roberta.encoder.layer.0.attention.output.LayerNorm.bias" not in chosen
    assert names("bert", bias_terms=["attention_layernorm", "embeddings_layernorm"]) == {
        "bert.embeddings.LayerNorm.bias",
        "bert.encoder.layer.0.attention.output.LayerNorm.bias",
        "bert.encoder.layer.1.attention.output.LayerNorm.bias",
        "bert.pooler.dense.bias",
    } | BERT_HEAD


def test_bitfit_with_layers():
    assert names("bert", bias_terms=["key", "value"], layers=["1"]) == {
        "bert.encoder.layer.1.attention.self.key.bias",
        "bert.encoder.layer.1.attention.self.value.bias",
        "bert.pooler.dense.bias",
    } | BERT_HEAD


def test_frozen_and_full_ft():
    assert names("bert", fine_tune_type="frozen") == {"classifier.weight", "classifier.bias"}
    assert names("roberta", fine_tune_type="frozen") == {
        "classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight", "classifier.out_proj.bias"}
    assert names("roberta", fine_tune_type="full_ft") == {n for n, _ in model("roberta").named_parameters()}


def test_layers_policy():
    expected = {
        "bert.encoder.layer.1.attention.self.query.weight",
        "bert.encoder.layer.1.attention.self.query.bias",
        "bert.encoder.layer.1.attention.self.key.weight",
        "bert.encoder.layer.1.attention.self.key.bias",
        "bert.encoder.layer.1.attention.self.value.weight",
        "bert.encoder.layer.1.attention.self.value.bias",
        "bert.encoder.layer.1.attention.output.dense.weight",
        "bert.encoder.layer.1.attention.output.dense.bias",
        "bert.encoder.layer.1.attention.output.LayerNorm.weight",
        "bert.encoder.layer.1.attention.output.LayerNorm.bias",
        "bert.encoder.layer.1.intermediate.dense.weight",
        "bert.encoder.layer.1.intermediate.dense.bias",
        "bert.encoder.layer.1.output.dense.weight",
        "bert.encoder.layer.1.output.dense.bias",
        "bert.encoder.layer.1.output.LayerNorm.weight",
        "bert.encoder.layer.1.output.LayerNorm.bias",
        "classifier.weight",
        "classifier.bias",
    }
    assert names("bert", fine_tune_type="layers", layers=["1"]) == expected
    assert names("bert", fine_tune_type="layers", layers=["last:1"]) == expected
    assert names("bert", fine_tune_type="full_ft", layers=["1"]) == expected
    assert names("bert", fine_tune_type="layers", layers=["0", "1"]) == (
        {n for n, _ in model().named_parameters() if ".layer." in n} | BERT_HEAD)
    with pytest.raises(UserError, match="needs --layers"):  # refused with the settings, before any model loads
        RunConfig(output_path="unused", task_name="rte", fine_tune_type="layers")


def test_sparse_mask_chooses_linear_weights():
    sel = P.select(model(), cfg("sparse_mask", layers=["0"]))
    assert set(sel.trainable) == BERT_HEAD
    assert set(sel.masked) == layer("bert", 0, "attention.self.query.weight", "attention.self.key.weight",
                                    "attention.self.value.weight", "attention.output.dense.weight",
                                    "intermediate.dense.weight", "output.dense.weight")


def tiny_any(model_type, **kw):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    if model_type == "distilbert":
        config = AutoConfig.for_model("distilbert", vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=37,
                                      max_position_embeddings=64, **kw)
    else:
        config = AutoConfig.for_model(model_type, vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=4, intermediate_size=37, max_position_embeddings=64, **kw)
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config)


@pytest.mark.parametrize("model_type,kw", [
    ("bert", {}), ("roberta", {"pad_token_id": 1}), ("xlm-roberta", {"pad_token_id": 1}), ("electra", {"embedding_size": 16}),
    ("deberta-v2", {}),
    ("deberta-v2", dict(relative_attention=True, pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm",
                        position_buckets=16, position_biased_input=False, share_att_key=True)),  # DeBERTa-v3's settings
    ("distilbert", {}),
])
def test_role_mapping_covers_every_block_bias_once(model_type, kw):
    m = tiny_any(model_type, **kw)
    enc = anatomy.encoder_params(m)
    block_biases = {n for n in enc if n.endswith(".bias") and anatomy.layer_of(anatomy.rel_name(m, n)) is not None}
    seen = []
    for role in list(BIAS_ROLES)[:-1]:
        chosen = set(P.select(m, cfg(bias_terms=[role])).trainable) - set(P.head_names(m))
        chosen = {n for n in chosen if not anatomy.POOLER_BIAS.fullmatch(anatomy.rel_name(m, n))}
        if role == "embeddings_layernorm":
            assert len(chosen) == 1 and anatomy.layer_of(anatomy.rel_name(m, next(iter(chosen)))) is None
        else:
            assert len(chosen) == 2 and {anatomy.layer_of(anatomy.rel_name(m, n)) for n in chosen} == {0, 1}, (role, chosen)
            seen += chosen
    assert sorted(seen) == sorted(block_biases)  # every block bias has exactly one role


def test_unsupported_architecture():
    m = tiny_any("mpnet")
    with pytest.raises(UserError, match=r"no role mapping for model type 'mpnet'.*bert, roberta.*deberta-v2.*distilbert"):
        P.select(m, cfg(bias_terms=["query"]))
    # without --bias-terms (or with 'all') BitFit needs no mapping: every bias, plus the head
    expected = {n for n, _ in m.named_parameters() if n.endswith(".bias") or not n.startswith("mpnet.")}
    assert set(P.select(m, cfg()).trainable) == expected
    assert set(P.select(m, cfg(bias_terms=["all"])).trainable) == expected


def test_unknown_bias_term():
    with pytest.raises(UserError, match=r"unknown bias term 'outputs'; accepted: query, key, value"):
        check_bias_terms(["query", "outputs"])
    assert check_bias_terms(["query", "all"]) == ["query", "all"]
    with pytest.raises(UserError, match="unknown bias term"):
        P.select(model(), cfg(bias_terms=["bias"]))
    with pytest.raises(UserError, match="unknown bias term 'bogus'"):
        P.select(model(), cfg(bias_terms=["all", "bogus"]))
    with pytest.raises(UserError, match="selects no parameter"):
        P.select(model(), cfg(bias_terms=["embeddings_layernorm"], layers=["0"]))


def test_select_is_pure():
    m = model()
    before = snapshot(m)
    grads = {n: p.requires_grad for n, p in m.named_parameters()}
    for policy in P.SELECTORS:
        P.select(m, cfg(policy, layers=["1"]))
    assert {n: p.requires_grad for n, p in m.named_parameters()} == grads
    assert all(torch.equal(before[n], t) for n, t in snapshot(m).items())


def test_works_with_run_config():
    c = RunConfig(output_path="unused", task_name="rte", fine_tune_type="bitfit", bias_terms=["query"], layers=["last:1"])
    assert names("bert", bias_terms=c.bias_terms, layers=c.layers) == {
        "bert.encoder.layer.1.attention.self.query.bias", "bert.pooler.dense.bias"} | BERT_HEAD


# ----------------------------------------------------------------------------------------------
# Training moves exactly what was chosen

STEP_CASES = [
    ("full_ft", {}), ("frozen", {}), ("bitfit", {}), ("bitfit", {"bias_terms": ["query", "intermediate"], "layers": ["1"]}),
    ("layers", {"layers": ["last:1"]}), ("rand_uniform", {}), ("rand_uniform", {"rand_budget": 3000}),
    ("rand_row_col", {}), ("sparse_mask", {"mask_sparsity": 0.2}),
    ("lora", {"lora_bias": "all"}), ("lora", {"layers": ["1"], "lora_targets": ["key", "output"]}), ("ia3", {}),
    ("adapters", {"adapter_size": 4}), ("diff_prune", {"diff_sparsity": 0.05}),
]


@pytest.mark.parametrize("arch", ["bert", "roberta"])
@pytest.mark.parametrize("policy,kw", STEP_CASES)
def test_only_selected_entries_move(arch, policy, kw):
    m = model(arch)
    sel = P.select(m, cfg(policy, **kw))
    before = snapshot(m)
    train(m, sel)
    after = snapshot(m)
    assert after.keys() == before.keys()
    for name in before:
        mask = sel.trainable.get(name)
        if name not in sel.trainable:
            assert torch.equal(after[name], before[name]), f"{name} is frozen but moved"
        elif mask is None:
            assert (after[name] != before[name]).all(), f"{name} is trainable but did not move"
        else:
            assert torch.equal(after[name][~mask], before[name][~mask]), f"masked-out entries of {name} moved"
            assert (after[name][mask] != before[name][mask]).all(), f"trainable entries of {name} did not move"
    if policy == "sparse_mask":  # the scores learned; the pretrained weights (checked above) did not
        scores = [p for n, p in m.named_parameters() if n.endswith(".scores")]
        assert len(scores) == len(sel.masked) and all((s != sparse.SCORE_INIT).all() for s in scores)


def test_masked_entries_stay_put_under_adam_l2():
    """torch.optim.Adam adds weight decay to the gradient, after the gradient mask: after_step undoes it."""
    m = model()
    sel = P.select(m, cfg("rand_uniform"))
    before = snapshot(m)
    train(m, sel, opt_cls=torch.optim.Adam)
    after = snapshot(m)
    for name, mask in sel.trainable.items():
        if mask is not None:
            assert torch.equal(after[name][~mask], before[name][~mask])


# ----------------------------------------------------------------------------------------------
# Random budgets


def entries(sel, m, head=False) -> int:
    sizes = dict(m.named_parameters())
    skip = set() if head else set(P.head_names(m))
    return sum(sizes[n].numel() if k is None else int(k.sum()) for n, k in sel.trainable.items() if n not in skip)


def flat_mask(sel, m) -> torch.Tensor:
    """One bool per entry of the model: does it train?"""
    parts = []
    for name, p in m.named_parameters():
        mask = sel.trainable.get(name, torch.zeros(p.shape, dtype=torch.bool))
        parts.append(torch.ones(p.numel(), dtype=torch.bool) if mask is None else mask.flatten())
    return torch.cat(parts)


def test_rand_uniform_budget_and_seed():
    m = model()
    bitfit = P.select(m, cfg("bitfit"))
    k = entries(bitfit, m)
    assert k == sum(p.numel() for n, p in m.named_parameters() if n.startswith("bert.") and n.endswith(".bias"))
    a = P.select(m, cfg("rand_uniform", seed=1))
    assert entries(a, m) == k and set(P.head_names(m)) <= set(a.trainable)
    b = P.select(m, cfg("rand_uniform", seed=1))
    c = P.select(m, cfg("rand_uniform", seed=2))
    assert a.trainable.keys() == b.trainable.keys()
    assert all(x is None and y is None or torch.equal(x, y) for x, y in zip(a.trainable.values(), b.trainable.values()))
    assert not torch.equal(flat_mask(a, m), flat_mask(c, m))
    assert entries(P.select(m, cfg("rand_uniform", rand_budget=123)), m) == 123
    assert entries(P.select(m, cfg("rand_uniform", layers=["0"])), m) == entries(P.select(m, cfg("bitfit", layers=["0"])), m) - 32
    with pytest.raises(UserError, match="random budget"):
        P.select(m, cfg("rand_uniform", rand_budget=10**9))


def test_sampling_without_replacement_large_pool():
    g = torch.Generator().manual_seed(0)
    picked = sample_without_replacement(100_000_000, 50_000, g)
    assert picked.numel() == 50_000 and torch.unique(picked).numel() == 50_000
    assert int(picked.min()) >= 0 and int(picked.max()) < 100_000_000
    assert torch.equal(picked, sample_without_replacement(100_000_000, 50_000, torch.Generator().manual_seed(0)))
    # roughly uniform: each tenth of the range gets about a tenth of the picks
    counts = torch.bincount(picked // 10_000_000, minlength=10)
    assert (counts - 5000).abs().max() < 400


def test_rand_row_col_one_line_per_matrix():
    m = model()
    sel = P.select(m, cfg("rand_row_col", seed=3))
    params = dict(m.named_parameters())
    for name in anatomy.linear_weights(m):
        mask = sel.trainable[name]
        rows, cols = params[name].shape
        full_rows = mask.all(dim=1).sum().item()
        full_cols = mask.all(dim=0).sum().item()
        assert (full_rows, int(mask.sum())) == (1, cols) or (full_cols, int(mask.sum())) == (1, rows)
    assert set(sel.trainable) == set(anatomy.linear_weights(m)) | BERT_HEAD


# ----------------------------------------------------------------------------------------------
# The paper's figures


def test_bert_base_percentages():
    from transformers import AutoModelForSequenceClassification, BertConfig

    torch.manual_seed(0)
    m = AutoModelForSequenceClassification.from_config(BertConfig(vocab_size=28996, num_labels=2))
    full = P.trainable_counts(m, P.select(m, cfg("bitfit")))
    qi = P.trainable_counts(m, P.select(m, cfg("bitfit", bias_terms=["query", "intermediate"])))
    assert full["total"] == 108_311_810
    # the paper counts the bias terms inside the 12 layers, over every parameter of the model
    assert full["trained_in_layers"] == 12 * (7 * 768 + 3072) == 101_376
    assert qi["trained_in_layers"] == 12 * (768 + 3072) == 46_080
    assert round(100 * full["trained_in_layers"] / full["total"], 2) == 0.09
    assert round(100 * qi["trained_in_layers"] / qi["total"], 2) == 0.04
    # ... which is not what the run trains in all: + embeddings LayerNorm, pooler bias and head
    assert full["trained"] == 101_376 + 768 + 768 + 2 * 768 + 2
    table = P.trainable_table(m, P.select(m, cfg("bitfit")))
    assert "query bias · layers 0-11" in table and "0.0936%" in table


# ----------------------------------------------------------------------------------------------
# Deltas


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32) if t.dtype == torch.float32 else t


@pytest.mark.parametrize("arch", ["bert", "roberta"])
@pytest.mark.parametrize("policy,kw", [("bitfit", {}), ("rand_uniform", {}), ("rand_row_col", {}),
                                       ("layers", {"layers": ["0"]}), ("sparse_mask", {"mask_sparsity": 0.2})])
def test_delta_round_trip_is_exact(tmp_path, arch, policy, kw):
    m = model(arch)
    sel = P.select(m, cfg(policy, **kw))
    train(m, sel, steps=5)
    if policy == "sparse_mask":
        assert sparse.achieved_sparsity(m) > 0.1
    save_file(encode(m, sel), tmp_path / "delta.safetensors")
    tensors = load_file(tmp_path / "delta.safetensors")

    fresh = model(arch)
    apply_tensors(fresh, tensors)
    trained, loaded = effective(m), dict(fresh.named_parameters())
    assert trained.keys() == loaded.keys()
    for name in trained:
        assert torch.equal(bits(trained[name]), bits(loaded[name].detach())), name
    m.eval(), fresh.eval()
    ids = torch.randint(3, m.config.vocab_size, (2, 6))
    with torch.no_grad():
        assert torch.equal(m(input_ids=ids).logits, fresh(input_ids=ids).logits)


def test_delta_names():
    m = model()
    sel = P.select(m, cfg("rand_uniform", rand_budget=10))
    P.apply(m, sel)
    keys = set(encode(m, sel))
    assert {"classifier.weight", "classifier.bias"} <= keys
    partial = [n for n, k in sel.trainable.items() if k is not None]
    assert keys == BERT_HEAD | {f"{n}::{s}" for n in partial for s in ("indices", "values")}
    with pytest.raises(UserError, match="does not fit this model"):
        apply_tensors(model(), {"bert.nope.bias": torch.zeros(3)})
    with pytest.raises(UserError, match="has shape"):
        apply_tensors(model(), {"classifier.bias": torch.zeros(3)})


# ----------------------------------------------------------------------------------------------
# sparse_mask


def test_sparse_mask_starts_as_the_pretrained_model():
    m = model()
    ids = torch.randint(3, 100, (2, 6))
    m.eval()
    with torch.no_grad():
        expected = m(input_ids=ids).logits
    sel = P.select(m, cfg("sparse_mask", mask_sparsity=0.3))
    P.apply(m, sel)
    assert sparse.achieved_sparsity(m) == 0.0
    with torch.no_grad():
        assert torch.equal(m(input_ids=ids).logits, expected)
    assert all(not p.requires_grad for n, p in m.named_parameters() if n.endswith(".original"))


def test_sparse_mask_hits_the_target_per_matrix():
    m = model()
    sel = P.select(m, cfg("sparse_mask", mask_sparsity=0.3))
    P.apply(m, sel)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith(".scores"):
                p.copy_(torch.randn(p.shape))
    for name, keep in sparse.masks(m).items():
        assert int((~keep).sum()) == int(0.3 * keep.numel()), name
        w = delta._tensor(m, name)
        assert (w[~keep] == 0).all() and torch.equal(w[keep], snapshot(m)[name][keep])
    assert abs(sparse.achieved_sparsity(m) - 0.3) < 0.01
    before = effective(m)
    sparse.bake(m)
    assert not any(".parametrizations." in n for n, _ in m.named_parameters())
    assert all(torch.equal(before[n], p) for n, p in m.named_parameters())


def test_pack_bits_matches_numpy():
    mask = torch.rand(7, 13, generator=torch.Generator().manual_seed(0)) > 0.5
    packed = sparse.pack_bits(mask)
    assert packed.dtype == torch.uint8
    assert np.array_equal(packed.numpy(), np.packbits(mask.numpy().ravel()))
    assert torch.equal(sparse.unpack_bits(packed, (7, 13)), mask)


# ----------------------------------------------------------------------------------------------
# --layers


def test_parse_layers_good():
    assert parse_layers(["9", "10", "11"]) == LayerSpec(indices=(9, 10, 11))
    assert parse_layers(["11,9"]).resolve(12) == LayerSpec(indices=(9, 11))
    assert parse_layers("10 11").resolve(12) == LayerSpec(indices=(10, 11))
    assert parse_layers(["last:3"]) == LayerSpec(last=3)
    assert parse_layers(["last:3"]).resolve(12) == LayerSpec(indices=(9, 10, 11))
    assert parse_layers(["auto:2"]).resolve(12) == LayerSpec(auto=2)


@pytest.mark.parametrize("spec,depth,message", [
    ([], None, "empty layers value"), (["x"], None, "bad layers value 'x'"), (["-1"], None, "bad layers value '-1'"),
    (["last:0"], None, "bad layers value"), (["last:2", "3"], None, "bad layers value"), (["first:2"], None, "bad layers value"),
    (["12"], 12, "layer 12 is out of range; accepted: 0 to 11"), (["auto:13"], 12, "more layers than the model has"),
])
def test_parse_layers_bad(spec, depth, message):
    with pytest.raises(UserError, match=message):
        spec = parse_layers(spec)
        if depth is not None:
            spec.resolve(depth)


def test_layers_out_of_range_for_the_model():
    with pytest.raises(UserError, match="layer 2 is out of range; accepted: 0 to 1"):
        P.select(model(), cfg("layers", layers=["2"]))


def test_layers_auto_picks_the_layers_that_moved_most():
    m = model()
    before = snapshot(m)

    def probe(copy):  # stands in for a short full fine-tuning run: layer 1 moves much more than layer 0
        with torch.no_grad():
            for n, p in copy.named_parameters():
                p.mul_(1.5 if ".layer.1." in n else 1.01)

    sel = P.select(m, cfg("layers", layers=["auto:1"]), probe=probe)
    assert set(sel.trainable) == {n for n in before if ".layer.1." in n} | BERT_HEAD
    assert any("picked 1" in note for note in sel.notes)
    assert all(torch.equal(before[n], t) for n, t in snapshot(m).items())  # the probe ran on a copy
    with pytest.raises(UserError, match="needs a probe run"):
        P.select(m, cfg("layers", layers=["auto:1"]))


def test_trainable_table():
    m = model()
    table = P.trainable_table(m, P.select(m, cfg("bitfit", bias_terms=["query"])))
    assert "query bias · layers 0-1" in table and "head" in table and "model total" in table
    assert "key bias" not in table


def test_counts_are_the_same_before_and_after_apply():
    """After apply, sparse_mask's parametrizations rename the weights and add scores: counts must not change."""
    for policy in ("sparse_mask", "rand_uniform", "bitfit"):
        m = model()
        sel = P.select(m, cfg(policy))
        before, table = P.trainable_counts(m, sel), P.trainable_table(m, sel)
        P.apply(m, sel)
        assert P.trainable_counts(m, sel) == before and P.trainable_table(m, sel) == table
        assert before["total"] == sum(p.numel() for p in model().parameters())
