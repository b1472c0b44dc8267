"""Accounting: what trains, counted by group, with percent of the whole model.

    trainable_counts(model, sel)   # {"trained": ..., "trained_encoder": ..., "trained_in_layers": ..., "total": ...}
    print(trainable_table(model, sel))
"""

from __future__ import annotations

from torch import nn

from .anatomy import (ARCH_ROLES, LAYER, POOLER_BIAS, added_part, base_sizes, head_names, is_added, layer_of, ranges,
                      rel_name, role_of)
from .selection import Selection


def groups(model: nn.Module, names: list[str], sel: Selection) -> dict[str, list[str]]:
    """Table rows: bias role (or in-layer parameter) x layers, the parts outside the layers, head last."""
    head = set(head_names(model))
    roles = ARCH_ROLES.get(getattr(model.config, "model_type", None))
    order = {n: i for i, n in enumerate(base_sizes(model))}
    by_label: dict[str, list[str]] = {}
    layers_of: dict[str, set[int]] = {}
    for name in sorted(names, key=lambda n: (n in head, order.get(n, len(order)))):
        rel = rel_name(model, name)
        i = layer_of(rel)
        role = role_of(rel, roles)
        if name in head:
            label = "head"
        elif is_added(name):
            module, kind = added_part(rel)
            in_layer = LAYER.search(module)
            label = f"{module[in_layer.end():] if in_layer else module} {kind} (added)"
        elif role:
            label = f"{role} bias"
        elif i is None:
            label = rel.split(".")[0] + (" bias" if POOLER_BIAS.fullmatch(rel) else "")
        else:
            label = rel[LAYER.search(rel).end():]
        if name in sel.masked:
            label += " (mask)"
        by_label.setdefault(label, []).append(name)
        if i is not None:
            layers_of.setdefault(label, set()).add(i)
    return {(f"{label} · layers {ranges(layers_of[label])}" if label in layers_of else label): group
            for label, group in by_label.items()}


def _sizes(model: nn.Module) -> dict[str, int]:
    """Sizes of the base parameters (``base_sizes``) and of any added module's (LoRA, IA3, adapters)."""
    return base_sizes(model) | {n: p.numel() for n, p in model.named_parameters() if is_added(n)}


def diff_budget(sizes: dict[str, int], sel: Selection) -> int:
    """diff_prune: the differences kept after the search (the paper's count), 0 for other methods."""
    import math

    return math.floor(sel.diff_sparsity * sum(sizes[n] for n in sel.diffed) + 1e-9) if sel.diffed else 0


def _diff_kept(model: nn.Module, sizes: dict[str, int], sel: Selection) -> tuple[int, int]:
    """diff_prune's kept differences (in all, inside the layers): counted once projected, before that the
    budget (and its share of the entries inside the layers)."""
    if not sel.diffed:
        return 0, 0
    from .diff import gates, group_of

    group = group_of(model)
    if group is not None and group.fixed:
        kept = {n: int(g.kept().sum()) for n, g in gates(model).items()}
        return sum(kept.values()), sum(k for n, k in kept.items() if layer_of(rel_name(model, n)) is not None)
    budget = diff_budget(sizes, sel)
    total = sum(sizes[n] for n in sel.diffed)
    inside = sum(sizes[n] for n in sel.diffed if layer_of(rel_name(model, n)) is not None)
    return budget, budget * inside // total if total else 0


def _count(sel: Selection, sizes: dict[str, int], name: str) -> int:
    mask = sel.trainable.get(name)
    return sizes[name] if mask is None else int(mask.sum())


def trainable_counts(model: nn.Module, sel: Selection) -> dict[str, int]:
    """Entries trained (mask entries, for learned masks): in all, without the head, inside the
    numbered encoder layers only (the paper's count, see ``trainable_table``), of them in added modules;
    and the model total (the base model's: added modules are counted over it, as the papers do)."""
    sizes = _sizes(model)
    head = set(head_names(model))
    names = list(sel.trainable) + sel.masked
    kept, kept_in_layers = _diff_kept(model, sizes, sel)
    return {
        "trained": sum(_count(sel, sizes, n) for n in names) + kept,
        "trained_encoder": sum(_count(sel, sizes, n) for n in names if n not in head) + kept,
        "trained_in_layers": sum(_count(sel, sizes, n) for n in names
                                 if n not in head and layer_of(rel_name(model, n)) is not None) + kept_in_layers,
        "added": sum(sizes[n] for n in sel.added),
        "total": sum(size for n, size in sizes.items() if not is_added(n)),
    }


def trainable_table(model: nn.Module, sel: Selection) -> str:
    """Start-of-run table: every group with its trained entries and percent of the whole model.

    The paper's percentages (BitFit 0.09%, b_q + b_m2 0.04% of BERT-base) count what trains inside
    the encoder layers (12 x 8,448 biases = 101,376) over every parameter of the model (108,311,810
    with a 2-label head): the "in the encoder layers" row. Counting the embeddings LayerNorm bias
    too still rounds to 0.09%, but adding the pooler bias gives 0.0950% and the head 0.0964%.
    """
    sizes = _sizes(model)
    counts = trainable_counts(model, sel)
    total = counts["total"]
    rows = [(label, sum(_count(sel, sizes, n) for n in names)) for label, names in sel.groups.items()]
    if sel.diffed:
        rows.insert(0, (f"difference kept ({sel.diff_sparsity:g} of {len(sel.diffed)} tensors)", diff_budget(sizes, sel)))
    totals = [("total trained", counts["trained"]), ("without the head", counts["trained_encoder"]),
              ("in the encoder layers (the paper's %)", counts["trained_in_layers"])]
    if sel.added:
        totals.append(("of which added modules", counts["added"]))
    width = max(len(label) for label, _ in rows + totals)
    line = "-" * (width + 28)

    def fmt(label, count):
        return f"{label:<{width}}  {count:>14,}  {100 * count / total:>9.4f}%"

    lines = [f"{sel.policy}: what trains", f"{'group':<{width}}  {'params trained':>14}  {'% of model':>10}", line]
    lines += [fmt(label, count) for label, count in rows] + [line] + [fmt(label, count) for label, count in totals]
    lines.append(f"{'model total':<{width}}  {total:>14,}" + ("  (the base model, without the added modules)"
                                                                  if sel.added else ""))
    if sel.diffed:
        lines.append(f"the difference is searched over every entry of those tensors for {sel.diff_search_epochs} "
                     "epoch(s) (L0 penalty), then only the kept entries train")
    if sel.masked:
        lines.append(f"(mask) rows count mask entries learned; their pretrained weights stay frozen, "
                     f"target sparsity {sel.mask_sparsity:g}")
    return "\n".join(lines)
