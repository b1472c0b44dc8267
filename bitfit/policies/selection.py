"""What a method chose: the one object selectors return and everything else reads."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .anatomy import head_names


@dataclass
class Selection:
    """What a method chose.

    trainable: parameter name -> None (the whole tensor trains) or a bool mask of its trainable entries.
    groups: label for the start-of-run table -> parameter names in that group.
    notes: anything the user should be told (e.g. which layers ``auto:K`` picked).
    masked: weights whose binary mask is learned (``sparse_mask``); the weights themselves stay frozen.
    mask_sparsity: target fraction of zeros of those masks.
    addition: the modules an added-module method puts in (``added.Addition``); ``apply`` attaches them and
        adds their parameters (whole) to ``trainable``, their names to ``added``.
    """

    policy: str
    trainable: dict[str, torch.Tensor | None]
    groups: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    masked: list[str] = field(default_factory=list)
    mask_sparsity: float = 0.0
    addition: object = None
    diffed: list[str] = field(default_factory=list)  # diff_prune: tensors that get a gated difference
    diff_sparsity: float = 0.0
    diff_search_epochs: int = 0
    added: list[str] = field(default_factory=list)


def with_head(model: nn.Module, names) -> dict[str, torch.Tensor | None]:
    """``names`` (whole tensors) plus the task head, which every method trains."""
    chosen = {n: None for n in names}
    chosen.update({n: None for n in head_names(model)})
    return chosen
