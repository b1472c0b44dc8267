"""Fine-tune methods as policies: each only *chooses* what trains; ``apply`` makes the model obey.

    from bitfit.policies import select, apply, trainable_table
    sel = select(model, cfg)          # pure: names (and entry masks) of what trains
    print(trainable_table(model, sel))
    guard = apply(model, sel)         # requires_grad, gradient masks, mask parametrizations
    ... opt.step(); guard.after_step()

One module per family of methods (``bitfit.methods.METHODS[name].family``):

    anatomy.py     reading a model: encoder vs head, numbered layers, bias roles per architecture
    selection.py   Selection: what a method chose
    whole.py       full_ft, frozen, layers (+ the probe that ranks layers for --layers auto:K)
    bias.py        bitfit (--bias-terms roles)
    random.py      rand_uniform, rand_row_col
    sparse.py      sparse_mask: learned binary masks over frozen weights
    diff.py        diff_prune: a gated, L0-searched difference, then its largest entries
    added.py       lora, ia3 (PEFT), adapters (Houlsby): modules added to the encoder
    apply.py       apply(model, sel) -> Guard: the one place a choice is enforced
    accounting.py  counts and the start-of-run table

The task head (every parameter outside ``model.base_model_prefix``) always trains, and
``--layers`` restricts the encoder part of any method to some encoder layers (the embeddings and
the pooler are not layers). A new method: a row in ``bitfit.methods.METHODS``, a selector
``(model, cfg, scope) -> Selection`` in its family's module, and an entry in ``SELECTORS``.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from ..config import LAYERS_ACCEPTED, LayerSpec
from ..errors import UserError
from ..methods import METHODS
from . import added, bias, diff, random, sparse, whole
from .accounting import groups, trainable_counts, trainable_table
from .anatomy import head_names, num_layers
from .apply import Guard, apply
from .selection import Selection

SELECTORS: dict[str, Callable] = {
    "full_ft": whole.full_ft, "frozen": whole.frozen, "layers": whole.layers, "bitfit": bias.bitfit,
    "rand_uniform": random.rand_uniform, "rand_row_col": random.rand_row_col, "sparse_mask": sparse.sparse_mask,
    "diff_prune": diff.diff_prune, **added.SELECTORS,
}
assert set(SELECTORS) == set(METHODS), "bitfit.methods.METHODS and policies.SELECTORS disagree"

__all__ = ["SELECTORS", "Guard", "Selection", "apply", "head_names", "layer_scope", "num_layers", "select",
           "trainable_counts", "trainable_table"]


def layer_scope(model: nn.Module, spec: LayerSpec | None, probe=None,
                on_main: Callable[[Callable], object] | None = None) -> tuple[set[int] | None, list[str]]:
    """The encoder layers ``--layers`` means on this model (None: all), and notes for the user.

    ``on_main(fn)`` runs ``fn`` once for all processes (on the main one, its result shared with the
    others): the ``auto:K`` probe then runs once and every process trains the same layers.
    """
    if spec is None:
        return None, []
    depth = num_layers(model)
    if depth == 0:
        raise UserError(f"--layers needs numbered encoder layers, and this {getattr(model.config, 'model_type', '?')} "
                        f"model has none this tool recognises; accepted: leave --layers out ({LAYERS_ACCEPTED})")
    spec = spec.resolve(depth)
    if spec.auto:
        picked, note = (on_main or _here)(lambda: whole.auto_layers(model, spec.auto, probe))
        return picked, [note]
    return set(spec.indices), []


def _here(fn: Callable):
    return fn()


def select(model: nn.Module, cfg, probe: Callable[[nn.Module], None] | None = None,
           on_main: Callable[[Callable], object] | None = None) -> Selection:
    """Choose what trains under ``cfg.fine_tune_type``; never modifies ``model``.

    ``probe`` (for ``--layers auto:K``) trains a copy of the model briefly in place; ``on_main``: see
    ``layer_scope``.
    """
    selector = SELECTORS.get(cfg.fine_tune_type)
    if selector is None:
        raise UserError(f"unknown fine-tune type {cfg.fine_tune_type!r}; accepted: {', '.join(SELECTORS)}")
    scope, notes = layer_scope(model, cfg.layer_spec, probe, on_main)
    sel = selector(model, cfg, scope)
    sel.notes = notes + sel.notes
    sel.groups = groups(model, list(sel.trainable) + sel.masked, sel)
    return sel
