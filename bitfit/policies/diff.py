"""Diff-Pruning (Guo, Rush & Kim, ACL 2021, "Parameter-Efficient Transfer Learning with Diff Pruning"): ``diff_prune``.

Every encoder tensor ``W`` in scope becomes, through ``torch.nn.utils.parametrize``, ``W0 + z * w``: ``W0`` the
frozen pretrained tensor, ``w`` a learned difference (starts at zero: the model starts as the pretrained one),
``z`` a gate per entry drawn from a hard-concrete distribution with learned ``log_alpha`` (Louizos et al. 2018):

    search (epochs 1..S, S = --diff-search-epochs): z ~ HardConcrete(log_alpha) in training, its mean-free
        deterministic value min(1, max(0, sigmoid(log_alpha) * (r - l) + l)) at evaluation; the loss gains
        lambda * sum(sigmoid(log_alpha - log(-l / r))), the relaxed L0 norm of z (expected non-zero gates)
    projection (after epoch S): the k = --diff-sparsity x (entries in scope) largest |z * w| over the whole
        encoder are kept (magnitude projection), w <- z * w there, the gates fixed to 1 there and 0 elsewhere
    fixed mask (epochs S+1..): only the kept differences train (the paper's "fixmask" fine-tuning)

The delta stores the kept entries as indices + values (the format ``rand_uniform`` uses), so predict, the
serving backbone and merge need nothing of their own. The paper's settings, as in its code
(github.com/dguo98/DiffPruning, experiments/example_*.sh): lambda 1.25e-7, (l, r) = (-1.5, 1.5), temperature 1,
log_alpha starts at 5 and trains with Adam at 0.1 (its own group, no weight decay), 3 search epochs, target
0.5%, then 3 fixmask epochs. Deviation: one --learning-rate for w in both phases (the paper: 1e-5 searching,
5e-5 with the fixed mask); the best epoch is chosen among the fixed-mask epochs only (a search epoch's model is
dense, so its delta would not be sparse).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..methods import DIFF_DEFAULTS
from .anatomy import encoder_params, in_scope
from .selection import Selection, with_head

L0_PENALTY = 1.25e-7
LOWER, UPPER = -1.5, 1.5
TEMPERATURE = 1.0
ALPHA_INIT = 5.0
ALPHA_LR = 0.1
FIXED = 1e4  # log_alpha after the projection: +FIXED kept, -FIXED pruned (Adam's drift on its zero gradient is ~lr)


class DiffGate(nn.Module):
    """Parametrization ``W0 -> W0 + z * diff`` with hard-concrete gates ``z(log_alpha)``."""

    def __init__(self, weight: Tensor, group: DiffGroup):
        super().__init__()
        self.diff = nn.Parameter(torch.zeros(weight.shape, dtype=torch.float32, device=weight.device))
        self.log_alpha = nn.Parameter(torch.full(weight.shape, ALPHA_INIT, dtype=torch.float32, device=weight.device))
        self.group = group
        group.members.append(self)

    def gate(self) -> Tensor:
        if self.group.fixed:  # 0 * log_alpha: the gates stay in the graph (zero gradient), as DDP expects every
            return (self.log_alpha > 0).float() + 0 * self.log_alpha  # trained parameter to get one
        if self.training:
            u = torch.rand_like(self.log_alpha).clamp(1e-6, 1 - 1e-6)
            s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / TEMPERATURE)
        else:
            s = torch.sigmoid(self.log_alpha)
        return (s * (UPPER - LOWER) + LOWER).clamp(0, 1)

    def forward(self, weight: Tensor) -> Tensor:
        return weight + (self.gate() * self.diff).to(weight.dtype)

    def kept(self) -> Tensor:
        """Bool mask of the entries whose difference is kept (after the projection: log_alpha > 0)."""
        return self.log_alpha.detach() > 0

    @torch.no_grad()
    def deterministic(self) -> Tensor:
        return (torch.sigmoid(self.log_alpha) * (UPPER - LOWER) + LOWER).clamp(0, 1)


class DiffGroup:
    """The gates of one model: the phase, the L0 penalty, the projection."""

    def __init__(self, sparsity: float, search_epochs: int):
        self.members: list[DiffGate] = []
        self.sparsity, self.search_epochs = sparsity, search_epochs
        self.fixed = False

    def budget(self) -> int:
        return math.floor(self.sparsity * sum(m.diff.numel() for m in self.members) + 1e-9)

    def start_epoch(self, epoch: int) -> None:
        self.fixed = epoch > self.search_epochs

    def penalty(self) -> Tensor | None:
        """lambda x the expected number of non-zero gates (searching only)."""
        if self.fixed:
            return None
        shift = TEMPERATURE * math.log(-LOWER / UPPER)
        return L0_PENALTY * sum(torch.sigmoid(m.log_alpha - shift).sum() for m in self.members)

    @torch.no_grad()
    def project(self) -> int:
        """Keep the ``budget()`` largest |z * w| over every gate (ties: the lower flat index); fix the gates."""
        deltas = [(m.deterministic() * m.diff).abs().flatten() for m in self.members]
        k = self.budget()
        flat = torch.cat(deltas)
        keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
        if k:
            keep[torch.topk(flat, k, sorted=False).indices] = True
        start = 0
        for m, d in zip(self.members, deltas):
            kept = keep[start:start + d.numel()].view(m.diff.shape)
            start += d.numel()
            m.diff.copy_(torch.where(kept, m.deterministic() * m.diff, torch.zeros_like(m.diff)))
            m.log_alpha.copy_(torch.where(kept, FIXED, -FIXED))
        self.fixed = True
        return int(keep.sum())


def attach(model: nn.Module, names: list[str], sparsity: float, search_epochs: int) -> DiffGroup:
    """Parametrize each named tensor as W0 + z * w; W0 frozen."""
    group = DiffGroup(sparsity, search_epochs)
    for name in names:
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        getattr(module, attr).requires_grad_(False)
        parametrize.register_parametrization(module, attr, DiffGate(getattr(module, attr), group))
    return group


def gates(model: nn.Module) -> dict[str, DiffGate]:
    """Parameter name -> its gate."""
    found = {}
    for module_name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for attr, plist in module.parametrizations.items():
                for p in plist:
                    if isinstance(p, DiffGate):
                        found[f"{module_name}.{attr}" if module_name else attr] = p
    return found


def group_of(model: nn.Module) -> DiffGroup | None:
    """The model's gates' group (``attach`` makes one per model), None without gates."""
    found = gates(model)
    return next(iter(found.values())).group if found else None


def is_alpha(name: str) -> bool:
    return name.endswith(".log_alpha")


def diff_prune(model, cfg, scope) -> Selection:
    names = in_scope(model, list(encoder_params(model)), scope)
    sparsity = getattr(cfg, "diff_sparsity", None) or DIFF_DEFAULTS["diff_sparsity"]
    search = getattr(cfg, "diff_search_epochs", None) or max(1, getattr(cfg, "epochs", 2) // 2)
    total = sum(dict(model.named_parameters())[n].numel() for n in names)
    return Selection("diff_prune", with_head(model, []), diffed=names, diff_sparsity=float(sparsity),
                     diff_search_epochs=int(search),
                     notes=[f"diff_prune: a gated difference over {len(names)} tensors ({total:,} entries), L0 search "
                            f"for {search} epoch(s), then the {sparsity:g} largest differences "
                            f"({math.floor(sparsity * total + 1e-9):,} entries) train with the mask fixed"])
