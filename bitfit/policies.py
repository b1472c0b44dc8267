"""Fine-tune policies: each one only *chooses* what trains; ``apply`` makes the model obey.

    sel = select(model, cfg)          # pure: names (and entry masks) of what trains
    guard = apply(model, sel)         # requires_grad, gradient masks, parametrizations
    ... optimizer.step(); guard.after_step()
    tensors = delta_tensors(model, sel)   # what was learned, for delta.safetensors
    load_delta(model, tensors)            # the inverse, onto a freshly loaded base model

(skeleton: full_ft, frozen and bitfit over every ``*.bias``; the other policies follow.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .errors import UserError

BIAS_ROLES = ("query", "key", "value", "attention_output", "intermediate", "output",
              "attention_layernorm", "output_layernorm", "embeddings_layernorm", "all")


@dataclass
class Selection:
    """What a policy chose.

    trainable: parameter name -> None (the whole tensor trains) or a bool mask of its trainable entries.
    groups: label for the start-of-run table -> parameter names in that group.
    notes: anything the user should be told (e.g. which layers ``auto:K`` picked).
    """

    policy: str
    trainable: dict[str, torch.Tensor | None]
    groups: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class Guard:
    """Returned by ``apply``; the training loop calls ``after_step()`` after every optimizer step."""

    def after_step(self) -> None:
        pass


def check_bias_terms(terms: list[str]) -> list[str]:
    for term in terms:
        if term not in BIAS_ROLES:
            raise UserError(f"unknown bias term {term!r}; accepted: {', '.join(BIAS_ROLES)}")
    return list(terms)


def parse_layers(spec: list[str], num_layers: int | None):
    raise UserError("--layers is not supported yet")


def head_names(model: nn.Module) -> list[str]:
    """Parameters outside the encoder (``model.base_model_prefix``): the task head."""
    prefix = model.base_model_prefix + "."
    return [n for n, _ in model.named_parameters() if not n.startswith(prefix)]


def _full_ft(model, cfg, probe):
    return Selection("full_ft", {n: None for n, _ in model.named_parameters()})


def _frozen(model, cfg, probe):
    return Selection("frozen", {n: None for n in head_names(model)})


def _bitfit(model, cfg, probe):
    head = set(head_names(model))
    names = [n for n, _ in model.named_parameters() if n.endswith(".bias") or n in head]
    return Selection("bitfit", {n: None for n in names})


POLICIES: dict[str, Callable] = {"full_ft": _full_ft, "frozen": _frozen, "bitfit": _bitfit}


def select(model: nn.Module, cfg, probe: Callable[[nn.Module], None] | None = None) -> Selection:
    """Choose what trains under ``cfg.fine_tune_type``; never modifies ``model``.

    ``probe`` (for ``--layers auto:K``) trains a copy of the model briefly in place.
    """
    policy = POLICIES.get(cfg.fine_tune_type)
    if policy is None:
        raise UserError(f"fine-tune type {cfg.fine_tune_type!r} is not implemented yet; available: {', '.join(POLICIES)}")
    sel = policy(model, cfg, probe)
    if not sel.groups:
        sel.groups = {"trainable": list(sel.trainable)}
    return sel


def apply(model: nn.Module, sel: Selection) -> Guard:
    for name, p in model.named_parameters():
        p.requires_grad_(name in sel.trainable)
    return Guard()


def delta_tensors(model: nn.Module, sel: Selection) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {n: params[n].detach().to("cpu", copy=True).contiguous() for n in sel.trainable}


def load_delta(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n in tensors if n not in params]
    if missing:
        raise UserError(f"delta holds tensors the model does not have: {', '.join(missing[:5])}")
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(t)


def trainable_table(model: nn.Module, sel: Selection) -> str:
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in params.values())
    rows = []
    for label, names in sel.groups.items():
        count = sum(params[n].numel() if sel.trainable.get(n) is None else int(sel.trainable[n].sum()) for n in names)
        rows.append((label, count))
    trained = sum(c for _, c in rows)
    width = max([len(r[0]) for r in rows] + [len("total trainable")])
    lines = [f"{'group':<{width}}  {'params':>12}  {'% of model':>10}"]
    lines += [f"{label:<{width}}  {count:>12,}  {100 * count / total:>9.4f}%" for label, count in rows]
    lines.append(f"{'total trainable':<{width}}  {trained:>12,}  {100 * trained / total:>9.4f}%")
    lines.append(f"{'model total':<{width}}  {total:>12,}")
    return "\n".join(lines)
