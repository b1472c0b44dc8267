"""Methods that add modules to the encoder: ``lora`` and ``ia3`` through PEFT, ``adapters`` (Houlsby) of our own.

    sel = select(model, cfg)        # Selection.addition: which modules get what (the model is not touched)
    guard = apply(model, sel)       # attach(model, sel.addition): the modules go in, their parameters train
    merge(model)                    # LoRA / IA3: PEFT's own merge into the plain weights; adapters: refused

The selector only chooses: the projections to wrap (module names, found by the same per-architecture role
map BitFit uses, ``anatomy.ARCH_ROLES``, so ``--layers`` and DistilBERT/DeBERTa work as for BitFit) and the
base tensors that train beside the added ones (LoRA's ``--lora-bias``; the LayerNorms for adapters, as in
Houlsby et al.). ``attach`` puts the modules in:

- LoRA and IA3 by ``peft.inject_adapter_in_model`` with a ``LoraConfig`` / ``IA3Config`` naming exactly those
  modules: PEFT's layers, initialisation, forward and merge, unchanged. PEFT renames a wrapped projection's
  weight ``query.weight`` -> ``query.base_layer.weight``; everything here names base tensors by their plain
  name (``canonical``), so deltas, fingerprints and tables never see PEFT's renaming.
- Adapters (Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP"): after the attention
  output projection and the feed-forward output projection of every layer, ``h + up(gelu(down(h)))``, with
  ``down``/``up`` drawn from a normal of std 1e-3 truncated at two std (Houlsby's code: near-identity at
  the start) and zero biases. The adapted projection (``AdaptedLinear``) holds the *same* weight and bias
  parameters as the projection it replaces, so the model's own names stay; the adapter's are
  ``<projection>.adapter.{down,up}.{weight,bias}``. One deviation, said in docs/METHODS.md: the adapter sits
  right after the projection, before the sublayer's dropout (Houlsby's code puts it after the dropout);
  wrapping the projection leaves the architecture's own module code untouched.

``detach``/``swap_in`` take the added modules out and put them back (the serving backbone switches tasks
that way): the original projection objects are kept, so a base tensor is one tensor whichever is in place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..methods import ADDED_DEFAULTS
from .anatomy import POOLER_BIAS, canonical, encoder_params, in_scope, is_added, ranges, rel_name, roles_for
from .selection import Selection, with_head

ADAPTER_INIT_STD = 1e-3
IA3_TARGETS = ("key", "value", "output")  # (IA)^3 (Liu et al. 2022): keys, values, the feed-forward's inner activation
IA3_FEEDFORWARD = ("output",)  # scaled on its input: the feed-forward's inner activation
ADAPTER_TARGETS = ("attention_output", "output")
ADAPTER_LAYERNORMS = ("attention_layernorm", "output_layernorm")

@dataclass
class Addition:
    """What an added-module method puts into a model: which projections, and its options."""

    method: str  # lora, ia3, adapters
    targets: list[str]  # full module names of the projections that get a module
    options: dict = field(default_factory=dict)  # lora: r, alpha, dropout, bias; ia3: feedforward; adapters: size

    def describe(self) -> str:
        return {"lora": lambda o: f"LoRA rank {o['r']}, alpha {o['alpha']:g}, dropout {o['dropout']:g}, bias {o['bias']}",
                "ia3": lambda o: "IA3 scaling vectors",
                "adapters": lambda o: f"Houlsby adapters of size {o['size']}"}[self.method](self.options)


# ---------------------------------------------------------------------------------------------
# Choosing


def role_modules(model: nn.Module, roles: tuple[str, ...] | list[str], scope, method: str) -> dict[str, list[str]]:
    """role -> full names of the projections (modules) whose bias has that role, in the layers in scope."""
    patterns = roles_for(model)
    candidates = in_scope(model, [n for n in encoder_params(model) if n.endswith(".bias")], scope)
    found = {}
    for role in roles:
        hits = [n.removesuffix(".bias") for n in candidates if re.fullmatch(patterns[role], rel_name(model, n))]
        if not hits:
            where = "" if scope is None else f" within layers {ranges(scope)}"
            raise UserError(f"{method}: role {role!r} selects no projection of this {model.config.model_type} "
                            f"model{where}; accepted: a role this architecture has")
        found[role] = hits
    return found


def _option(cfg, name: str):
    value = getattr(cfg, name, None)
    return ADDED_DEFAULTS[name] if value is None else value


def lora(model, cfg, scope) -> Selection:
    by_role = role_modules(model, _option(cfg, "lora_targets"), scope, "lora")
    targets = [m for ms in by_role.values() for m in ms]
    bias = _option(cfg, "lora_bias")
    if bias == "all":  # every bias of the encoder, as BitFit (with its pooler bias, which trains with the head)
        biases = in_scope(model, [n for n in encoder_params(model) if n.endswith(".bias")], scope)
        biases += [n for n in encoder_params(model) if POOLER_BIAS.fullmatch(rel_name(model, n)) and n not in biases]
    elif bias == "lora_only":
        biases = [f"{m}.bias" for m in targets]
    else:
        biases = []
    addition = Addition("lora", targets, {"r": int(_option(cfg, "lora_rank")), "alpha": float(_option(cfg, "lora_alpha")),
                                          "dropout": float(_option(cfg, "lora_dropout")), "bias": bias})
    return Selection("lora", with_head(model, biases), addition=addition, notes=[f"lora: {addition.describe()} on "
                     f"{len(targets)} projections ({', '.join(by_role)})"])


def ia3(model, cfg, scope) -> Selection:
    by_role = role_modules(model, IA3_TARGETS, scope, "ia3")
    addition = Addition("ia3", [m for ms in by_role.values() for m in ms],
                        {"feedforward": [m for r in IA3_FEEDFORWARD for m in by_role[r]]})
    return Selection("ia3", with_head(model, []), addition=addition,
                     notes=[f"ia3: scaling vectors on {len(addition.targets)} projections ({', '.join(by_role)})"])


def adapters(model, cfg, scope) -> Selection:
    by_role = role_modules(model, ADAPTER_TARGETS, scope, "adapters")
    norms = role_modules(model, ADAPTER_LAYERNORMS, scope, "adapters")
    layernorms = [f"{m}.{t}" for ms in norms.values() for m in ms for t in ("weight", "bias")]
    size = int(_option(cfg, "adapter_size"))
    addition = Addition("adapters", [m for ms in by_role.values() for m in ms], {"size": size})
    return Selection("adapters", with_head(model, layernorms), addition=addition,
                     notes=[f"adapters: {addition.describe()} after {len(addition.targets)} projections, "
                            "LayerNorms trained"])


def addition_for(model: nn.Module, method: str, config: dict) -> Addition:
    """The Addition a run of ``method`` with settings ``config`` (a RunConfig as a dict) made: a delta's reader
    rebuilds it from the delta's metadata."""
    from types import SimpleNamespace

    from ..config import parse_layers

    scope = None
    if config.get("layers"):
        spec = parse_layers(config["layers"])
        if spec.auto:  # the layers auto:K picked are in the run's notes, not its settings: use every layer, then
            scope = None  # keep the targets the delta has tensors for (see ``trim``)
        else:
            from .anatomy import num_layers

            scope = set(spec.resolve(num_layers(model)).indices)
    return SELECTORS[method](model, SimpleNamespace(**config), scope).addition


def trim(addition: Addition, tensor_names) -> Addition:
    """``addition`` restricted to the targets that have tensors in ``tensor_names`` (a delta of ``--layers auto:K``)."""
    have = {n for n in tensor_names if is_added(n)}
    targets = [t for t in addition.targets if any(n.startswith(t + ".") for n in have)]
    options = dict(addition.options)
    if "feedforward" in options:
        options["feedforward"] = [t for t in options["feedforward"] if t in targets]
    return Addition(addition.method, targets, options)


# ---------------------------------------------------------------------------------------------
# Attaching, detaching, merging


def _peft_config(addition: Addition):
    from peft import IA3Config, LoraConfig

    o = addition.options
    if addition.method == "lora":
        return LoraConfig(r=o["r"], lora_alpha=o["alpha"], lora_dropout=o["dropout"], bias=o["bias"],
                          target_modules=list(addition.targets))
    return IA3Config(target_modules=list(addition.targets), feedforward_modules=list(o["feedforward"]))


def attach(model: nn.Module, addition: Addition) -> list[str]:
    """Put the modules in (in place); returns the added parameters' names, in the model's order."""
    if not addition.targets:
        return []
    if addition.method == "adapters":
        for name in addition.targets:
            parent, _, attr = name.rpartition(".")
            base = model.get_submodule(name)
            setattr(model.get_submodule(parent), attr, AdaptedLinear(base, addition.options["size"]))
    else:
        from peft import inject_adapter_in_model

        requires = {n: p.requires_grad for n, p in model.named_parameters()}
        inject_adapter_in_model(_peft_config(addition), model)
        if "peft_config" in vars(model):  # PEFT's bookkeeping on the model: save_pretrained must not see it
            del model.peft_config
        for n, p in model.named_parameters():  # PEFT freezes the rest; what trains is apply()'s decision
            if not is_added(n):
                p.requires_grad_(requires.get(canonical(n), p.requires_grad))
    return [n for n, _ in model.named_parameters() if is_added(n)]


def _wrappers(model: nn.Module) -> dict[str, nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {n: m for n, m in model.named_modules() if isinstance(m, (BaseTunerLayer, AdaptedLinear))}


def base_of(module: nn.Module) -> nn.Module:
    return module.base if isinstance(module, AdaptedLinear) else module.get_base_layer()


def detach(model: nn.Module) -> dict[str, nn.Module]:
    """Take every added module out (the original projections go back); returns them by module name."""
    found = _wrappers(model)
    for name, wrapper in found.items():
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, base_of(wrapper))
    return found


def swap_out(model: nn.Module, modules: dict[str, nn.Module]) -> None:
    """Put the original projections back in place of ``modules`` (as ``detach`` returned them)."""
    for name, wrapper in modules.items():
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, base_of(wrapper))


def swap_in(model: nn.Module, modules: dict[str, nn.Module]) -> None:
    """Put modules ``detach`` returned back in place."""
    for name, wrapper in modules.items():
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, wrapper)


MERGE_REFUSED = ("adapters cannot be merged into a plain Hugging Face model: they add layers (a bottleneck MLP after "
                 "two projections of every block) that the architecture has no place for; serve the delta instead "
                 "(python -m bitfit predict --delta ...)")


def merge(model: nn.Module) -> None:
    """Fold LoRA / IA3 into the plain weights with PEFT's own ``merge``, then take the layers out."""
    found = _wrappers(model)
    if any(isinstance(m, AdaptedLinear) for m in found.values()):
        raise UserError(MERGE_REFUSED)
    for wrapper in found.values():
        wrapper.merge()
    detach(model)


class Adapter(nn.Module):
    """Houlsby's bottleneck: ``h + up(gelu(down(h)))``."""

    def __init__(self, width: int, size: int):
        super().__init__()
        self.down, self.up = nn.Linear(width, size), nn.Linear(size, width)
        for layer in (self.down, self.up):
            nn.init.trunc_normal_(layer.weight, std=ADAPTER_INIT_STD, a=-2 * ADAPTER_INIT_STD, b=2 * ADAPTER_INIT_STD)
            nn.init.zeros_(layer.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(F.gelu(self.down(h)))


class AdaptedLinear(nn.Linear):
    """A projection followed by its adapter; holds the projection's own weight and bias parameters."""

    def __init__(self, base: nn.Linear, size: int):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.adapter = Adapter(base.out_features, size).to(base.weight.device, base.weight.dtype)
        object.__setattr__(self, "base", base)  # not a submodule: its parameters are already ours

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(F.linear(x, self.weight, self.bias))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, adapter_size={self.adapter.down.out_features}"


SELECTORS = {"lora": lora, "ia3": ia3, "adapters": adapters}
