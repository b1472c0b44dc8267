"""RunConfig: every setting of a run, declared once: name, flag, default, help, validation.

The command line (``python run_glue.py -h``) is generated from these declarations, and the config
is written to ``config.json`` in the run folder, so every number can be traced to the exact
settings that made it. The Python API builds one directly::

    from bitfit import RunConfig
    cfg = RunConfig(output_path="runs/rte", task_name="rte", fine_tune_type="bitfit",
                    bias_terms=["query", "intermediate"], data_dir="../shared/glue_data")

Torch-free: ``-h`` imports only this module, ``methods`` and ``tasks``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field

from .errors import UserError
from .methods import (ADDED_DEFAULTS, BIAS_ROLES, DEFAULT_MASK_SPARSITY, DIFF_DEFAULTS, LINEAR_ROLES, LORA_BIAS, METHOD_OPTIONS, METHODS,
                      check_bias_terms, get_method)
from .tasks import (CLASSIFICATION_METRICS, LOWER_IS_BETTER, REGRESSION_METRICS, check_user_task_name,
                    get_task)
from .trackers import REPORT_TO, missing_package

OPTIMIZERS = ("adamw", "adam")
SCHEDULERS = ("constant", "linear", "cosine")
PRECISIONS = ("fp32", "bf16", "fp16")
DEFAULT_MODEL = "minilm"


@dataclass(frozen=True)
class Range:
    """Accepted values of a number: ``low`` (inclusive unless ``open_low``) to ``high`` (inclusive), finite."""

    low: float
    high: float
    accepted: str
    open_low: bool = False
    integer: bool = False

    def ok(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and not isinstance(value, int):
            return False
        above = value > self.low if self.open_low else value >= self.low
        return math.isfinite(value) and above and value <= self.high


def ints(low: int, high: int = 1 << 62) -> Range:
    return Range(low, high, f"an integer from {low} to {high}", integer=True)


def setting(default, help: str, short: str | None = None, choices: tuple | None = None, check: Range | None = None,
            metavar: str | None = None, label: str | None = None):
    """A RunConfig field and everything the command line needs to offer it (``label``: its name in errors)."""
    return field(default=default, metadata={"help": help, "short": short, "choices": choices, "check": check,
                                            "metavar": metavar, "label": label})


@dataclass
class RunConfig:
    """Settings of one fine-tuning run (``python run_glue.py -h`` shows the same text)."""

    output_path: str = setting(None, "run folder to write (refused if it exists and is not empty, unless --overwrite)", "-o")
    task_name: str = setting(None, "GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli (or GLUE's spelling); "
                             "with --train-file, a name of your own for your task", "-t")
    model_name: str = setting(DEFAULT_MODEL, "Hugging Face encoder id or local folder; 'minilm' is the bundled offline "
                              "all-MiniLM-L6-v2", "-m")
    fine_tune_type: str = setting("bitfit", "which parameters train (the head always does): " + "; ".join(
        f"{m.name}: {m.trains}" for m in METHODS.values()), "-f", choices=tuple(METHODS), label="fine-tune type",
        metavar="TYPE")
    bias_terms: list[str] | None = setting(None, "bitfit only: the bias roles that train (default: every bias). Each "
                                           "selects exactly that role: 'output' is the block's output projection only "
                                           "(not the attention output), 'output_layernorm' the block's last LayerNorm "
                                           "only (not the attention LayerNorm). Roles: " + ", ".join(BIAS_ROLES),
                                           metavar="ROLE")
    layers: list[str] | None = setting(None, "restrict the method to these encoder layers: indices (9 10 11), 'last:K' "
                                       "or 'auto:K' (the K layers that move most in a short probe run)", metavar="L")
    rand_budget: int | None = setting(None, "rand_uniform only: number of trainable entries (default: the size of the "
                                      "BitFit selection)", check=ints(1))
    mask_sparsity: float | None = setting(None, f"sparse_mask only: target fraction of pretrained entries set to zero "
                                          f"(default: {DEFAULT_MASK_SPARSITY})",
                                          check=Range(0, 1 - 1e-12, "0 <= sparsity < 1"))
    lora_rank: int | None = setting(None, f"lora only: rank r of each update (default: {ADDED_DEFAULTS['lora_rank']})",
                                    check=ints(1, 1 << 16))
    lora_alpha: float | None = setting(None, f"lora only: scaling alpha; updates are scaled by alpha / r (default: "
                                       f"{ADDED_DEFAULTS['lora_alpha']:g})", check=Range(0, 1e6, "0 < alpha <= 1e6",
                                                                                           open_low=True))
    lora_dropout: float | None = setting(None, "lora only: dropout on the LoRA branch's input (default: 0)",
                                         check=Range(0, 1 - 1e-12, "0 <= dropout < 1"))
    lora_targets: list[str] | None = setting(None, "lora only: the projections that get updates, by role (default: "
                                             "query value). Roles: " + ", ".join(LINEAR_ROLES), metavar="ROLE")
    lora_bias: str | None = setting(None, "lora only: PEFT's bias option: none, all (every bias of the encoder trains "
                                    "too: LoRA + BitFit), lora_only (the biases of the targeted projections)",
                                    choices=LORA_BIAS)
    adapter_size: int | None = setting(None, f"adapters only: bottleneck width of each adapter (default: "
                                       f"{ADDED_DEFAULTS['adapter_size']})", check=ints(1, 1 << 16))
    diff_sparsity: float | None = setting(None, f"diff_prune only: fraction of the encoder's entries whose difference "
                                          f"is kept after the search (default: {DIFF_DEFAULTS['diff_sparsity']})",
                                          check=Range(0, 1, "0 < sparsity <= 1", open_low=True))
    diff_search_epochs: int | None = setting(None, "diff_prune only: epochs of the L0 search before the projection "
                                             "(default: half of --epochs); the rest train the kept differences",
                                             check=ints(1, 10_000))
    gpu_device: int | None = setting(None, "CUDA device index (default: the first GPU if there is one, else the CPU)",
                                     "-d", check=ints(0, 1 << 20))
    cpu: bool = setting(False, "run on the CPU even if a GPU is available")
    seed: int = setting(0, "random seed for initialisation, data order and random methods", "-s", check=ints(0, 2**32 - 1))
    learning_rate: float = setting(1e-3, "peak learning rate (the paper: ~1e-3 for BitFit, ~2e-5 for full fine-tuning)",
                                   "-l", check=Range(0, 1, "0 < lr <= 1", open_low=True))
    epochs: int = setting(16, "number of training epochs", "-e", check=ints(1, 10_000))
    batch_size: int = setting(8, "training batch size per device (before gradient accumulation)", "-b", check=ints(1, 1 << 20))
    eval_batch_size: int = setting(64, "evaluation and prediction batch size", check=ints(1, 1 << 20))
    optimizer: str = setting("adamw", "optimizer", choices=OPTIMIZERS)
    weight_decay: float = setting(0.0, "weight decay (decoupled for adamw, L2 for adam)", check=Range(0, math.inf, ">= 0, finite"))
    scheduler: str = setting("constant", "learning-rate schedule after warm-up", choices=SCHEDULERS)
    warmup_ratio: float = setting(0.0, "fraction of training steps with linear warm-up",
                                  check=Range(0, 1 - 1e-12, "0 <= ratio < 1"))
    grad_accum: int = setting(1, "gradient accumulation steps", check=ints(1, 1 << 20))
    max_grad_norm: float = setting(1.0, "gradient clipping norm (0 disables)", check=Range(0, math.inf, ">= 0 (0 disables), finite"))
    check_every: int = setting(50, "optimizer steps between the checks for a non-finite loss or a stop request, made "
                               "by every process together (each waits for the GPU once; also at every epoch's end): "
                               "a diverged run stops within this many steps, a signal to several processes too",
                               check=ints(1, 1 << 20))
    precision: str | None = setting(None, "fp32, or bf16/fp16 autocast; trainable parameters and optimizer state stay "
                                    "fp32 (default: what accelerate launch --mixed_precision / "
                                    "$ACCELERATE_MIXED_PRECISION says, else fp32; config.json records the one used)",
                                    choices=PRECISIONS)
    tf32: bool = setting(False, "CUDA: let fp32 matmuls use TF32 tensor cores (faster, 10-bit mantissa; off by default: "
                         "the paper trained in full fp32); no effect on the CPU")
    deterministic: bool = setting(False, "torch.use_deterministic_algorithms (and CUBLAS_WORKSPACE_CONFIG): the same "
                                  "numbers on every rerun on the same GPU, slower; an op without a deterministic "
                                  "version then fails")
    attention_dropout: float | None = setting(None, "override the model's attention-probability dropout (0 lets PyTorch "
                                              "use fused attention in training)", check=Range(0, 1 - 1e-12, "0 <= p < 1"))
    gradient_checkpointing: bool = setting(False, "recompute activations in the backward pass instead of keeping them "
                                           "(less memory, more time)")
    compile: bool = setting(False, "torch.compile the model (measure first: see docs/PERFORMANCE.md)")
    fast_cpu_ops: bool = setting(True, "training on the CPU: this tool's dropout and attention (bitfit/fastops.py: the "
                                 "same dropout distribution, less memory) instead of PyTorch's; not with --compile")
    num_workers: int = setting(0, "DataLoader worker processes per loader (0: batches are made in the training "
                               "process); on a GPU batches are also pinned and copied without blocking",
                               check=ints(0, 1024))
    max_seq_length: int = setting(128, "truncate inputs to this many tokens (batches are padded only to their longest)",
                                  check=ints(8, 1 << 20))
    group_by_length: bool = setting(True, "batch training examples of similar length together (less padding; Hugging "
                                    "Face's group_by_length)")
    max_train_samples: int | None = setting(None, "use only the first N training examples", check=ints(1))
    max_eval_samples: int | None = setting(None, "use only the first N examples of each dev split", check=ints(1))
    max_predict_samples: int | None = setting(None, "predict only the first N test examples (for quick checks; not a "
                                              "valid submission)", check=ints(1))
    data_dir: str | None = setting(None, "folder in the original GLUE TSV layout (default: $GLUE_DIR, else the datasets hub)")
    train_file: str | None = setting(None, "your own task: its training file, .csv, .tsv or .jsonl/.json (JSON Lines), "
                                     "with a header naming the columns; -t then names your task", metavar="FILE")
    validation_file: str | None = setting(None, "your own task: its dev file (same columns), evaluated every epoch",
                                          metavar="FILE")
    test_file: str | None = setting(None, "your own task: a file to predict (labels not needed), with --predict-test: "
                                    "writes test_predictions.tsv (its id column, else row numbers)", metavar="FILE")
    text_columns: list[str] | None = setting(None, "your own task: the column holding the text, or two for a pair "
                                             "(default: GLUE's names such as sentence1 sentence2, question sentence, "
                                             "sentence, text; else the first one or two columns of text)",
                                             metavar="COLUMN")
    label_column: str | None = setting(None, "your own task: the column holding the label (default: label)",
                                       metavar="COLUMN")
    id_column: str | None = setting(None, "your own task: the test file's id column, written beside each prediction "
                                    "(default: id, idx or index if there is one, else row numbers from 0)",
                                    metavar="COLUMN")
    task_type: str | None = setting(None, "your own task: classification or regression (default: read from the "
                                    "labels: numbers with a fractional part are regression, anything else classes)",
                                    choices=("classification", "regression"))
    main_metric: str | None = setting(None, "your own task: the dev metric that picks the best epoch (default: accuracy "
                                      "for classification, also macro_f1 or mcc; pearson for regression, also "
                                      "spearmanr; mse is reported, never the main one)", metavar="METRIC")
    eval_train: bool = setting(False, "also evaluate on the training set after every epoch")
    predict_test: bool = setting(False, "write GLUE submission files for the test split(s) from the best epoch")
    save_evaluator: bool = setting(False, "also write evaluator.pkl (evaluation history and config; never a module)")
    overwrite: bool = setting(False, "allow writing into a non-empty output folder")
    resume: bool = setting(False, "continue the run in --output-path from its last complete epoch (same settings)")
    keep_checkpoint: bool = setting(False, "keep the per-epoch checkpoint folder after the run completes")
    trust_remote_code: bool = setting(False, "allow models whose code lives on the hub (runs that code)")
    report_to: str = setting("none", "experiment tracker for the epoch metrics: tensorboard (event files in the run "
                             "folder's tensorboard/), wandb or mlflow (their own servers), none", choices=REPORT_TO,
                             metavar="TRACKER")
    verbose: bool = setting(True, "log progress and the trainable-parameter table (--no-verbose: warnings and errors only)")

    def __post_init__(self) -> None:
        if not self.output_path:
            raise UserError("output path is required (-o/--output-path)")
        if not self.task_name:
            raise UserError("task name is required (-t/--task-name)")
        self._check_task()
        for f in dataclasses.fields(self):
            _check(f, getattr(self, f.name))
        if missing_package(self.report_to):
            raise UserError(f"--report-to {self.report_to} needs the {missing_package(self.report_to)} package, which "
                            f"is not installed; pip install {missing_package(self.report_to)}, or --report-to none")
        if self.precision is None:  # built from its arguments only: the environment is the command layer's
            self.precision = "fp32"  # (environment_defaults); a launch's half precision is checked by the run
        if self.bias_terms is not None:
            self.bias_terms = check_bias_terms(self.bias_terms)
        self.layer_spec = None if self.layers is None else parse_layers(self.layers)
        self._check_method_options()

    def _check_task(self) -> None:
        """A GLUE task by name, or a task of the user's given as files (and the options only files take)."""
        if self.train_file is None and self.validation_file is None and self.test_file is None:
            self.task_name = get_task(self.task_name).name
            for option in FILE_OPTIONS:
                if getattr(self, option) is not None:
                    raise UserError(f"--{option.replace('_', '-')} is read only for a task given as files "
                                    f"(--train-file, --validation-file); GLUE's {get_task(self.task_name).glue_name} "
                                    "has its own columns and metrics: leave it out")
            return
        check_user_task_name(self.task_name)
        if self.train_file is None or self.validation_file is None:
            raise UserError(f"a task given as files needs --train-file and --validation-file; "
                            f"{'--train-file' if self.train_file is None else '--validation-file'} is missing")
        if self.data_dir is not None:
            raise UserError(f"--data-dir {self.data_dir!r} is GLUE's folder; a task given as files (--train-file) does "
                            "not read it: leave it out")
        if self.test_file is not None and not self.predict_test:
            raise UserError(f"--test-file {self.test_file!r} is read only with --predict-test: add --predict-test "
                            "(or leave the test file out)")
        if self.predict_test and self.test_file is None:
            raise UserError("--predict-test on a task given as files needs --test-file: the file to predict")
        if self.main_metric is not None and self.main_metric not in MAIN_METRICS:
            kind = ("cannot pick the best epoch (lower is better; it is reported beside the others)"
                    if self.main_metric in LOWER_IS_BETTER else "is unknown")
            raise UserError(f"main metric {self.main_metric!r} {kind}; accepted: {', '.join(CLASSIFICATION_METRICS)} "
                            f"(classification), {', '.join(m for m in REGRESSION_METRICS if m not in LOWER_IS_BETTER)} "
                            "(regression)")
        if self.text_columns is not None and not 1 <= len(self.text_columns) <= 2:
            raise UserError(f"--text-columns {' '.join(self.text_columns)}: {len(self.text_columns)} columns; "
                            "accepted: one column, or two (a pair)")

    def _check_method_options(self) -> None:
        """Refuse a method's option given to another method; fill the method's own defaults."""
        method = get_method(self.fine_tune_type)
        for option, owner in METHOD_OPTIONS.items():
            if getattr(self, option) is not None and owner != method.name:
                raise UserError(f"--{option.replace('_', '-')} is read only by fine-tune type {owner!r}; "
                                f"{method.name!r} ignores it: leave it out (or use -f {owner})")
        if self.layers is not None and not method.takes_layers:
            raise UserError(f"--layers {' '.join(map(str, self.layers))} has no effect on fine-tune type "
                            f"{method.name!r} (only the head trains): leave it out")
        if method.name == "layers" and self.layers is None:
            raise UserError(f"fine-tune type 'layers' needs --layers; accepted: {LAYERS_ACCEPTED}")
        if method.name == "sparse_mask" and self.mask_sparsity is None:
            self.mask_sparsity = DEFAULT_MASK_SPARSITY
        for option, default in ADDED_DEFAULTS.items():
            if METHOD_OPTIONS[option] == method.name and getattr(self, option) is None:
                setattr(self, option, list(default) if isinstance(default, list) else default)
        if method.name == "diff_prune":
            if self.diff_sparsity is None:
                self.diff_sparsity = DIFF_DEFAULTS["diff_sparsity"]
            if self.diff_search_epochs is None:
                self.diff_search_epochs = max(1, self.epochs // 2)
            if self.diff_search_epochs >= self.epochs:
                raise UserError(f"diff_prune searches for {self.diff_search_epochs} epoch(s) and then trains the kept "
                                f"differences, so -e/--epochs {self.epochs} is too few; accepted: --epochs of at least "
                                f"{self.diff_search_epochs + 1} (or fewer --diff-search-epochs)")
        if self.lora_targets is not None:
            bad = [t for t in self.lora_targets if t not in LINEAR_ROLES]
            if bad or not self.lora_targets:
                raise UserError(f"unknown LoRA target {bad[0] if bad else '(none)'!r}; accepted: one or more of "
                                f"{', '.join(LINEAR_ROLES)}")
            self.lora_targets = list(dict.fromkeys(self.lora_targets))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def compared_on_resume(self) -> set[str]:
        """The settings a resumed run must share with the original: all but ``RESUMABLE_CHANGES`` and
        other methods' options (which this method never reads)."""
        others = {opt for opt, owner in METHOD_OPTIONS.items() if owner != self.fine_tune_type}
        return {f.name for f in dataclasses.fields(self)} - RESUMABLE_CHANGES - others


# What --main-metric accepts (mse is reported, but cannot pick the best epoch: lower is better)
MAIN_METRICS = tuple(m for m in CLASSIFICATION_METRICS + REGRESSION_METRICS if m not in LOWER_IS_BETTER)

# Settings only a task given as files reads (besides the files themselves).
FILE_OPTIONS = ("text_columns", "label_column", "id_column", "task_type", "main_metric")

# Settings a resumed run may change; everything else must equal the original run's.
# num_workers only changes which process collates the same batches; check_every only when a stop is noticed;
# deterministic only which kernels compute the same arithmetic (as another GPU does). tf32 changes the arithmetic
# itself, so, like precision, it is compared.
RESUMABLE_CHANGES = frozenset({"resume", "overwrite", "verbose", "keep_checkpoint", "eval_batch_size", "gpu_device",
                               "report_to", "num_workers", "deterministic", "check_every"})

# accelerate launch --mixed_precision, as it hands it to the processes it starts
LAUNCH_PRECISION = {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}


def environment_defaults(settings: dict, env=None) -> dict:
    """``settings`` (RunConfig's fields) with the defaults a command takes from its environment, resolved once,
    by the command layer, so that a RunConfig means the same run wherever it is built and config.json records
    what was used: ``data_dir`` from ``$GLUE_DIR``, ``precision`` from accelerate launch's ``--mixed_precision``."""
    env = os.environ if env is None else env
    out = dict(settings)
    if out.get("data_dir") is None and not any(out.get(k) for k in ("train_file", "validation_file", "test_file")):
        out["data_dir"] = default_data_dir(env)
    out["precision"] = resolve_precision(out.get("precision"), env)
    return out


def resolve_precision(given: str | None, env=None) -> str:
    """The precision a run uses: ``--precision`` if given, else accelerate launch's (``$ACCELERATE_MIXED_PRECISION``),
    else fp32. Refuses a launch precision this tool has no use for, and a given one that contradicts the launch's
    half precision (a launch's "no" is its default, not a choice: an explicit --precision overrides it)."""
    launch = (os.environ if env is None else env).get("ACCELERATE_MIXED_PRECISION")
    if launch is None or (given is not None and launch == "no"):
        return given or "fp32"
    if launch not in LAUNCH_PRECISION:
        raise UserError(f"accelerate launch's mixed precision {launch!r} is not supported here; accepted: "
                        f"{', '.join(LAUNCH_PRECISION)} (or leave it out and pass --precision)")
    if given is not None and given != LAUNCH_PRECISION[launch]:
        raise UserError(f"--precision {given} contradicts accelerate launch's --mixed_precision {launch}; give one of "
                        f"them, or the same precision to both")
    return LAUNCH_PRECISION[launch]


def check_settings(values: dict, where: str = "", labels: dict[str, str] | None = None) -> None:
    """Check settings read from elsewhere (a delta's config, a command's flags) exactly as a run's flags are
    checked: each value of a RunConfig field in ``values`` against that field's choices and range; other keys
    are left alone. ``where`` prefixes the error (e.g. the delta's path); ``labels`` names a value as its
    command's flag (``{"eval_batch_size": "--batch-size"}``)."""
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    for name, value in values.items():
        if name in fields:
            _check(fields[name], value, (labels or {}).get(name), where)


def _check(f: dataclasses.Field, value, label: str | None = None, where: str = "") -> None:
    label = label or f.metadata.get("label") or f.name.replace("_", " ")
    where = f"{where}: " if where else ""
    choices, check = f.metadata.get("choices"), f.metadata.get("check")
    if value is None:
        return
    if choices and value not in choices:
        raise UserError(f"{where}unknown {label} {value!r}; accepted: {', '.join(choices)}")
    if check and not check.ok(value):
        raise UserError(f"{where}{label} {value!r} is out of range; accepted: {check.accepted}")


def default_data_dir(env=None) -> str | None:
    """``$GLUE_DIR`` if set (the one place it is read), else None (the datasets hub)."""
    return (os.environ if env is None else env).get("GLUE_DIR") or None


# ---------------------------------------------------------------------------------------------
# --layers, parsed once here; bitfit.policies resolves it against the model's depth


LAYERS_ACCEPTED = "layer indices (e.g. 9 10 11), last:K or auto:K"


@dataclass(frozen=True)
class LayerSpec:
    """A parsed ``--layers``: explicit indices, or ``last:K`` / ``auto:K`` (K > 0)."""

    indices: tuple[int, ...] = ()
    last: int = 0
    auto: int = 0

    def resolve(self, num_layers: int) -> LayerSpec:
        """Check against a model with ``num_layers`` layers; ``last:K`` becomes indices."""
        k = self.last or self.auto
        if k > num_layers:
            kind = "last" if self.last else "auto"
            raise UserError(f"layers '{kind}:{k}' asks for more layers than the model has; accepted: K from 1 to {num_layers}")
        if self.last:
            return LayerSpec(indices=tuple(range(num_layers - k, num_layers)))
        if self.indices and self.indices[-1] >= num_layers:
            raise UserError(f"layer {self.indices[-1]} is out of range; accepted: 0 to {num_layers - 1} "
                            f"(the model has {num_layers} layers)")
        return self


def parse_layers(spec: list[str] | str) -> LayerSpec:
    """``["9", "10"]``, ``["9,10"]``, ``["last:3"]``, ``["auto:3"]`` -> LayerSpec; syntax only."""
    tokens = [t for item in ([spec] if isinstance(spec, str) else spec) for t in re.split(r"[,\s]+", str(item)) if t]
    if not tokens:
        raise UserError(f"empty layers value {spec!r}; accepted: {LAYERS_ACCEPTED}")
    if any(":" in t for t in tokens):
        match = re.fullmatch(r"(last|auto):(\d+)", tokens[0])
        if len(tokens) != 1 or match is None or int(match[2]) == 0:
            raise UserError(f"bad layers value {' '.join(tokens)!r}; accepted: {LAYERS_ACCEPTED} (K > 0, alone)")
        return LayerSpec(last=int(match[2])) if match[1] == "last" else LayerSpec(auto=int(match[2]))
    bad = [t for t in tokens if not re.fullmatch(r"\d+", t)]
    if bad:
        raise UserError(f"bad layers value {bad[0]!r}; accepted: {LAYERS_ACCEPTED}")
    return LayerSpec(indices=tuple(sorted({int(t) for t in tokens})))
