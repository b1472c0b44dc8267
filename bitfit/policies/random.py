"""The paper's random comparators: ``rand_uniform`` (k entries anywhere in the encoder, k = BitFit's
count or ``--rand-budget``) and ``rand_row_col`` (one row or column of every weight matrix)."""

from __future__ import annotations

import torch

from ..errors import UserError
from .anatomy import encoder_params, in_scope, linear_weights
from .bias import encoder_biases
from .selection import Selection, with_head


def sample_without_replacement(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """k distinct integers from range(n), uniformly, sorted (int64); vectorised, reproducible."""
    if not 0 <= k <= n:
        raise UserError(f"random budget {k} is out of range; accepted: 0 to {n} (the entries available)")
    if n <= 1 << 24 or 2 * k > n:
        return torch.randperm(n, generator=generator)[:k].sort().values
    # n large, k small: draw with replacement until k distinct, then a uniform k-subset of those
    found = torch.empty(0, dtype=torch.long)
    while found.numel() < k:
        draw = torch.randint(n, (2 * (k - found.numel()) + 64,), generator=generator)
        found = torch.unique(torch.cat([found, draw]))
    return found[torch.randperm(found.numel(), generator=generator)[:k]].sort().values


def rand_uniform(model, cfg, scope):
    params = encoder_params(model)
    pool = in_scope(model, params, scope)
    k = cfg.rand_budget if cfg.rand_budget is not None else sum(params[n].numel() for n in encoder_biases(model, scope))
    sizes = torch.tensor([params[n].numel() for n in pool], dtype=torch.long)
    ends = sizes.cumsum(0)
    gen = torch.Generator().manual_seed(cfg.seed)
    picked = sample_without_replacement(int(ends[-1]) if len(pool) else 0, k, gen)
    bounds = torch.searchsorted(picked, torch.cat([ends.new_zeros(1), ends])).tolist()
    trainable = {}
    for i, name in enumerate(pool):
        local = picked[bounds[i]:bounds[i + 1]] - (ends[i] - sizes[i])
        if local.numel() == 0:
            continue
        mask = torch.zeros(params[name].numel(), dtype=torch.bool)
        mask[local] = True
        trainable[name] = None if bool(mask.all()) else mask.view(params[name].shape)
    trainable.update(with_head(model, []))
    return Selection("rand_uniform", trainable, notes=[f"rand_uniform: {k:,} random encoder entries (seed {cfg.seed})"])


def rand_row_col(model, cfg, scope):
    params = encoder_params(model)
    gen = torch.Generator().manual_seed(cfg.seed)
    trainable = {}
    for name in in_scope(model, linear_weights(model), scope):
        rows, cols = params[name].shape
        mask = torch.zeros(rows, cols, dtype=torch.bool)
        if torch.randint(2, (1,), generator=gen).item() == 0:
            mask[torch.randint(rows, (1,), generator=gen).item(), :] = True  # a row: one entry per input
        else:
            mask[:, torch.randint(cols, (1,), generator=gen).item()] = True  # a column: one per output, like the bias
        trainable[name] = mask
    trainable.update(with_head(model, []))
    return Selection("rand_row_col", trainable)
