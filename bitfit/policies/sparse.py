"""Learned binary masks over frozen pretrained weights: the ``sparse_mask`` method.

Fine-tuning by *removing* pretrained entries rather than changing them ("How fine can fine-tuning
be?", Radiya-Dixit & Wang 2020): every chosen weight ``W`` is replaced, through
``torch.nn.utils.parametrize``, by ``W * mask(scores)``; only the real-valued ``scores`` learn and
``W`` itself never changes::

    attach(model, ["bert.encoder.layer.0.intermediate.dense.weight", ...], sparsity=0.01)
    ... train: the optimizer sees ...intermediate.dense.parametrizations.weight.0.scores
    achieved_sparsity(model)     # fraction of masked entries that are zero right now
    masks(model)                 # weight name -> bool tensor, True where the pretrained entry is kept

How the sparsity target ``s`` is met (top-k, as in movement pruning's "topK"): each masked matrix
of ``n`` entries zeroes exactly its ``z = floor(s * n)`` lowest-scoring entries, i.e. keeps every
entry whose score is at least the (z+1)-th smallest score. The scores start all equal (1.0), and
entries *tied* with the threshold are kept, so at step 0 the mask is all ones (the model is exactly
the pretrained one); once training has spread the scores the sparsity is exactly ``z / n`` per
matrix (never more, while ties remain at the threshold a little less). Gradients pass
straight through the hard mask: ``dL/dscores = dL/d(W * mask) * W`` (so, with a constant start,
the scores accumulate the movement score ``-W * dL/dW``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..errors import UserError
from .anatomy import in_scope, linear_weights
from .selection import Selection, with_head

SCORE_INIT = 1.0


class _StraightThrough(torch.autograd.Function):
    """Forward ``where(keep, W, 0)``; backward passes the gradient to the scores as if mask were them."""

    @staticmethod
    def forward(ctx, weight: Tensor, scores: Tensor, keep: Tensor) -> Tensor:
        ctx.save_for_backward(weight, keep)
        return torch.where(keep, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))

    @staticmethod
    def backward(ctx, grad: Tensor):
        weight, keep = ctx.saved_tensors
        grad_weight = grad * keep if ctx.needs_input_grad[0] else None
        grad_scores = (grad * weight).float() if ctx.needs_input_grad[1] else None
        return grad_weight, grad_scores, None


class MaskGroup:
    """The masks of one model. A mask is recomputed only when its scores changed (an optimizer step, a
    load, a move), and then every stale mask of the group at once: one ``kthvalue`` over the stacked
    scores of all matrices of the same size and device, not one per matrix (the thresholds are the
    same exact entries either way)."""

    def __init__(self):
        self.members: list[TopKMask] = []

    @torch.inference_mode(False)  # a mask made while evaluating is reused in training: a normal tensor
    @torch.no_grad()
    def refresh(self) -> None:
        stale: dict[tuple, list[TopKMask]] = {}
        for m in self.members:
            if m._key != m.scores_key():
                stale.setdefault((m.scores.numel(), m.n_zero, m.scores.device), []).append(m)
        for (_, n_zero, _), ms in stale.items():
            scores = [m.scores.detach() for m in ms]
            if n_zero == 0:
                keeps = [torch.ones_like(s, dtype=torch.bool) for s in scores]
            else:
                thresholds = torch.stack([s.flatten() for s in scores]).kthvalue(n_zero + 1, dim=1).values
                keeps = [s >= t for s, t in zip(scores, thresholds)]
            for m, keep in zip(ms, keeps):
                m._keep, m._key = keep, m.scores_key()


class TopKMask(nn.Module):
    """Parametrization ``W -> W * mask``: ``mask`` zeroes the ``floor(sparsity * W.numel())`` lowest scores."""

    def __init__(self, weight: Tensor, sparsity: float, group: MaskGroup | None = None):
        super().__init__()
        self.sparsity = float(sparsity)
        # the 1e-9 keeps e.g. 0.29 * 100 from flooring to 28
        self.n_zero = min(math.floor(self.sparsity * weight.numel() + 1e-9), weight.numel() - 1)
        self.scores = nn.Parameter(torch.full(weight.shape, SCORE_INIT, dtype=torch.float32, device=weight.device))
        self.group = group or MaskGroup()
        self.group.members.append(self)
        self._keep, self._key = None, None

    def scores_key(self) -> tuple:
        """Changes whenever the scores do: in place (their version counter) or replaced (a move)."""
        return self.scores._version, self.scores.data_ptr(), self.scores.device

    def keep(self) -> Tensor:
        """Bool mask, True where the pretrained entry is kept (cached until the scores change)."""
        if self._key != self.scores_key():
            self.group.refresh()
        return self._keep

    def forward(self, weight: Tensor) -> Tensor:
        return _StraightThrough.apply(weight, self.scores, self.keep())

    def extra_repr(self) -> str:
        return f"sparsity={self.sparsity}, n_zero={self.n_zero}"


def _split(name: str) -> tuple[str, str]:
    module, _, attr = name.rpartition(".")
    return module, attr


def attach(model: nn.Module, names: list[str], sparsity: float) -> None:
    """Put a learned mask on each named weight; the weights are frozen (``requires_grad=False``)."""
    group = MaskGroup()
    for name in names:
        module_name, attr = _split(name)
        module = model.get_submodule(module_name)
        getattr(module, attr).requires_grad_(False)
        parametrize.register_parametrization(module, attr, TopKMask(getattr(module, attr), sparsity, group))


def _mask_modules(model: nn.Module) -> dict[str, TopKMask]:
    found = {}
    for module_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for attr, plist in module.parametrizations.items():
            for p in plist:
                if isinstance(p, TopKMask):
                    found[f"{module_name}.{attr}" if module_name else attr] = p
    return found


def masks(model: nn.Module) -> dict[str, Tensor]:
    """Weight name -> its current bool mask (True = pretrained entry kept)."""
    return {name: m.keep() for name, m in _mask_modules(model).items()}


def achieved_sparsity(model: nn.Module) -> float:
    """Fraction of zeros over every masked entry of the model (0.0 when nothing is masked)."""
    zeros = total = 0
    for keep in masks(model).values():
        zeros += int((~keep).sum())
        total += keep.numel()
    return zeros / total if total else 0.0


def masked_weight(weight: Tensor, keep: Tensor) -> Tensor:
    """The plain weight a mask stands for, computed exactly as the parametrized forward does."""
    return torch.where(keep.to(weight.device), weight, torch.zeros((), dtype=weight.dtype, device=weight.device))


def bake(model: nn.Module) -> None:
    """Replace every mask parametrization by the plain masked weight (for evaluation or export)."""
    for name in _mask_modules(model):
        module_name, attr = _split(name)
        parametrize.remove_parametrizations(model.get_submodule(module_name), attr, leave_parametrized=True)


def pack_bits(mask: Tensor) -> Tensor:
    """Bool tensor -> uint8, eight entries a byte, first entry in the high bit (``np.packbits``)."""
    return torch.from_numpy(np.packbits(mask.detach().flatten().to("cpu").numpy()))


def unpack_bits(packed: Tensor, shape: tuple[int, ...] | list[int]) -> Tensor:
    """Inverse of ``pack_bits``; refuses too few bits for ``shape``."""
    numel = math.prod(shape)
    if packed.numel() * 8 < numel:
        raise UserError(f"mask bits hold {packed.numel() * 8} entries; accepted: at least {numel} for shape {tuple(shape)}")
    bits = np.unpackbits(packed.to("cpu", torch.uint8).numpy(), count=numel)
    return torch.from_numpy(bits).bool().view(*shape)


def sparse_mask(model, cfg, scope):
    """The ``sparse_mask`` selector: learn masks over the encoder's Linear weights in scope."""
    masked = in_scope(model, linear_weights(model), scope)
    return Selection("sparse_mask", with_head(model, []), masked=masked, mask_sparsity=float(cfg.mask_sparsity),
                     notes=[f"sparse_mask: learning binary masks over {len(masked)} weight matrices, "
                            f"target sparsity {cfg.mask_sparsity:g} per matrix (top-k of scores)"])
