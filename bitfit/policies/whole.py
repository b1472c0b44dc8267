"""Methods that train whole tensors: ``full_ft``, ``frozen`` (the head only), ``layers``; and the
probe that ranks layers for ``--layers auto:K``."""

from __future__ import annotations

import copy
import math
from typing import Callable

from torch import nn

from ..errors import UserError
from .anatomy import encoder_params, in_scope, layer_of, ranges, rel_name
from .selection import Selection, with_head


def full_ft(model, cfg, scope):
    return Selection("full_ft", with_head(model, in_scope(model, encoder_params(model), scope)))


def frozen(model, cfg, scope):
    return Selection("frozen", with_head(model, []))


def layers(model, cfg, scope):
    return Selection("layers", with_head(model, in_scope(model, encoder_params(model), scope)))


def auto_layers(model: nn.Module, k: int, probe: Callable[[nn.Module], None] | None) -> tuple[set[int], str]:
    """The k layers whose parameters moved most (relative L2 change) when a copy is briefly trained."""
    if probe is None:
        raise UserError("layers auto:K needs a probe run, which only training supplies; accepted here: indices or last:K")
    moved = copy.deepcopy(model)
    probe(moved)
    after = dict(moved.named_parameters())
    diff2: dict[int, float] = {}
    norm2: dict[int, float] = {}
    for name, p in encoder_params(model).items():
        i = layer_of(rel_name(model, name))
        if i is None:
            continue
        before = p.detach().double()
        diff2[i] = diff2.get(i, 0.0) + float((after[name].detach().double().to(before.device) - before).pow(2).sum())
        norm2[i] = norm2.get(i, 0.0) + float(before.pow(2).sum())
    change = {i: math.sqrt(diff2[i]) / max(math.sqrt(norm2[i]), 1e-12) for i in sorted(diff2)}
    picked = set(sorted(change, key=lambda i: (-change[i], i))[:k])
    note = (f"layers auto:{k} picked {ranges(picked)} (relative change in the probe run: "
            + ", ".join(f"{i}: {c:.2e}" for i, c in change.items()) + ")")
    return picked, note
