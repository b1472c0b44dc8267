"""Reading a model, never modifying it: encoder vs head, numbered layers, bias roles per architecture.

    encoder_params(model)        # {"bert.encoder.layer.0.attention.self.query.weight": Parameter, ...}
    head_names(model)            # ["classifier.weight", "classifier.bias"]
    rel_name(model, name)        # "encoder.layer.0.attention.self.query.weight" (relative to the encoder)
    layer_of(rel)                # 0; None for the embeddings and the pooler
    roles_for(model)["query"]    # the re.fullmatch pattern of the query bias for this architecture
"""

from __future__ import annotations

import re

from torch import nn

from ..errors import UserError


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
# Bias roles (bitfit.methods.BIAS_ROLES) per ``model.config.model_type``: patterns matched with
# re.fullmatch against parameter names relative to the encoder (``model.base_model_prefix``).
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
LAYER = re.compile(r"(?:^|\.)layers?\.(\d+)\.")  # encoder.layer.3., transformer.layer.3., layers.3.
POOLER_BIAS = re.compile(r"pooler(?:\.dense)?\.bias")


def encoder_prefix(model: nn.Module) -> str:
    """``"bert."`` for a task model; ``""`` when ``model`` is the bare encoder itself."""
    prefix = getattr(model, "base_model_prefix", "") + "."
    if prefix != "." and any(n.startswith(prefix) for n, _ in model.named_parameters()):
        return prefix
    return ""


def head_names(model: nn.Module) -> list[str]:
    """Parameters outside the encoder (``model.base_model_prefix``): the task head."""
    prefix = encoder_prefix(model)
    if not prefix:
        return []
    return [n for n, _ in model.named_parameters() if not n.startswith(prefix)]


def encoder_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """Encoder parameters by full name, in ``named_parameters`` order."""
    prefix = encoder_prefix(model)
    return {n: p for n, p in model.named_parameters() if n.startswith(prefix)}


def rel_name(model: nn.Module, name: str) -> str:
    return name[len(encoder_prefix(model)):]


def layer_of(rel: str) -> int | None:
    """The encoder layer a (relative or full) parameter name belongs to; None outside the layers."""
    match = LAYER.search(rel)
    return int(match[1]) if match else None


def num_layers(model: nn.Module) -> int:
    """Number of numbered encoder layers (0 when the encoder has none this module recognises)."""
    found = [layer_of(rel_name(model, n)) for n in encoder_params(model)]
    return max((i for i in found if i is not None), default=-1) + 1


def in_scope(model: nn.Module, names, layers: set[int] | None) -> list[str]:
    """Encoder names inside the chosen layers (all of them when no --layers)."""
    return [n for n in names if layers is None or layer_of(rel_name(model, n)) in layers]


def roles_for(model: nn.Module) -> dict[str, str]:
    model_type = getattr(model.config, "model_type", None)
    roles = ARCH_ROLES.get(model_type)
    if roles is None:
        raise UserError(f"--bias-terms has no role mapping for model type {model_type!r}; accepted: "
                        f"{', '.join(ARCH_ROLES)} (or leave --bias-terms out to train every bias)")
    return roles


def role_of(rel: str, roles: dict[str, str] | None) -> str | None:
    return next((r for r, pat in (roles or {}).items() if re.fullmatch(pat, rel)), None)


def linear_weights(model: nn.Module) -> list[str]:
    """Names of the encoder's ``nn.Linear`` weights."""
    prefix = encoder_prefix(model)
    return [f"{m}.weight" for m, mod in model.named_modules()
            if isinstance(mod, nn.Linear) and f"{m}.".startswith(prefix)]


# Parameters of modules the added-module methods put in (bitfit.policies.added): LoRA's, IA3's, the adapters'
_ADDED = re.compile(r"\.(?:lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector|ia3_l|adapter)(?:\.|$)")


def is_added(name: str) -> bool:
    """Whether a parameter name belongs to a module one of these methods added (not to the base model)."""
    return bool(_ADDED.search(name))


def added_part(name: str) -> tuple[str, str]:
    """An added parameter's module and kind: ``("...attention.self.query", "lora_A")``."""
    found = _ADDED.search(name)
    return name[:found.start()], found[0].strip(".")


def canonical(name: str) -> str:
    """A base parameter's plain name under PEFT's wrapping (``query.base_layer.bias`` -> ``query.bias``)."""
    return name.replace(".base_layer.", ".")


def plain_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every parameter of the model as loaded, by its plain name: a masked weight under its own name (its
    frozen pretrained tensor), mask scores and added modules (LoRA, IA3, adapters) left out, PEFT's
    ``base_layer`` renaming undone."""
    out = {}
    for name, p in model.named_parameters():
        if is_added(name):
            continue
        name = canonical(name)
        if ".parametrizations." in name:
            if not name.endswith(".original"):
                continue
            name = name.replace(".parametrizations.", ".").removesuffix(".original")
        out[name] = p
    return out


def base_sizes(model: nn.Module) -> dict[str, int]:
    """Sizes of ``plain_params``."""
    return {name: p.numel() for name, p in plain_params(model).items()}


def ranges(indices) -> str:
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
