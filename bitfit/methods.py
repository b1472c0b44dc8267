"""The registry of fine-tune methods: the one list every other part derives from.

    from bitfit.methods import METHODS, get_method
    get_method("bitfit").options          # ('bias_terms',): the settings only this method reads
    list(METHODS)                         # CLI choices (-f), and the report's row order

Facts only, no torch: the command line imports this to build ``-h``. The code that *chooses*
parameters for a method lives in ``bitfit.policies.<family>`` (``Method.family``).

Adding a method: one row here, one function in the policies module of its family, registered in
``bitfit.policies.SELECTORS`` under the same name (a test checks the two registries agree).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UserError


@dataclass(frozen=True)
class Method:
    """One fine-tune method (``-f``)."""

    name: str
    family: str  # the bitfit.policies module holding its selector
    trains: str  # one line: what trains (help text, README)
    options: tuple[str, ...] = ()  # RunConfig fields only this method reads; other methods refuse them
    takes_layers: bool = True  # whether --layers restricts it
    flop_factor: int = 2  # forward-sized matmul passes per step: 3 full (weight grads), 2 input grads only, 1 frozen
    adds: bool = False  # adds modules of its own to the encoder (bitfit.policies.added); they train, the rest frozen


# In the papers' row order (the report's tables follow it): Table 1's full fine-tuning, Adapters, BitFit (with
# LoRA and IA3, the modern rows, beside it), then Table 2's and 3's comparators.
METHODS: dict[str, Method] = {m.name: m for m in (
    Method("full_ft", "whole", "everything", flop_factor=3),
    Method("adapters", "added", "Houlsby bottleneck adapters (--adapter-size) after the attention output and the "
           "feed-forward output of every layer, plus the LayerNorms", options=("adapter_size",), adds=True),
    Method("diff_prune", "diff", "Diff-Pruning: a gated difference over the encoder's tensors with an L0 penalty for "
           "--diff-search-epochs, then only the --diff-sparsity largest differences train", flop_factor=3,
           options=("diff_sparsity", "diff_search_epochs")),
    Method("bitfit", "bias", "the encoder's bias terms (--bias-terms narrows them to roles) and the pooler bias",
           options=("bias_terms",)),
    Method("lora", "added", "PEFT's LoRA: low-rank updates of the --lora-targets projections (query, value); "
           "--lora-bias all adds BitFit's biases", options=("lora_rank", "lora_alpha", "lora_dropout", "lora_targets",
                                                           "lora_bias"), adds=True),
    Method("ia3", "added", "PEFT's IA3: learned scalings of the key and value projections and the feed-forward "
           "output's input", adds=True),
    Method("layers", "whole", "every parameter of the --layers only", flop_factor=3),
    Method("sparse_mask", "sparse", "a binary mask over the encoder's weight matrices (--mask-sparsity zeros); "
           "weights never change", options=("mask_sparsity",)),
    Method("rand_uniform", "random", "k random encoder entries, uniformly without replacement (k = BitFit's count, "
           "or --rand-budget)", options=("rand_budget",)),
    Method("rand_row_col", "random", "one random row or column of every encoder weight matrix"),
    Method("frozen", "whole", "nothing but the head", takes_layers=False, flop_factor=1),
)}

DEFAULT_MASK_SPARSITY = 0.01  # sparse_mask's --mask-sparsity when none is given
# The added-module methods' defaults: LoRA as the LoRA paper's GLUE runs on RoBERTa (rank 8, alpha 8, query and
# value; Hu et al. 2022, Table 9), Houlsby adapters at size 64 (Houlsby et al. 2019 pick 8, 64 or 256 per task).
ADDED_DEFAULTS = {"lora_rank": 8, "lora_alpha": 8.0, "lora_dropout": 0.0, "lora_targets": ["query", "value"],
                  "lora_bias": "none", "adapter_size": 64}
# Diff-Pruning: the paper's 0.5% target; the search epochs default to half the run (the paper: 3 of 3 + 3)
DIFF_DEFAULTS = {"diff_sparsity": 0.005}
LORA_BIAS = ("none", "all", "lora_only")  # PEFT's LoraConfig.bias
LINEAR_ROLES = ("query", "key", "value", "attention_output", "intermediate", "output")  # what --lora-targets accepts

# Settings that belong to one method (each appears in exactly one Method.options).
METHOD_OPTIONS: dict[str, str] = {opt: m.name for m in METHODS.values() for opt in m.options}

# BitFit's bias roles in the order of a transformer block, with the label tables and figures use.
BIAS_ROLES: dict[str, str] = {
    "query": "query", "key": "key", "value": "value", "attention_output": "attention output",
    "intermediate": "intermediate", "output": "output", "attention_layernorm": "attention LayerNorm",
    "output_layernorm": "output LayerNorm", "embeddings_layernorm": "embeddings LayerNorm", "all": "all biases",
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise UserError(f"unknown fine-tune type {name!r}; accepted: {', '.join(METHODS)}")
    return METHODS[name]


def check_bias_terms(terms: list[str]) -> list[str]:
    for term in terms:
        if term not in BIAS_ROLES:
            raise UserError(f"unknown bias term {term!r}; accepted: {', '.join(BIAS_ROLES)}")
    return list(terms)


def method_label(cfg: dict) -> str:
    """``bitfit``, ``bitfit (query, intermediate)``, ``full_ft (layers 9 10 11)``, ``rand_uniform (budget 1,000)``:
    a run's method with the options that make it differ from the method's default."""
    kind = cfg["fine_tune_type"]
    extras = []
    terms = cfg.get("bias_terms")
    if kind == "bitfit" and terms and "all" not in terms:
        extras.append(", ".join(sorted(set(terms), key=list(BIAS_ROLES).index)))
    if kind == "rand_uniform" and cfg.get("rand_budget") is not None:
        extras.append(f"budget {cfg['rand_budget']:,}")
    if kind == "sparse_mask":
        sparsity = cfg.get("mask_sparsity")
        extras.append(f"sparsity {DEFAULT_MASK_SPARSITY if sparsity is None else sparsity:g}")
    if kind == "lora":
        options = {k: cfg.get(k) if cfg.get(k) is not None else v for k, v in ADDED_DEFAULTS.items() if k.startswith("lora")}
        extras.append(f"r {options['lora_rank']}")
        if options["lora_targets"] != ADDED_DEFAULTS["lora_targets"]:
            extras.append(", ".join(options["lora_targets"]))
        if options["lora_bias"] != "none":
            extras.append(f"bias {options['lora_bias']}")
    if kind == "diff_prune":
        extras.append(f"sparsity {cfg.get('diff_sparsity') or DIFF_DEFAULTS['diff_sparsity']:g}")
    if kind == "adapters":
        extras.append(f"size {cfg.get('adapter_size') or ADDED_DEFAULTS['adapter_size']}")
    if cfg.get("layers"):
        extras.append("layers " + " ".join(map(str, cfg["layers"])))
    return kind + (f" ({'; '.join(extras)})" if extras else "")
