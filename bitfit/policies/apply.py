"""Applying a choice: the one place that makes a model train exactly what a Selection says.

    sel = select(model, cfg)
    guard = apply(model, sel)     # requires_grad, gradient masks for partly trained tensors, mask parametrizations
    ... optimizer.step(); guard.after_step()
"""

from __future__ import annotations

import torch
from torch import nn

from . import added, diff, sparse
from .selection import Selection


class Guard:
    """Returned by ``apply``; the training loop calls ``after_step()`` after every optimizer step.

    For partly trainable tensors it masks gradients (so clipping and Adam only see trainable
    entries) and, after each step, copies back the frozen entries exactly (weight decay, or
    Adam's L2 term, would otherwise move them).
    """

    def __init__(self):
        self._partial: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]] = []  # (param, mask, frozen copy)
        self._hooks = []
        self.diff: diff.DiffGroup | None = None  # diff_prune's gates

    def start_epoch(self, epoch: int) -> None:
        """Called before each epoch (1-based): diff_prune searches until its projection, then keeps its mask."""
        if self.diff is not None:
            self.diff.start_epoch(epoch)

    def penalty(self):
        """What the loss gains besides the task's (diff_prune's L0 penalty while searching), or None."""
        return None if self.diff is None else self.diff.penalty()

    def end_epoch(self, epoch: int) -> int | None:
        """After epoch ``epoch``'s evaluation: diff_prune's projection after its last search epoch (returns the
        entries kept), else None."""
        if self.diff is not None and epoch == self.diff.search_epochs:
            return self.diff.project()
        return None

    def eligible(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` may be the run's best (diff_prune: not while its difference is dense)."""
        return self.diff is None or epoch > self.diff.search_epochs

    def param_groups(self, model: nn.Module) -> list:
        """The optimizer's parameter groups: diff_prune's gates train at their own rate, without weight decay."""
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if self.diff is None:
            return [p for _, p in named]
        return [{"params": [p for n, p in named if not diff.is_alpha(n)]},
                {"params": [p for n, p in named if diff.is_alpha(n)], "lr": diff.ALPHA_LR, "weight_decay": 0.0}]

    def _add(self, param: nn.Parameter, mask: torch.Tensor) -> None:
        mask = mask.to(param.device)
        entry = [param, mask, param.detach().clone()]
        self._partial.append(entry)

        def hook(grad, entry=entry):
            if entry[1].device != grad.device:
                entry[1] = entry[1].to(grad.device)
            return grad * entry[1]

        self._hooks.append(param.register_hook(hook))

    @torch.no_grad()
    def after_step(self) -> None:
        for entry in self._partial:
            param, mask, frozen = entry
            if mask.device != param.device:  # the model moved after apply
                entry[1], entry[2] = mask.to(param.device), frozen.to(param.device)
                mask, frozen = entry[1], entry[2]
            param.copy_(torch.where(mask, param, frozen))

    def remove(self) -> None:
        """Remove the gradient hooks (parametrizations, if any, stay)."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()


def apply(model: nn.Module, sel: Selection) -> Guard:
    """Make ``model`` train exactly what ``sel`` chose; returns the Guard the loop must call.

    An added-module method's modules go in first (``added.attach``): their parameters train whole, and
    base tensors are named by their plain names whatever PEFT's wrapping calls them."""
    if sel.addition is not None and not sel.added:
        sel.added = added.attach(model, sel.addition)
        sel.trainable.update({n: None for n in sel.added})
        from .accounting import groups

        sel.groups.update(groups(model, sel.added, sel))
    params = {added.canonical(n): p for n, p in model.named_parameters()}
    unknown = [n for n in list(sel.trainable) + sel.masked if n not in params]
    if unknown:
        raise ValueError(f"selection names parameters this model does not have: {', '.join(unknown[:5])}")
    guard = Guard()
    for name, p in params.items():
        p.requires_grad_(name in sel.trainable)
        mask = sel.trainable.get(name)
        if mask is not None:
            guard._add(p, mask)
    if sel.masked:
        sparse.attach(model, sel.masked, sel.mask_sparsity)
    if sel.diffed:
        guard.diff = diff.attach(model, sel.diffed, sel.diff_sparsity, sel.diff_search_epochs)
    return guard
