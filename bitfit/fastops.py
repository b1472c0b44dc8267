"""Faster, lighter dropout and attention for training on the CPU.

Profiling a BitFit step of MiniLM on this project's CPU (batch 32, RTE) put about a fifth of the time
in `aten::bernoulli_` (`python -m scripts.perf_profile`, docs/PERFORMANCE.md): PyTorch draws every
dropout decision as its own 32-bit Mersenne-twister number.
And with attention dropout on, `scaled_dot_product_attention` leaves its fused kernel for the math
path, which keeps the attention probabilities, the dropout mask and the dropped probabilities of
every layer for the backward pass, plus masking work (`isneginf`, `all`, `where`) around them.

This module replaces both, on the CPU and in training only:

- `keep_mask` draws 64 random bits at a time and reads them as four 16-bit numbers, so one draw
  decides four elements (about 4x faster here: `python -m scripts.perf_kernels dropout`). The drop probability is rounded to a multiple of 1/65536
  (0.1 becomes 0.100006), from the same seeded generator as before.
- `FastDropout` is `nn.Dropout` with that mask, keeping a 1-byte mask for backward.
- `attention` computes softmax(QK^T * scale + mask), dropout, times V in one autograd function that
  keeps Q, K, V, the probabilities and a 1-byte mask, and recomputes the dropped probabilities in
  backward (one pass) instead of keeping them.

Everything else (evaluation, no dropout, GPUs, half precision, torch.compile) takes PyTorch's own
path, which is already fused there. `install(model)` switches a model over; `--no-fast-cpu-ops`
keeps PyTorch's ops everywhere.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward

_LEVELS = 1 << 16


def keep_mask(shape, p: float, device=None) -> torch.Tensor:
    """A bool tensor of `shape`: each element False (dropped) with probability p rounded to 1/65536."""
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device)
    words.random_(-(2**63), 2**63 - 1)  # every bit uniform (the range leaves out one value of 2^64)
    u16 = words.view(torch.int16)[:n]  # uniform over [-32768, 32767]
    return (u16 >= round(p * _LEVELS) - _LEVELS // 2).view(shape)


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p: float):
        keep = keep_mask(x.shape, p, x.device)
        ctx.save_for_backward(keep)
        ctx.scale = 1.0 / (1.0 - p)
        return torch.where(keep, x, 0.0).mul_(ctx.scale)  # where: one pass (masked_fill, x * mask: two)

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad, 0.0).mul_(ctx.scale), None


def _fast(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype == torch.float32 and torch.is_grad_enabled() \
        and not torch.compiler.is_compiling()


class FastDropout(nn.Dropout):
    """nn.Dropout whose training-mode mask comes from `keep_mask` (CPU, fp32); otherwise nn.Dropout."""

    def forward(self, x):
        if self.training and 0.0 < self.p < 1.0 and not self.inplace and _fast(x):
            return _Dropout.apply(x, self.p)
        return super().forward(x)


class _Attention(torch.autograd.Function):
    """softmax(Q K^T * scale + mask) with dropout, times V. Scalings are applied to the (B, H, L, D)
    operands rather than the (B, H, L, L) scores; backward keeps only the probabilities and the
    1-byte drop mask of the L x L tensors."""

    @staticmethod
    def forward(ctx, q, k, v, mask, scale: float, p: float):
        s = torch.matmul(q * scale, k.transpose(-1, -2))
        if mask is not None:
            if mask.dtype == torch.bool:  # True = attend (transformers' sdpa masks)
                s.masked_fill_(mask.logical_not(), torch.finfo(s.dtype).min)
            else:  # additive
                s.add_(mask)
        probs = torch.softmax(s, dim=-1)
        del s
        keep = keep_mask(probs.shape, p, probs.device)
        keep_scale = 1.0 / (1.0 - p)
        out = torch.matmul(torch.where(keep, probs, 0.0), v).mul_(keep_scale)
        ctx.save_for_backward(q, k, v, probs, keep)
        ctx.scale, ctx.keep_scale = scale, keep_scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, probs, keep = ctx.saved_tensors
        grad_out = grad_out * ctx.keep_scale
        grad_v = torch.matmul(torch.where(keep, probs, 0.0).transpose(-1, -2), grad_out)
        grad_p = torch.where(keep, torch.matmul(grad_out, v.transpose(-1, -2)), 0.0)
        # softmax backward: dS = P * (dP - sum(dP * P)); the score scale goes onto dQ and dK
        grad_s = grad_p.sub_((grad_p * probs).sum(dim=-1, keepdim=True)).mul_(probs)
        grad_q = torch.matmul(grad_s, k).mul_(ctx.scale)
        grad_k = torch.matmul(grad_s.transpose(-1, -2), q).mul_(ctx.scale)
        return grad_q, grad_k, grad_v, None, None, None


def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """A transformers attention function (registered as "bitfit_cpu"): `_Attention` when training
    with dropout on the CPU in fp32, transformers' SDPA otherwise."""
    if dropout > 0.0 and _fast(query) and query.shape[1] == key.shape[1] and kwargs.get("head_mask") is None \
            and not kwargs.get("is_causal", getattr(module, "is_causal", False)):  # encoders only
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        out = _Attention.apply(query, key, value, attention_mask, scale, dropout)
        return out.transpose(1, 2).contiguous(), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  **kwargs)


NAME = "bitfit_cpu"


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)


def install(model: nn.Module) -> dict:
    """Switch `model` to FastDropout and, where it uses transformers' SDPA attention through the attention
    interface (BERT, RoBERTa, XLM-R, ELECTRA, DistilBERT; not DeBERTa's own attention), to `attention`.
    Returns what was switched: {"dropout": modules, "attention": bool}."""
    n = 0
    for m in model.modules():
        if type(m) is nn.Dropout:
            m.__class__ = FastDropout
            n += 1
    switched = False
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "_attn_implementation", None) == "sdpa" \
            and getattr(model, "_supports_attention_backend", False):  # models that call transformers' attention functions
        _register()
        model.set_attn_implementation(NAME)
        switched = True
    return {"dropout": n, "attention": switched}
