"""RunConfig: every setting of a run, documented and validated in one place.

The config is written to ``config.json`` in the run folder, so every number can be traced to the
exact settings that made it. ``run_glue.py`` builds one from the command line; the Python API
builds one directly::

    from bitfit.config import RunConfig
    cfg = RunConfig(output_path="runs/rte", task_name="rte", fine_tune_type="bitfit",
                    bias_terms=["query", "intermediate"], data_dir="../shared/glue_data")
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from .errors import UserError
from .tasks import get_task

FINE_TUNE_TYPES = ("full_ft", "bitfit", "frozen", "rand_uniform", "rand_row_col", "layers", "sparse_mask")
OPTIMIZERS = ("adamw", "adam")
SCHEDULERS = ("constant", "linear", "cosine")
PRECISIONS = ("fp32", "bf16", "fp16")
DEFAULT_MODEL = "minilm"


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class RunConfig:
    """Settings of one fine-tuning run (see ``python run_glue.py -h`` for the same text)."""

    output_path: str = _f(None, "run folder to write (refused if it exists and is not empty, unless --overwrite)")
    task_name: str = _f(None, "GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli (or GLUE's spelling)")
    model_name: str = _f(DEFAULT_MODEL, "Hugging Face encoder id or local folder; 'minilm' is the bundled offline all-MiniLM-L6-v2")
    fine_tune_type: str = _f("bitfit", "which parameters train: " + ", ".join(FINE_TUNE_TYPES))
    bias_terms: list[str] | None = _f(None, "bias roles BitFit trains (default: every bias)")
    layers: list[str] | None = _f(None, "restrict the policy to these encoder layers: indices, 'last:K' or 'auto:K'")
    rand_budget: int | None = _f(None, "rand_uniform: number of trainable entries (default: the size of the BitFit selection)")
    mask_sparsity: float = _f(0.01, "sparse_mask: target fraction of pretrained entries set to zero")
    gpu_device: int | None = _f(None, "CUDA device index (default: the first GPU if there is one, else the CPU)")
    cpu: bool = _f(False, "run on the CPU even if a GPU is available")
    seed: int = _f(0, "random seed for initialisation, data order and random policies")
    learning_rate: float = _f(1e-3, "peak learning rate (the paper: ~1e-3 for BitFit, ~2e-5 for full fine-tuning)")
    epochs: int = _f(16, "number of training epochs")
    batch_size: int = _f(8, "training batch size per device (before gradient accumulation)")
    eval_batch_size: int = _f(64, "evaluation and prediction batch size")
    optimizer: str = _f("adamw", "optimizer: " + ", ".join(OPTIMIZERS))
    weight_decay: float = _f(0.0, "weight decay (decoupled for adamw, L2 for adam)")
    scheduler: str = _f("constant", "learning-rate schedule after warm-up: " + ", ".join(SCHEDULERS))
    warmup_ratio: float = _f(0.0, "fraction of training steps with linear warm-up")
    grad_accum: int = _f(1, "gradient accumulation steps")
    max_grad_norm: float = _f(1.0, "gradient clipping norm (0 disables)")
    precision: str = _f("fp32", "fp32, bf16 or fp16 autocast; trainable parameters and optimizer state stay fp32")
    attention_dropout: float | None = _f(None, "override the model's attention-probability dropout (0 lets PyTorch use fused attention in training)")
    gradient_checkpointing: bool = _f(False, "recompute activations in the backward pass instead of keeping them (less memory, more time)")
    compile: bool = _f(False, "torch.compile the model (measure first: see docs/PERFORMANCE.md)")
    fast_cpu_ops: bool = _f(True, "training on the CPU: this tool's dropout and attention (bitfit/fastops.py: the same "
                                  "dropout distribution, faster, less memory) instead of PyTorch's; not with --compile")
    max_seq_length: int = _f(128, "truncate inputs to this many tokens (batches are padded only to their longest)")
    group_by_length: bool = _f(True, "batch training examples of similar length together (less padding; Hugging Face's group_by_length)")
    max_train_samples: int | None = _f(None, "use only the first N training examples")
    max_eval_samples: int | None = _f(None, "use only the first N examples of each dev split")
    max_predict_samples: int | None = _f(None, "predict only the first N test examples (for quick checks; not a valid submission)")
    data_dir: str | None = _f(None, "folder in the original GLUE TSV layout (default: $GLUE_DIR, else the datasets hub)")
    eval_train: bool = _f(False, "also evaluate on the training set after every epoch")
    predict_test: bool = _f(False, "write GLUE submission files for the test split(s) from the best epoch")
    save_evaluator: bool = _f(False, "also write evaluator.pkl (evaluation history and config; never a module)")
    overwrite: bool = _f(False, "allow writing into a non-empty output folder")
    resume: bool = _f(False, "continue the run in --output-path from its last complete epoch (same settings)")
    keep_checkpoint: bool = _f(False, "keep the per-epoch checkpoint folder after the run completes (default: delete it)")
    trust_remote_code: bool = _f(False, "allow models whose code lives on the hub (runs that code; off by default)")
    verbose: bool = _f(True, "log progress and the trainable-parameter table")

    def __post_init__(self) -> None:
        if not self.output_path:
            raise UserError("output path is required (-o/--output-path)")
        if not self.task_name:
            raise UserError("task name is required (-t/--task-name)")
        self.task_name = get_task(self.task_name).name
        _choice("fine-tune type", self.fine_tune_type, FINE_TUNE_TYPES)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("scheduler", self.scheduler, SCHEDULERS)
        _choice("precision", self.precision, PRECISIONS)
        if not (0.0 < self.learning_rate <= 1.0):
            raise UserError(f"learning rate {self.learning_rate} is out of range; accepted: 0 < lr <= 1")
        _int_range("epochs", self.epochs, 1, 10_000)
        _int_range("batch size", self.batch_size, 1, 1 << 20)
        _int_range("eval batch size", self.eval_batch_size, 1, 1 << 20)
        _int_range("grad accum", self.grad_accum, 1, 1 << 20)
        _int_range("max seq length", self.max_seq_length, 8, 1 << 20)
        for name in ("max_train_samples", "max_eval_samples", "max_predict_samples", "rand_budget"):
            value = getattr(self, name)
            if value is not None:
                _int_range(name.replace("_", " "), value, 1, 1 << 62)
        if self.weight_decay < 0:
            raise UserError(f"weight decay {self.weight_decay} is out of range; accepted: >= 0")
        if not (0.0 <= self.warmup_ratio < 1.0):
            raise UserError(f"warmup ratio {self.warmup_ratio} is out of range; accepted: 0 <= ratio < 1")
        if self.max_grad_norm < 0:
            raise UserError(f"max grad norm {self.max_grad_norm} is out of range; accepted: >= 0 (0 disables)")
        if not (0.0 <= self.mask_sparsity < 1.0):
            raise UserError(f"mask sparsity {self.mask_sparsity} is out of range; accepted: 0 <= sparsity < 1")
        if self.attention_dropout is not None and not (0.0 <= self.attention_dropout < 1.0):
            raise UserError(f"attention dropout {self.attention_dropout} is out of range; accepted: 0 <= p < 1")
        if self.gpu_device is not None and self.gpu_device < 0:
            raise UserError(f"gpu device {self.gpu_device} is out of range; accepted: a CUDA index >= 0")
        if self.data_dir is None and os.environ.get("GLUE_DIR"):
            self.data_dir = os.environ["GLUE_DIR"]
        if self.bias_terms is not None:
            from .policies import check_bias_terms  # local import: policies imports torch

            self.bias_terms = check_bias_terms(self.bias_terms)
        if self.layers is not None:
            from .policies import parse_layers

            parse_layers(self.layers, num_layers=None)  # syntax only; the model's depth is checked later

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def help(cls, name: str) -> str:
        return next(f.metadata["help"] for f in dataclasses.fields(cls) if f.name == name)

    @classmethod
    def default(cls, name: str):
        return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def _choice(what: str, value: str, accepted: tuple[str, ...]) -> None:
    if value not in accepted:
        raise UserError(f"unknown {what} {value!r}; accepted: {', '.join(accepted)}")


def _int_range(what: str, value: int, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not (low <= value <= high):
        raise UserError(f"{what} {value!r} is out of range; accepted: an integer from {low} to {high}")
