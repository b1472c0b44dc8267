"""``bitfit``: the encoder's bias terms, or the roles ``--bias-terms`` names, plus the pooler bias.

Roles are mapped per architecture (``anatomy.ARCH_ROLES``) and matched with ``re.fullmatch``, so
``output`` is the block's output projection only, never the attention output, and
``output_layernorm`` never the attention LayerNorm (``all`` needs no mapping). The pooler bias,
where the encoder has one, trains with the head, as in the paper's code, whatever ``--bias-terms``
and ``--layers`` say.
"""

from __future__ import annotations

import re

from ..errors import UserError
from ..methods import check_bias_terms
from .anatomy import POOLER_BIAS, encoder_params, in_scope, ranges, rel_name, roles_for
from .selection import Selection, with_head


def encoder_biases(model, scope) -> list[str]:
    return in_scope(model, [n for n in encoder_params(model) if n.endswith(".bias")], scope)


def _role_biases(model, terms: list[str], scope) -> list[str]:
    roles = roles_for(model)
    candidates = in_scope(model, encoder_params(model), scope)
    names: list[str] = []
    for term in terms:
        hits = [n for n in candidates if re.fullmatch(roles[term], rel_name(model, n))]
        if not hits:
            where = "" if scope is None else f" within layers {ranges(scope)}"
            present = [r for r in roles if any(re.fullmatch(roles[r], rel_name(model, n)) for n in candidates)]
            raise UserError(f"bias term {term!r} selects no parameter of this {model.config.model_type} model{where}; "
                            f"accepted: {', '.join(present)}, all")
        names += [n for n in hits if n not in names]
    return names


def bitfit(model, cfg, scope):
    terms = check_bias_terms(cfg.bias_terms) if cfg.bias_terms else None
    names = encoder_biases(model, scope) if not terms or "all" in terms else _role_biases(model, terms, scope)
    # the paper's code always trains the pooler bias alongside the classifier
    names += [n for n in encoder_params(model) if POOLER_BIAS.fullmatch(rel_name(model, n)) and n not in names]
    return Selection("bitfit", with_head(model, names))
