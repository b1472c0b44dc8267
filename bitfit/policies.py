"""Fine-tune policies: each one only *chooses* what trains; ``apply`` makes the model obey.

    sel = select(model, cfg)          # pure: names (and entry masks) of what trains
    print(trainable_table(model, sel))
    guard = apply(model, sel)         # requires_grad, gradient masks, parametrizations
    opt = AdamW([p for p in model.parameters() if p.requires_grad], ...)
    ... opt.step(); guard.after_step()
    tensors = delta_tensors(model, sel)   # what was learned, for delta.safetensors
    load_delta(base_model, tensors)       # the inverse, onto a freshly loaded base model

Policies (``cfg.fine_tune_type``); the task head (every parameter outside
``model.base_model_prefix``) always trains, and ``--layers`` restricts the encoder part of any of
them to some encoder layers (the embeddings and the pooler are not layers):

- ``bitfit``: every ``*.bias`` of the encoder, on any architecture. ``--bias-terms`` picks bias
  *roles*, mapped per ``model.config.model_type`` (``ARCH_ROLES``) and matched with
  ``re.fullmatch``, so ``output`` is the block's output projection only, never the attention
  output, and ``output_layernorm`` never the attention LayerNorm (``all`` needs no mapping). The
  pooler bias, where the encoder has one, trains with the head, as in the paper's code: whatever
  ``--bias-terms`` and ``--layers`` say.
- ``frozen``: the head only.            ``full_ft``: everything.
- ``layers``: full fine-tuning of the layers in ``--layers`` (``auto:K``: the K layers that moved
  most, by relative L2 change, in a short probe run supplied by the caller).
- ``rand_uniform``: k entries drawn uniformly without replacement over the encoder's parameters
  (k = the BitFit bias count of the encoder, or ``cfg.rand_budget``), seeded by ``cfg.seed``.
- ``rand_row_col``: one random row or column of every Linear weight of the encoder.
- ``sparse_mask``: learn a binary mask over the encoder's Linear weights (see ``bitfit.sparse``).

Delta tensor names (``delta_tensors``): a whole trained tensor is stored under its parameter name;
a partly trained one as ``<name>::indices`` (flat int64 indices) and ``<name>::values``; a learned
mask as ``<name>::maskbits`` (uint8, ``np.packbits`` order, 1 = pretrained entry kept) and
``<name>::shape`` (int64).
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from . import sparse
from .errors import UserError

BIAS_ROLES = ("query", "key", "value", "attention_output", "intermediate", "output",
              "attention_layernorm", "output_layernorm", "embeddings_layernorm", "all")

# ---------------------------------------------------------------------------------------------
# Bias roles per architecture (``model.config.model_type``). Patterns are matched with
# re.fullmatch against parameter names relative to the encoder (``model.base_model_prefix``).


def _bert_like(q: str, k: str, v: str) -> dict[str, str]:
    layer = r"encoder\.layer\.\d+\."
    return {
        "query": layer + rf"attention\.self\.{q}\.bias",
        "key": layer + rf"attention\.self\.{k}\.bias",
        "value": layer + rf"attention\.self\.{v}\.bias",
        "attention_output": layer + r"attention\.output\.dense\.bias",
        "intermediate": layer + r"intermediate\.dense\.bias",
        "output": layer + r"output\.dense\.bias",
        "attention_layernorm": layer + r"attention\.output\.LayerNorm\.bias",
        "output_layernorm": layer + r"output\.LayerNorm\.bias",
        "embeddings_layernorm": r"embeddings\.LayerNorm\.bias",
    }


_DISTILBERT_LAYER = r"transformer\.layer\.\d+\."
ARCH_ROLES: dict[str, dict[str, str]] = {
    "bert": _bert_like("query", "key", "value"),  # also MiniLM (all-MiniLM-L6-v2 is model_type bert)
    "roberta": _bert_like("query", "key", "value"),
    "xlm-roberta": _bert_like("query", "key", "value"),
    "electra": _bert_like("query", "key", "value"),
    "deberta-v2": _bert_like("query_proj", "key_proj", "value_proj"),  # DeBERTa v2 and v3
    "distilbert": {
        "query": _DISTILBERT_LAYER + r"attention\.q_lin\.bias",
        "key": _DISTILBERT_LAYER + r"attention\.k_lin\.bias",
        "value": _DISTILBERT_LAYER + r"attention\.v_lin\.bias",
        "attention_output": _DISTILBERT_LAYER + r"attention\.out_lin\.bias",
        "intermediate": _DISTILBERT_LAYER + r"ffn\.lin1\.bias",
        "output": _DISTILBERT_LAYER + r"ffn\.lin2\.bias",
        "attention_layernorm": _DISTILBERT_LAYER + r"sa_layer_norm\.bias",
        "output_layernorm": _DISTILBERT_LAYER + r"output_layer_norm\.bias",
        "embeddings_layernorm": r"embeddings\.LayerNorm\.bias",
    },
}
_LAYER = re.compile(r"(?:^|\.)layers?\.(\d+)\.")  # encoder.layer.3., transformer.layer.3., layers.3.
_POOLER_BIAS = re.compile(r"pooler(?:\.dense)?\.bias")


@dataclass
class Selection:
    """What a policy chose.

    trainable: parameter name -> None (the whole tensor trains) or a bool mask of its trainable entries.
    groups: label for the start-of-run table -> parameter names in that group.
    notes: anything the user should be told (e.g. which layers ``auto:K`` picked).
    masked: weights whose binary mask is learned (``sparse_mask``); the weights themselves stay frozen.
    mask_sparsity: target fraction of zeros of those masks.
    """

    policy: str
    trainable: dict[str, torch.Tensor | None]
    groups: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    masked: list[str] = field(default_factory=list)
    mask_sparsity: float = 0.0


@dataclass(frozen=True)
class LayerSpec:
    """A parsed ``--layers``: explicit indices, or ``last:K`` / ``auto:K`` (K > 0)."""

    indices: tuple[int, ...] = ()
    last: int = 0
    auto: int = 0


# ---------------------------------------------------------------------------------------------
# Checking user input


def check_bias_terms(terms: list[str]) -> list[str]:
    for term in terms:
        if term not in BIAS_ROLES:
            raise UserError(f"unknown bias term {term!r}; accepted: {', '.join(BIAS_ROLES)}")
    return list(terms)


_LAYERS_ACCEPTED = "layer indices (e.g. 9 10 11), last:K or auto:K"


def parse_layers(spec: list[str], num_layers: int | None) -> LayerSpec:
    """Parse ``--layers``; with ``num_layers`` also check the range and resolve ``last:K``."""
    if isinstance(spec, str):
        spec = [spec]
    tokens = [t for item in spec for t in re.split(r"[,\s]+", str(item)) if t]
    if not tokens:
        raise UserError(f"empty layers value {spec!r}; accepted: {_LAYERS_ACCEPTED}")
    if any(":" in t for t in tokens):
        match = re.fullmatch(r"(last|auto):(\d+)", tokens[0])
        if len(tokens) != 1 or match is None or int(match[2]) == 0:
            raise UserError(f"bad layers value {' '.join(tokens)!r}; accepted: {_LAYERS_ACCEPTED} (K > 0, alone)")
        kind, k = match[1], int(match[2])
        if num_layers is not None and k > num_layers:
            raise UserError(f"layers {tokens[0]!r} asks for more layers than the model has; accepted: K from 1 to {num_layers}")
        if kind == "auto":
            return LayerSpec(auto=k)
        if num_layers is None:
            return LayerSpec(last=k)
        return LayerSpec(indices=tuple(range(num_layers - k, num_layers)))
    bad = [t for t in tokens if not re.fullmatch(r"\d+", t)]
    if bad:
        raise UserError(f"bad layers value {bad[0]!r}; accepted: {_LAYERS_ACCEPTED}")
    indices = sorted({int(t) for t in tokens})
    if num_layers is not None and indices[-1] >= num_layers:
        raise UserError(f"layer {indices[-1]} is out of range; accepted: 0 to {num_layers - 1} (the model has {num_layers} layers)")
    return LayerSpec(indices=tuple(indices))


# ---------------------------------------------------------------------------------------------
# Reading the model (never modifying it)


def _encoder_prefix(model: nn.Module) -> str:
    """``"bert."`` for a task model; ``""`` when ``model`` is the bare encoder itself."""
    prefix = getattr(model, "base_model_prefix", "") + "."
    if prefix != "." and any(n.startswith(prefix) for n, _ in model.named_parameters()):
        return prefix
    return ""


def head_names(model: nn.Module) -> list[str]:
    """Parameters outside the encoder (``model.base_model_prefix``): the task head."""
    prefix = _encoder_prefix(model)
    if not prefix:
        return []
    return [n for n, _ in model.named_parameters() if not n.startswith(prefix)]


def _encoder(model: nn.Module) -> dict[str, nn.Parameter]:
    """Encoder parameters by full name, in ``named_parameters`` order."""
    prefix = _encoder_prefix(model)
    return {n: p for n, p in model.named_parameters() if n.startswith(prefix)}


def _rel(model: nn.Module, name: str) -> str:
    return name[len(_encoder_prefix(model)):]


def _layer_of(rel_name: str) -> int | None:
    match = _LAYER.search(rel_name)
    return int(match[1]) if match else None


def num_layers(model: nn.Module) -> int:
    """Number of numbered encoder layers (0 when the encoder has none this module recognises)."""
    found = [_layer_of(_rel(model, n)) for n in _encoder(model)]
    return max((i for i in found if i is not None), default=-1) + 1


def _in_scope(model: nn.Module, names, layers: set[int] | None) -> list[str]:
    """Encoder names inside the chosen layers (all of them when no --layers)."""
    return [n for n in names if layers is None or _layer_of(_rel(model, n)) in layers]


def _roles(model: nn.Module) -> dict[str, str]:
    model_type = getattr(model.config, "model_type", None)
    roles = ARCH_ROLES.get(model_type)
    if roles is None:
        raise UserError(f"--bias-terms has no role mapping for model type {model_type!r}; accepted: "
                        f"{', '.join(ARCH_ROLES)} (or leave --bias-terms out to train every bias)")
    return roles


def _role_of(rel_name: str, roles: dict[str, str] | None) -> str | None:
    return next((r for r, pat in (roles or {}).items() if re.fullmatch(pat, rel_name)), None)


def _linear_weights(model: nn.Module) -> list[str]:
    prefix = _encoder_prefix(model)
    return [f"{m}.weight" for m, mod in model.named_modules()
            if isinstance(mod, nn.Linear) and f"{m}.".startswith(prefix)]


# ---------------------------------------------------------------------------------------------
# Policies: (model, cfg, layers) -> Selection. ``layers`` is None (no --layers) or a set of indices.


def _with_head(model, names) -> dict[str, torch.Tensor | None]:
    chosen = {n: None for n in names}
    chosen.update({n: None for n in head_names(model)})
    return chosen


def _full_ft(model, cfg, layers):
    return Selection("full_ft", _with_head(model, _in_scope(model, _encoder(model), layers)))


def _frozen(model, cfg, layers):
    return Selection("frozen", _with_head(model, []))


def _layers(model, cfg, layers):
    if layers is None:
        raise UserError("fine-tune type 'layers' needs --layers; accepted: " + _LAYERS_ACCEPTED)
    return Selection("layers", _with_head(model, _in_scope(model, _encoder(model), layers)))


def _encoder_biases(model, layers) -> list[str]:
    return _in_scope(model, [n for n in _encoder(model) if n.endswith(".bias")], layers)


def _bitfit(model, cfg, layers):
    terms = check_bias_terms(cfg.bias_terms) if cfg.bias_terms else None
    if not terms or "all" in terms:
        names = _encoder_biases(model, layers)
    else:
        roles = _roles(model)
        scope = _in_scope(model, _encoder(model), layers)
        names = []
        for term in terms:
            hits = [n for n in scope if re.fullmatch(roles[term], _rel(model, n))]
            if not hits:
                where = "" if layers is None else f" within layers {_ranges(layers)}"
                raise UserError(f"bias term {term!r} selects no parameter of this {model.config.model_type} model{where}; "
                                f"accepted: {', '.join(r for r in roles if any(re.fullmatch(roles[r], _rel(model, n)) for n in scope))}, all")
            names += [n for n in hits if n not in names]
    # the paper's code always trains the pooler bias alongside the classifier
    names += [n for n in _encoder(model) if _POOLER_BIAS.fullmatch(_rel(model, n)) and n not in names]
    return Selection("bitfit", _with_head(model, names))


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


def _rand_uniform(model, cfg, layers):
    params = _encoder(model)
    pool = _in_scope(model, params, layers)
    k = cfg.rand_budget if cfg.rand_budget is not None else sum(params[n].numel() for n in _encoder_biases(model, layers))
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
    trainable.update(_with_head(model, []))
    return Selection("rand_uniform", trainable, notes=[f"rand_uniform: {k:,} random encoder entries (seed {cfg.seed})"])


def _rand_row_col(model, cfg, layers):
    params = _encoder(model)
    gen = torch.Generator().manual_seed(cfg.seed)
    trainable = {}
    for name in _in_scope(model, _linear_weights(model), layers):
        rows, cols = params[name].shape
        mask = torch.zeros(rows, cols, dtype=torch.bool)
        if torch.randint(2, (1,), generator=gen).item() == 0:
            mask[torch.randint(rows, (1,), generator=gen).item(), :] = True  # a row: one entry per input
        else:
            mask[:, torch.randint(cols, (1,), generator=gen).item()] = True  # a column: one per output, like the bias
        trainable[name] = mask
    trainable.update(_with_head(model, []))
    return Selection("rand_row_col", trainable)


def _sparse_mask(model, cfg, layers):
    masked = _in_scope(model, _linear_weights(model), layers)
    return Selection("sparse_mask", _with_head(model, []), masked=masked, mask_sparsity=float(cfg.mask_sparsity),
                     notes=[f"sparse_mask: learning binary masks over {len(masked)} weight matrices, "
                            f"target sparsity {cfg.mask_sparsity:g} per matrix (top-k of scores)"])


POLICIES: dict[str, Callable] = {
    "full_ft": _full_ft, "frozen": _frozen, "bitfit": _bitfit, "layers": _layers,
    "rand_uniform": _rand_uniform, "rand_row_col": _rand_row_col, "sparse_mask": _sparse_mask,
}


# ---------------------------------------------------------------------------------------------
# select


def _auto_layers(model: nn.Module, k: int, probe: Callable[[nn.Module], None] | None) -> tuple[set[int], str]:
    """The k layers whose parameters moved most (relative L2 change) when a copy is briefly trained."""
    if probe is None:
        raise UserError("layers auto:K needs a probe run, which only training supplies; accepted here: indices or last:K")
    moved = copy.deepcopy(model)
    probe(moved)
    after = dict(moved.named_parameters())
    diff2: dict[int, float] = {}
    norm2: dict[int, float] = {}
    for name, p in _encoder(model).items():
        i = _layer_of(_rel(model, name))
        if i is None:
            continue
        before = p.detach().double()
        diff2[i] = diff2.get(i, 0.0) + float((after[name].detach().double().to(before.device) - before).pow(2).sum())
        norm2[i] = norm2.get(i, 0.0) + float(before.pow(2).sum())
    change = {i: math.sqrt(diff2[i]) / max(math.sqrt(norm2[i]), 1e-12) for i in sorted(diff2)}
    picked = set(sorted(change, key=lambda i: (-change[i], i))[:k])
    note = (f"layers auto:{k} picked {_ranges(picked)} (relative change in the probe run: "
            + ", ".join(f"{i}: {c:.2e}" for i, c in change.items()) + ")")
    return picked, note


def select(model: nn.Module, cfg, probe: Callable[[nn.Module], None] | None = None) -> Selection:
    """Choose what trains under ``cfg.fine_tune_type``; never modifies ``model``.

    ``probe`` (for ``--layers auto:K``) trains a copy of the model briefly in place.
    """
    policy = POLICIES.get(cfg.fine_tune_type)
    if policy is None:
        raise UserError(f"unknown fine-tune type {cfg.fine_tune_type!r}; accepted: {', '.join(POLICIES)}")
    layers, notes = None, []
    if cfg.layers is not None:
        depth = num_layers(model)
        if depth == 0:
            raise UserError(f"--layers needs numbered encoder layers, and this {getattr(model.config, 'model_type', '?')} "
                            "model has none this tool recognises; accepted: leave --layers out")
        spec = parse_layers(cfg.layers, depth)
        if spec.auto:
            layers, note = _auto_layers(model, spec.auto, probe)
            notes.append(note)
        else:
            layers = set(spec.indices)
    sel = policy(model, cfg, layers)
    sel.notes = notes + sel.notes
    sel.groups = _groups(model, list(sel.trainable) + sel.masked, sel)
    return sel


def _ranges(indices) -> str:
    """{0, 1, 2, 5} -> '0-2, 5'."""
    out, run = [], []
    for i in sorted(indices):
        if run and i != run[-1] + 1:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
            run = []
        run.append(i)
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ", ".join(out)


def _groups(model: nn.Module, names: list[str], sel: Selection) -> dict[str, list[str]]:
    """Table rows: bias role (or in-layer parameter) x layers, the parts outside the layers, head last."""
    head = set(head_names(model))
    roles = ARCH_ROLES.get(getattr(model.config, "model_type", None))
    order = {n: i for i, n in enumerate(_base_sizes(model))}
    by_label: dict[str, list[str]] = {}
    layers_of: dict[str, set[int]] = {}
    for name in sorted(names, key=lambda n: (n in head, order.get(n, len(order)))):
        rel = _rel(model, name)
        i = _layer_of(rel)
        role = _role_of(rel, roles)
        if name in head:
            label = "head"
        elif role:
            label = f"{role} bias"
        elif i is None:
            label = rel.split(".")[0] + (" bias" if _POOLER_BIAS.fullmatch(rel) else "")
        else:
            label = rel[_LAYER.search(rel).end():]
        if name in sel.masked:
            label += " (mask)"
        by_label.setdefault(label, []).append(name)
        if i is not None:
            layers_of.setdefault(label, set()).add(i)
    return {(f"{label} · layers {_ranges(layers_of[label])}" if label in layers_of else label): group
            for label, group in by_label.items()}


# ---------------------------------------------------------------------------------------------
# apply


class Guard:
    """Returned by ``apply``; the training loop calls ``after_step()`` after every optimizer step.

    For partly trainable tensors it masks gradients (so clipping and Adam only see trainable
    entries) and, after each step, copies back the frozen entries exactly (weight decay, or
    Adam's L2 term, would otherwise move them).
    """

    def __init__(self):
        self._partial: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]] = []  # (param, mask, frozen copy)
        self._hooks = []

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
    """Make ``model`` train exactly what ``sel`` chose; returns the Guard the loop must call."""
    params = dict(model.named_parameters())
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
    return guard


# ---------------------------------------------------------------------------------------------
# What was learned


def _tensor(model: nn.Module, name: str) -> torch.Tensor:
    """The tensor a parameter name stands for (the masked weight, for a parametrized one)."""
    module, _, attr = name.rpartition(".")
    return getattr(model.get_submodule(module) if module else model, attr)


def delta_tensors(model: nn.Module, sel: Selection) -> dict[str, torch.Tensor]:
    """CPU copies of what was learned, named as in the module docstring (safetensors-ready)."""
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, mask in sel.trainable.items():
            t = _tensor(model, name).detach().to("cpu")
            if mask is None:
                out[name] = t.clone().contiguous()
            else:
                idx = mask.flatten().nonzero().flatten().to(torch.int64)
                out[f"{name}::indices"] = idx
                out[f"{name}::values"] = t.flatten()[idx].clone()
        masks = sparse.masks(model)
        for name in sel.masked:
            out[f"{name}::maskbits"] = sparse.pack_bits(masks[name])
            out[f"{name}::shape"] = torch.tensor(list(masks[name].shape), dtype=torch.int64)
    return out


def load_delta(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Inverse of ``delta_tensors`` onto a freshly loaded base model (masks become plain zeros)."""
    params = dict(model.named_parameters())
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        name, _, kind = key.partition("::")
        if name not in params or kind not in ("", "indices", "values", "maskbits", "shape"):
            raise UserError(f"delta tensor {key!r} does not fit this model; accepted: its parameter names, "
                            "optionally with ::indices, ::values, ::maskbits or ::shape")
        parts.setdefault(name, {})[kind] = t
    with torch.no_grad():
        for name, part in parts.items():
            p = params[name]
            if "" in part:
                _check_shape(name, part[""].shape, p.shape)
                p.copy_(part[""])
            elif "indices" in part and "values" in part:
                p.view(-1)[part["indices"].to(p.device)] = part["values"].to(p.device, p.dtype)
            elif "maskbits" in part and "shape" in part:
                shape = tuple(int(s) for s in part["shape"])
                _check_shape(name, shape, p.shape)
                p.copy_(sparse.masked_weight(p, sparse.unpack_bits(part["maskbits"], shape)))
            else:
                raise UserError(f"delta for {name!r} is incomplete: has {', '.join(sorted(part))}; accepted: "
                                "::indices with ::values, or ::maskbits with ::shape")


def _check_shape(name, got, want) -> None:
    if tuple(got) != tuple(want):
        raise UserError(f"delta tensor {name!r} has shape {tuple(got)}; accepted: {tuple(want)} (another model size?)")


# ---------------------------------------------------------------------------------------------
# Accounting


def _base_sizes(model: nn.Module) -> dict[str, int]:
    """Every parameter of the model as loaded (mask scores excluded; masked weights by their own name)."""
    sizes = {}
    for name, p in model.named_parameters():
        if ".parametrizations." in name:
            if not name.endswith(".original"):
                continue
            name = name.replace(".parametrizations.", ".").removesuffix(".original")
        sizes[name] = p.numel()
    return sizes


def _count(sel: Selection, sizes: dict[str, int], name: str) -> int:
    mask = sel.trainable.get(name)
    return sizes[name] if mask is None else int(mask.sum())


def trainable_counts(model: nn.Module, sel: Selection) -> dict[str, int]:
    """Entries trained (mask entries, for learned masks): in all, without the head, inside the
    numbered encoder layers only (the paper's count, see ``trainable_table``); and the model total."""
    sizes = _base_sizes(model)
    head = set(head_names(model))
    names = list(sel.trainable) + sel.masked
    return {
        "trained": sum(_count(sel, sizes, n) for n in names),
        "trained_encoder": sum(_count(sel, sizes, n) for n in names if n not in head),
        "trained_in_layers": sum(_count(sel, sizes, n) for n in names
                                 if n not in head and _layer_of(_rel(model, n)) is not None),
        "total": sum(sizes.values()),
    }


def trainable_table(model: nn.Module, sel: Selection) -> str:
    """Start-of-run table: every group with its trained entries and percent of the whole model.

    The paper's percentages (BitFit 0.09%, b_q + b_m2 0.04% of BERT-base) count what trains inside
    the encoder layers (12 x 8,448 biases = 101,376) over every parameter of the model (108,311,810
    with a 2-label head): the "in the encoder layers" row. Counting the embeddings LayerNorm bias
    too still rounds to 0.09%, but adding the pooler bias gives 0.0950% and the head 0.0964%.
    """
    sizes = _base_sizes(model)
    counts = trainable_counts(model, sel)
    total = counts["total"]
    rows = [(label, sum(_count(sel, sizes, n) for n in names)) for label, names in sel.groups.items()]
    totals = [("total trained", counts["trained"]), ("without the head", counts["trained_encoder"]),
              ("in the encoder layers (the paper's %)", counts["trained_in_layers"])]
    width = max(len(label) for label, _ in rows + totals)
    line = "-" * (width + 28)

    def fmt(label, count):
        return f"{label:<{width}}  {count:>14,}  {100 * count / total:>9.4f}%"

    lines = [f"{sel.policy}: what trains", f"{'group':<{width}}  {'params trained':>14}  {'% of model':>10}", line]
    lines += [fmt(label, count) for label, count in rows] + [line] + [fmt(label, count) for label, count in totals]
    lines.append(f"{'model total':<{width}}  {total:>14,}")
    if sel.masked:
        lines.append(f"(mask) rows count mask entries learned; their pretrained weights stay frozen, "
                     f"target sparsity {sel.mask_sparsity:g}")
    return "\n".join(lines)
