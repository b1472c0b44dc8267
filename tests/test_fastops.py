"""bitfit/fastops.py: the CPU dropout and attention compute what PyTorch's do, with the same dropout law."""

import copy

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification

from bitfit import fastops


def test_keep_mask_rate_rounding_and_seed():
    torch.manual_seed(0)
    m = fastops.keep_mask((400, 1000), 0.1)
    assert m.dtype == torch.bool and m.shape == (400, 1000)
    # 400k Bernoulli(0.9) draws: the mean is within 5 standard deviations (0.0024) of 0.9
    assert abs(m.float().mean().item() - 0.9) < 0.0024
    assert abs(fastops.keep_mask((400, 1000), 0.5).float().mean().item() - 0.5) < 0.004
    assert fastops.keep_mask((3, 7), 1e-9).all()  # rounds to p = 0: keeps everything
    torch.manual_seed(1)
    a = fastops.keep_mask((5, 13), 0.3)  # odd sizes: the last 64-bit draw is only partly used
    torch.manual_seed(1)
    assert torch.equal(a, fastops.keep_mask((5, 13), 0.3))
    assert not torch.equal(a, fastops.keep_mask((5, 13), 0.3))
    # the four 16-bit lanes of one draw are independent of each other: each lane has the same rate
    lanes = fastops.keep_mask((100000, 4), 0.25).float().mean(0)
    assert torch.all((lanes - 0.75).abs() < 0.007), lanes


def test_fast_dropout_forward_backward():
    torch.manual_seed(0)
    x = torch.randn(64, 300, requires_grad=True)
    d = fastops.FastDropout(0.2).train()
    y = d(x)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.8)
    assert abs(kept.float().mean().item() - 0.8) < 0.01
    y.sum().backward()
    assert torch.equal(x.grad, kept.float() / 0.8)
    # evaluation, other dtypes and no-grad mode are PyTorch's own dropout
    assert torch.equal(d.eval()(x), x)
    d.train()
    torch.manual_seed(3)
    ref = nn.functional.dropout(x.double(), 0.2, True)
    torch.manual_seed(3)
    assert torch.equal(d(x.double()), ref)


def _reference_attention(q, k, v, mask, scale, keep, p):
    s = q @ k.transpose(-1, -2) * scale
    s = s.masked_fill(~mask, torch.finfo(s.dtype).min)
    return (torch.softmax(s, -1) * keep / (1 - p)) @ v


def test_attention_matches_reference_with_the_same_mask():
    torch.manual_seed(0)
    b, h, length, d, p = 3, 4, 11, 8, 0.3
    q, k, v = (torch.randn(b, h, length, d, requires_grad=True) for _ in range(3))
    mask = torch.ones(b, 1, length, length, dtype=torch.bool)
    mask[0, ..., 7:] = False  # padding of the keys, as transformers' sdpa masks
    mask[2, ..., 2:] = False
    torch.manual_seed(5)
    out = fastops._Attention.apply(q, k, v, mask, d**-0.5, p)
    torch.manual_seed(5)
    keep = fastops.keep_mask((b, h, length, length), p)  # the same draw
    assert not keep.all()
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    ref = _reference_attention(q, k, v, mask, d**-0.5, keep, p)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    assert torch.allclose(out, ref, atol=1e-6)
    for a, r in zip(grads, ref_grads):
        assert torch.allclose(a, r, atol=1e-5)


def test_attention_gradient_is_exact_without_dropout():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 5, 3, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    mask[1, ..., 3:] = False
    # p rounds to 0, so every call keeps everything and gradcheck's repeated forwards agree
    assert torch.autograd.gradcheck(lambda q, k, v: fastops._Attention.apply(q, k, v, mask, 0.7, 1e-9), (q, k, v))


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_installed_model_computes_what_pytorch_computes(arch):
    torch.manual_seed(0)
    kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=99,
              attention_probs_dropout_prob=1e-9, hidden_dropout_prob=1e-9)  # dropout on, but keeping everything
    model = (BertForSequenceClassification(BertConfig(**kw)) if arch == "bert" else
             RobertaForSequenceClassification(RobertaConfig(**kw, pad_token_id=1)))
    fast = copy.deepcopy(model)
    assert fastops.install(fast) == {"dropout": 1 + 3 * 2 + 1, "attention": True}  # embeddings, 3 per layer, head
    calls = []
    forward = fastops._Attention.forward
    fastops._Attention.forward = staticmethod(lambda ctx, *a: calls.append(1) or forward(ctx, *a))
    try:
        ids = torch.randint(3, 99, (3, 9))
        am = torch.ones(3, 9, dtype=torch.long)
        am[0, 5:] = 0
        am[2, 2:] = 0
        labels = torch.tensor([0, 1, 1])
        for m in (model, fast):
            m.train()
            m(input_ids=ids, attention_mask=am, labels=labels).loss.backward()
        assert len(calls) == 2  # our attention ran in both layers
        for (n, a), b in zip(model.named_parameters(), fast.parameters()):
            assert torch.allclose(a.grad, b.grad, atol=1e-6), n
        calls.clear()
        model.eval(), fast.eval()  # evaluation: PyTorch's fused attention, bit-identical
        with torch.inference_mode():
            assert torch.equal(model(input_ids=ids, attention_mask=am).logits, fast(input_ids=ids, attention_mask=am).logits)
        assert calls == []
    finally:
        fastops._Attention.forward = forward


def test_causal_attention_is_left_to_pytorch():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = nn.Module()
    module.is_causal, module.training = True, True
    q, k, v = (torch.randn(2, 2, 5, 4, requires_grad=True) for _ in range(3))
    torch.manual_seed(0)
    ours, _ = fastops.attention(module, q, k, v, None, dropout=0.1, scaling=0.5)
    torch.manual_seed(0)
    ref, _ = sdpa_attention_forward(module, q, k, v, None, dropout=0.1, scaling=0.5)
    assert torch.equal(ours, ref)  # the same kernel and the same random stream: a decoder keeps its causal mask


def test_distilbert_uses_the_fast_attention_and_deberta_keeps_its_own():
    from transformers import (DebertaV2Config, DebertaV2ForSequenceClassification, DistilBertConfig,
                              DistilBertForSequenceClassification)

    torch.manual_seed(0)
    distil = DistilBertForSequenceClassification(DistilBertConfig(
        dim=32, n_layers=2, n_heads=4, hidden_dim=64, vocab_size=99, dropout=1e-9, attention_dropout=1e-9,
        seq_classif_dropout=1e-9))
    fast = copy.deepcopy(distil)
    assert fastops.install(fast)["attention"] is True
    ids, am, labels = torch.randint(0, 99, (2, 7)), torch.ones(2, 7, dtype=torch.long), torch.tensor([0, 1])
    am[1, 4:] = 0
    for m in (distil, fast):
        m.train()
        m(input_ids=ids, attention_mask=am, labels=labels).loss.backward()
    for (n, a), b in zip(distil.named_parameters(), fast.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), n
    deberta = DebertaV2ForSequenceClassification(DebertaV2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37, vocab_size=99))
    switched = fastops.install(deberta)  # its disentangled attention is its own code: dropout modules only
    assert switched["attention"] is False and switched["dropout"] > 0
    deberta.train()
    assert torch.isfinite(deberta(input_ids=ids, attention_mask=am, labels=labels).loss)
