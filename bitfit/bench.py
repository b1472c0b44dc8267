"""Training speed and memory: the fine-tune methods and two peers, side by side in one run.

    python -m bitfit bench --task rte --data-dir ../shared/glue_data --batch-size 32 --steps 8 --reps 2
    python -m bitfit bench --task rte --data-dir ../shared/glue_data --regimes full_ft bitfit --out docs/perf

    from bitfit import bench
    table = bench.run(bench.Settings(task="rte", data_dir="../shared/glue_data", regimes=["full_ft", "bitfit"]))

Each measurement runs in a freshly spawned process (so peak memory is its own), regimes alternate
within every repetition, and the median of the repetitions is reported. A regime (``REGIMES``) is a
fine-tune method of ``bitfit.methods.METHODS`` (what trains, and its FLOP factor) with the RunConfig
settings that vary it, trained by this tool's loop or by a peer's: transformers' ``Trainer`` (with
run_glue.py's defaults, or at its best) or the original BitFit recipe.

Reported: training samples/s, padded tokens/s, % of the arithmetic bound (forward ~2 FLOPs per
non-embedding parameter per token, times the method's ``flop_factor``, against this device's matmul
rate in the arithmetic measured: fp32, TF32 with ``--tf32``, bf16/fp16 with ``--precision``), peak
memory (process RSS on CPU, ``max_memory_allocated`` on GPU), the saved checkpoint's size, and the
time of one epoch of the task (training, plus evaluating the training set for the original recipe,
plus the dev set) computed from the measured rates. Output: ``<name>.md``,
``.json`` and ``.png`` under ``--out`` (default ``bench/``; the docs' tables live in ``docs/perf``).
Torch is imported only where a measurement needs it, so the command's ``-h`` stays fast.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

from .config import PRECISIONS, RunConfig, default_data_dir, ints, setting
from .errors import UserError
from .methods import get_method
from .tasks import get_task

log = logging.getLogger("bitfit")

WARM = 3  # untimed warm-up steps before the timed ones (torch.compile compiles here)


@dataclass(frozen=True)
class Regime:
    """One way of training that the bench times."""

    method: str  # a bitfit.methods.METHODS name: what trains, and the FLOP factor
    about: str  # one line, for -h
    settings: dict = field(default_factory=dict)  # RunConfig fields that make this variant of the method
    peer: str = ""  # "": this tool's loop; "trainer": transformers' Trainer; "original": the original BitFit recipe
    pad: bool = False  # batches padded to --max-seq-length, not length-grouped (the peers' defaults)
    mask_4d: bool = True  # this tool's loop: the attention mask in its 4D form where the model takes it (masks.py)

    @property
    def flop_factor(self) -> int:
        return get_method(self.method).flop_factor


REGIMES: dict[str, Regime] = {
    "full_ft": Regime("full_ft", "full fine-tuning, this tool's loop (batches padded per batch, foreach AdamW)"),
    "bitfit": Regime("bitfit", "BitFit, this tool's loop"),
    "bitfit_qi": Regime("bitfit", "BitFit, query + intermediate biases", {"bias_terms": ["query", "intermediate"]}),
    "bitfit_attn0": Regime("bitfit", "BitFit with --attention-dropout 0", {"attention_dropout": 0.0}),
    "frozen": Regime("frozen", "only the head trains"),
    "rand_uniform": Regime("rand_uniform", "as many random entries as BitFit trains, their whole matrices in the "
                           "optimizer (and, under DDP, in every gradient all-reduce)"),
    "full_ft_native": Regime("full_ft", "full_ft with --no-fast-cpu-ops (PyTorch's dropout and attention)",
                             {"fast_cpu_ops": False}),
    "bitfit_native": Regime("bitfit", "bitfit with --no-fast-cpu-ops", {"fast_cpu_ops": False}),
    "bitfit_gc": Regime("bitfit", "bitfit with --gradient-checkpointing", {"gradient_checkpointing": True}),
    "bitfit_synced": Regime("bitfit", "bitfit waiting for the GPU every step, as the loop did before --check-every: "
                            "the stop check each step (--check-every 1) and transformers' 2D-mask check each forward",
                            {"check_every": 1}, mask_4d=False),
    "bitfit_compile": Regime("bitfit", "bitfit with --compile (PyTorch's ops; compiled in the warm-up steps)",
                             {"compile": True}),
    "hf_trainer": Regime("bitfit", "transformers' Trainer, BitFit's parameters, run_glue.py's defaults "
                         "(every example padded to --max-seq-length)", peer="trainer", pad=True),
    "hf_trainer_best": Regime("bitfit", "the same Trainer at its best (dynamic padding, group_by_length)",
                              peer="trainer"),
    "lora": Regime("lora", "LoRA (PEFT's layers; rank 8, alpha 8 on query and value), this tool's loop"),
    "lora_native": Regime("lora", "lora with --no-fast-cpu-ops (PyTorch's dropout and attention)",
                          {"fast_cpu_ops": False}),
    "ia3": Regime("ia3", "IA3 (PEFT's layers on key, value and the feed-forward output), this tool's loop"),
    "diff_prune": Regime("diff_prune", "Diff-Pruning's search phase (every encoder entry gated, L0 penalty), "
                         "this tool's loop"),
    "adapters": Regime("adapters", "Houlsby adapters of size 64 and the LayerNorms, this tool's loop"),
    "peft_lora_trainer": Regime("lora", "the peer users would pick: PEFT's get_peft_model (LoRA, the same rank, "
                                "alpha and targets, task SEQ_CLS) under transformers' Trainer", peer="peft"),
    "original": Regime("bitfit", "the original BitFit recipe (pad to --max-seq-length, plain batches, Adam, "
                       "evaluate the training set every epoch)", peer="original", pad=True),
}


@dataclass
class Settings:
    """What to measure and where to write it; ``python -m bitfit bench`` makes its flags from these fields."""

    task: str = setting("rte", "GLUE task whose training data is used")
    model: str = setting("minilm", "model name or folder (see run_glue.py -m)")
    random_init: bool = setting(False, "random weights of the model's shape (speed only)")
    data_dir: str | None = setting(None, "GLUE TSV folder (default: $GLUE_DIR)")
    max_train_samples: int | None = setting(None, "draw timed batches from the first N training examples "
                                            "(the epoch estimate still counts them all)", check=ints(1))
    batch_size: int = setting(32, "training batch size", check=ints(1))
    eval_batch_size: int = setting(64, "evaluation batch size", check=ints(1))
    steps: int = setting(20, f"timed training steps per measurement (after {WARM} warm-up)", check=ints(1))
    reps: int = setting(3, "repetitions (regimes alternate within each)", check=ints(1))
    max_seq_length: int = setting(128, "truncation / the peers' fixed padding length", check=ints(1))
    pad_all: bool = setting(False, "pad every regime's batches to --max-seq-length (fixed shapes, e.g. for "
                            "memory at length 128)")
    device: str = setting("auto", "cpu, cuda, cuda:N, or auto (the first GPU if there is one, else the CPU)")
    precision: str = setting("fp32", "fp32, or bf16/fp16 autocast (as run_glue.py --precision; fp16: CUDA only)",
                             choices=PRECISIONS)
    tf32: bool = setting(False, "CUDA: fp32 matmuls on TF32 tensor cores (as run_glue.py --tf32)")
    regimes: list[str] | None = setting(None, "what to measure (default: all)", choices=tuple(REGIMES),
                                        metavar="REGIME")
    out: str = setting("bench", "folder for the Markdown table, JSON and PNG", "-o")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check, value = f.metadata.get("check"), getattr(self, f.name)
            if check is not None and value is not None and not check.ok(value):
                raise UserError(f"{f.name.replace('_', ' ')} {value!r} is out of range; accepted: {check.accepted}")
        for name in self.regimes or ():
            if name not in REGIMES:
                raise UserError(f"unknown regime {name!r}; accepted: {', '.join(REGIMES)}")
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown precision {self.precision!r}; accepted: {', '.join(PRECISIONS)}")
        self.task = get_task(self.task).name
        if self.data_dir is None:
            self.data_dir = default_data_dir()

    @property
    def names(self) -> list[str]:
        return list(self.regimes or REGIMES)


def _sync(device) -> None:
    """Wait for ``device``'s queued work (a no-op on the CPU): timings end when the work does. Plain
    ``cuda`` is the current device (``measure`` makes it the one asked for), never silently GPU 0."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device if device.index is not None else torch.cuda.current_device())


def only_visible(device: str, visible: str | None) -> tuple[str, str | None]:
    """For a fresh process, before it starts CUDA: (the device's name there, the CUDA_VISIBLE_DEVICES that
    shows it alone). With one GPU visible, transformers' Trainer can neither pick GPU 0 instead nor wrap
    the model in DataParallel over every GPU. ``visible``: the CUDA_VISIBLE_DEVICES inherited (None: all)."""
    if not device.startswith("cuda"):
        return device, visible
    index = int(device.split(":")[1]) if ":" in device else 0
    ids = [v.strip() for v in visible.split(",")] if visible else None
    if ids is not None and index >= len(ids):
        raise UserError(f"device {device!r} is not visible here; accepted: cuda:0 to cuda:{len(ids) - 1}")
    return "cuda:0", ids[index] if ids is not None else str(index)


def matmul_gflops(device: str, seconds: float = 2.0, dtype=None) -> float:
    """This device's matmul rate (fp32 unless ``dtype``) on a transformer-shaped product (4096 tokens x 768 -> 3072)."""
    import torch

    a = torch.randn(4096, 768, device=device, dtype=dtype)
    b = torch.randn(768, 3072, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    _sync(device)
    return 2 * 4096 * 768 * 3072 * n / (time.perf_counter() - t0) / 1e9


def side_by_side(cases: dict[str, Callable[[], object]], reps: int = 5, seconds: float = 0.5) -> dict[str, list[float]]:
    """Seconds per call of each case, one value per repetition; the cases alternate within every
    repetition, so compare them repetition by repetition (a machine that slows down mid-run slows
    the cases of one repetition alike). Only ratios of the results mean anything."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():
        fn()  # warm-up
    for rep in range(reps):
        for name in _alternate(list(cases), rep):
            n, t0 = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - t0) < seconds:
                cases[name]()
                n += 1
            times[name].append(elapsed / n)
    return times


def _alternate(names: list[str], rep: int) -> list[str]:
    return names if rep % 2 == 0 else names[::-1]


# ----------------------------------------------------------------------------- one measurement


@dataclass
class Prepared:
    """A model set up for one regime, as training would set it up, with the task's data encoded."""

    cfg: RunConfig
    task: object
    tokenizer: object
    model: object
    selection: object
    new_params: list[str]  # what load_model initialised (the head): saved in the delta
    train: object  # Encoded: the first --max-train-samples examples
    dev: object  # Encoded: the main dev split
    n_train: int  # the whole training set, for the epoch estimate


def prepare(s: Settings, name: str, device) -> Prepared:
    """Load, select and apply regime ``name``'s method on ``device``, with the fast CPU ops and
    gradient checkpointing as training switches them on (peers get neither)."""
    import torch

    from . import fastops, policies
    from .data import encode, load_glue
    from .models import load_model, load_tokenizer

    regime = REGIMES[name]
    torch.manual_seed(0)
    cfg = RunConfig(output_path="-", task_name=s.task, model_name=s.model, fine_tune_type=regime.method,
                    max_seq_length=s.max_seq_length, data_dir=s.data_dir, **regime.settings)
    task = get_task(cfg.task_name)
    splits = load_glue(task, cfg.data_dir)
    tok = load_tokenizer(cfg.model_name)
    model, new_params = load_model(cfg.model_name, task, attention_dropout=cfg.attention_dropout)
    if s.random_init:  # speed does not depend on the weights: a random model of the same shape
        model = type(model)(model.config)
    if regime.peer == "peft":  # PEFT's own wrapping, as its docs show it: the head trains as modules_to_save
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                                                 lora_dropout=cfg.lora_dropout, target_modules=["query", "value"]))
        sel = None
    else:
        sel = policies.select(model, cfg)
        policies.apply(model, sel)
    model.to(device)
    if not regime.peer and cfg.fast_cpu_ops and not cfg.compile and torch.device(device).type == "cpu":
        fastops.install(model)
    if cfg.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    train = encode(splits["train"][:s.max_train_samples], tok, s.max_seq_length, task.is_regression)
    dev = encode(splits[task.main_dev_split], tok, s.max_seq_length, task.is_regression)
    return Prepared(cfg, task, tok, model, sel, new_params, train, dev, len(splits["train"]))


def batches(data, tokenizer, batch_size: int, n: int, pad_to: int | None, grouped: bool) -> list[dict]:
    """The first ``n`` batches of epoch 1, as training draws them (length-grouped if ``grouped``),
    padded per batch, or to ``pad_to``."""
    from transformers import DataCollatorWithPadding

    from .data import EpochBatches, collator

    collate = DataCollatorWithPadding(tokenizer, padding="max_length", max_length=pad_to) if pad_to \
        else collator(tokenizer)
    sampler = EpochBatches(len(data), batch_size, seed=0, lengths=data.lengths() if grouped else None)
    sampler.set_epoch(1)
    out = []
    for idx in sampler:
        out.append(collate([data[i] for i in idx]))
        if len(out) == n:
            break
    return out


def train_batches(s: Settings, p: Prepared, name: str) -> list[dict]:
    """The warm-up and timed batches of regime ``name``."""
    pad = REGIMES[name].pad
    return batches(p.train, p.tokenizer, s.batch_size, WARM + s.steps,
                   s.max_seq_length if pad or s.pad_all else None, grouped=not pad)


def started_run(s: Settings, name: str, device, out: Path):
    """A run of regime ``name`` set up exactly as ``run_glue.py`` sets one up (``bitfit.training``'s
    ``prepare`` and ``start``: method, fast CPU ops, checkpointing, compile, accelerate, optimizer), in a
    scratch folder; the caller releases its lock."""
    from .training.loop import start
    from .training.setup import prepare as prepare_run

    regime = REGIMES[name]
    cfg = RunConfig(output_path=str(out), task_name=s.task, model_name=s.model, fine_tune_type=regime.method,
                    max_seq_length=s.max_seq_length, data_dir=s.data_dir, batch_size=s.batch_size,
                    max_train_samples=s.max_train_samples, precision=s.precision, tf32=s.tf32,
                    epochs=2 if regime.method == "diff_prune" else 1,  # diff_prune: searching in the timed epoch 1
                    verbose=False, **({"cpu": True} if device.type == "cpu" else {"gpu_device": device.index or 0}),
                    **regime.settings)
    su = prepare_run(cfg)
    run = start(su, time.time())
    run.mask_4d = run.mask_4d and regime.mask_4d
    return run


def run_prepared(run, s: Settings) -> Prepared:
    """The bench's view of a started run: the model it trains (unwrapped), its data, the whole training
    set's size for the epoch estimate."""
    su = run.su
    n_train = len(load_glue_train(su.task, su.cfg.data_dir))
    return Prepared(su.cfg, su.task, su.tokenizer, run.accelerator.unwrap_model(run.model), su.selection,
                    su.new_params, su.encoded["train"], su.encoded[su.task.main_dev_split], n_train)


def load_glue_train(task, data_dir):
    from .data import load_glue

    return load_glue(task, data_dir)["train"]


def _run_seconds(run, regime: Regime, train: list[dict], device, precision: str = "fp32") -> float:
    """Seconds for the timed batches through ``bitfit.training.loop._step``, the step every run takes
    (precision, clipping, the method's guard, the stop checks every --check-every steps), after WARM
    warm-up steps; the device is synchronised at the two ends only. The batches are on the device
    beforehand (a run's loader copies them pinned and without blocking, alongside the GPU's work)."""
    import torch

    from .checkpoint import Interrupt
    from .training import loop

    batches = [{k: v.to(device) for k, v in b.items()} for b in train]
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    run.model.train()
    with Interrupt() as interrupt:
        for i, b in enumerate(batches):
            if i == WARM:
                _sync(device)
                t0 = time.perf_counter()
            loop._step(run, b, 1, interrupt, totals, b["input_ids"].shape[0])
    _sync(device)
    return time.perf_counter() - t0


def measure(s: Settings, name: str) -> dict:
    """Train ``s.steps`` steps (after WARM warm-up steps) under regime ``name`` in this process, then
    evaluate a few dev batches and save a checkpoint. Peak memory is the process's: call it through
    ``measure_in_fresh_process``."""
    import torch

    from .devices import peak_memory_mb, set_tf32
    from .logs import setup_logging

    setup_logging(False)
    here, visible = only_visible(s.device, os.environ.get("CUDA_VISIBLE_DEVICES"))
    if visible is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible  # a fresh process: CUDA has not started yet
    regime, device = REGIMES[name], torch.device(here)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # plain "cuda" (the Trainer's device) now means this one
    set_tf32(device, s.tf32)
    with tempfile.TemporaryDirectory() as tmp:
        run = None if regime.peer else started_run(s, name, device, Path(tmp, "run"))
        try:
            p = prepare(s, name, device) if run is None else run_prepared(run, s)
            train = train_batches(s, p, name)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            baseline = _memory_now_mb(device)
            seconds = (_trainer_seconds if regime.peer in ("trainer", "peft") else _loop_seconds if regime.peer
                       else _run_seconds)(run or p, regime, train, device, s.precision)
            peak = peak_memory_mb(device)  # less the baseline: what training itself added
        finally:
            if run is not None and run.su.lock is not None:
                run.su.lock.release()
    dev = batches(p.dev, p.tokenizer, s.eval_batch_size, 4, s.max_seq_length if regime.pad else None, grouped=False)
    eval_rate = _eval_rate(p.model, dev, device, s.precision)
    timed = train[WARM:]
    samples = sum(b["input_ids"].shape[0] for b in timed)
    evaluated = len(p.dev) + (p.n_train if regime.peer == "original" else 0)  # the original evaluates train too
    return {"regime": name, "pid": os.getpid(), "samples_per_s": samples / seconds,
            "tokens_per_s": sum(b["input_ids"].numel() for b in timed) / seconds,
            "peak_mb": peak, "training_mb": peak - baseline, "checkpoint_bytes": _checkpoint_bytes(p, regime),
            "eval_samples_per_s": eval_rate, "epoch_seconds": p.n_train * seconds / samples + evaluated / eval_rate,
            "non_embedding_params": _non_embedding_params(p.model)}


def _non_embedding_params(model) -> int:
    """The model's own weights outside the embeddings (the arithmetic bound's count): a gated or masked tensor once,
    not with its parametrization's tensors (diff_prune's difference and gates, sparse_mask's scores)."""
    from .policies.anatomy import plain_params

    return sum(t.numel() for n, t in plain_params(model).items() if "embeddings" not in n)


def measure_in_fresh_process(s: Settings, name: str) -> dict:
    """``measure`` in a newly spawned Python process (nothing inherited: its peak memory is its own)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        try:
            return pool.submit(measure, s, name).result()
        except Exception as e:
            e.add_note(f"(while measuring regime {name!r} in a child process)")
            raise


def _memory_now_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def autocast(device, precision: str):
    """``torch.autocast`` for ``precision`` on ``device`` (off for fp32), as accelerate's mixed precision."""
    import torch

    dtype = _dtype(precision)
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32)


def _loop_seconds(p: Prepared, regime: Regime, train: list[dict], device, precision: str = "fp32") -> float:
    """Seconds for the timed batches in the original BitFit recipe's loop (Adam, clipping; fp16 with a loss
    scaler): a peer's loop, not ours (ours is timed by ``_run_seconds``)."""
    import torch

    params = [t for t in p.model.parameters() if t.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    p.model.train()
    for i, b in enumerate(train):
        if i == WARM:
            _sync(device)
            t0 = time.perf_counter()
        with autocast(device, precision):
            loss = p.model(**{k: v.to(device, non_blocking=True) for k, v in b.items()}).loss
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
    _sync(device)
    return time.perf_counter() - t0


def _trainer_seconds(p: Prepared, regime: Regime, train: list[dict], device, precision: str = "fp32") -> float:
    """Seconds for the timed batches under transformers' Trainer (its own loop, optimizer and clipping)."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == WARM:
                _sync(device)
                self.t0 = time.perf_counter()

        def on_train_end(self, args, state, control, **kw):
            _sync(device)
            self.seconds = time.perf_counter() - self.t0

    class Fixed(torch.utils.data.Dataset):  # one pre-collated batch per item: the exact batches of the others
        def __len__(self):
            return len(train)

        def __getitem__(self, i):
            return train[i]

    class InOrder(Trainer):  # the same batches in the same order as the other regimes (Trainer shuffles)
        def _get_train_sampler(self, *args, **kwargs):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    timer = Timer()
    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(output_dir=tmp, per_device_train_batch_size=1, max_steps=len(train),
                                  learning_rate=1e-4, report_to=[], save_strategy="no", eval_strategy="no",
                                  logging_strategy="no", dataloader_num_workers=0, use_cpu=device.type == "cpu",
                                  disable_tqdm=True, bf16=precision == "bf16", fp16=precision == "fp16")
        trainer = InOrder(model=p.model, args=targs, train_dataset=Fixed(), data_collator=lambda items: items[0],
                          callbacks=[timer])
        targs._n_gpu = min(targs.n_gpu, 1)  # one device, as the others: never DataParallel (also measure's pinning)
        trainer.train()
    return timer.seconds


def _eval_rate(model, dev: list[dict], device, precision: str = "fp32") -> float:
    import torch

    model.eval()
    n, t0 = 0, time.perf_counter()
    with torch.inference_mode(), autocast(device, precision):
        for b in dev:
            model(**{k: v.to(device) for k, v in b.items()})
            n += b["input_ids"].shape[0]
    _sync(device)
    model.train()
    return n / (time.perf_counter() - t0)


def _checkpoint_bytes(p: Prepared, regime: Regime) -> int:
    """The size of what each regime saves: this tool's delta file as training writes it, the original's
    pickled model, the Trainer's model folder."""
    import torch

    from . import delta

    with tempfile.TemporaryDirectory() as tmp:
        if not regime.peer:
            if p.selection.diffed:  # what a diff_prune run writes: the differences kept by the projection
                from .policies.diff import group_of

                group_of(p.model).project()
            path = Path(tmp, "delta.safetensors")
            delta.save(path, p.model, p.selection, p.new_params, p.cfg, p.task, epoch=0, base_fp="bench")
        elif regime.peer == "original":
            path = Path(tmp, "model.pt")
            torch.save(p.model, path)  # the original pickled the whole model into its evaluator
        else:  # the Trainer's model folder; PEFT's: its adapter folder
            p.model.save_pretrained(tmp)
            path = Path(tmp, "adapter_model.safetensors" if regime.peer == "peft" else "model.safetensors")
        return path.stat().st_size


# ----------------------------------------------------------------------------- the driver and its report


def run(s: Settings, command: str = "") -> str:
    """Measure every regime ``s.reps`` times, each in a fresh process, regimes alternating; write
    ``<name>.md``, ``.json`` and ``.png`` under ``s.out``; return the Markdown (table and ratios).
    ``command`` (the command line that repeats this run) goes into the table's header."""
    from .devices import require_cuda_for_fp16, resolve_device, set_tf32

    s = dataclasses.replace(s, device=resolve_device(s.device))
    require_cuda_for_fp16(s.precision, s.device.startswith("cuda"))
    only_visible(s.device, os.environ.get("CUDA_VISIBLE_DEVICES"))  # refuses a GPU that is not there, here
    set_tf32(s.device, s.tf32)
    gflops = matmul_gflops(s.device, dtype=_dtype(s.precision))
    log.info("%s matmul rate on %s: %.1f GFLOP/s", arithmetic(s), s.device, gflops)
    rows = []
    for rep in range(s.reps):
        for name in _alternate(s.names, rep):
            rows.append(measure_in_fresh_process(s, name))
            log.info("rep %d %s: %.1f samples/s, peak %.0f MB", rep + 1, name, rows[-1]["samples_per_s"],
                     rows[-1]["peak_mb"])
    summary = summarize(rows, gflops)
    device_name = _device_name(s.device)
    header = (f"### {s.task}, {s.model}{' (random init)' if s.random_init else ''}, batch {s.batch_size}, "
              f"{device_name}, {arithmetic(s)}\n\nMedian of {s.reps} repetitions of {s.steps} timed steps; "
              f"{arithmetic(s)} matmul rate "
              f"{gflops:.0f} GFLOP/s." + (f" Command: `{command}`" if command else ""))
    text = markdown(summary, header) + "\n" + "".join(f"- {line}\n" for line in ratios(summary))
    out, name = Path(s.out), report_name(s)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(text)
    (out / f"{name}.json").write_text(json.dumps({"gflops": gflops, "device": device_name, "command": command,
                                                  "rows": rows, "summary": summary}, indent=2))
    plot(summary, out / f"{name}.png", header.splitlines()[0].lstrip("# "))
    log.info("wrote %s", out / f"{name}.md")
    return text


def report_name(s: Settings) -> str:
    """``bench_rte_minilm_cpu_b32``, ``bench_rte_bert-base_random_cuda_b8_pad128_bf16``: the files' stem."""
    return (f"bench_{s.task}_{Path(s.model).name}{'_random' if s.random_init else ''}_{s.device.split(':')[0]}"
            f"_b{s.batch_size}{f'_pad{s.max_seq_length}' if s.pad_all else ''}"
            f"{'' if s.precision == 'fp32' else '_' + s.precision}{'_tf32' if s.tf32 else ''}")


def arithmetic(s: Settings) -> str:
    """``fp32``, ``fp32 (TF32 matmuls)``, ``bf16 autocast``: what the measured runs computed in."""
    base = "fp32" if s.precision == "fp32" else f"{s.precision} autocast"
    return base + (" (TF32 matmuls)" if s.tf32 and s.device.startswith("cuda") else "")


def _dtype(precision: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def summarize(rows: list[dict], gflops: float) -> dict[str, dict]:
    """Per regime: the median of each measured value over the repetitions, and % of the arithmetic bound."""
    out = {}
    for name in dict.fromkeys(r["regime"] for r in rows):
        rs = [r for r in rows if r["regime"] == name]
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0] if k not in ("regime", "pid")}
        flops = REGIMES[name].flop_factor * 2 * med["non_embedding_params"] * med["tokens_per_s"]
        med["percent_of_bound"] = 100 * flops / (gflops * 1e9)
        med["reps"] = len(rs)
        out[name] = med
    return out


def markdown(summary: dict[str, dict], header: str) -> str:
    base = summary.get("full_ft")
    lines = [header, "", "| regime | samples/s | x full_ft | tokens/s | % of bound | peak MB | x full_ft | "
             "added by training MB | x full_ft | checkpoint | epoch s |", "|---|" + "---:|" * 10]
    for name, m in summary.items():
        speed = f"{m['samples_per_s'] / base['samples_per_s']:.2f}" if base else "-"
        mem = f"{m['peak_mb'] / base['peak_mb']:.2f}" if base else "-"
        added = f"{m['training_mb'] / base['training_mb']:.2f}" if base and base["training_mb"] > 0 else "-"
        lines.append(f"| {name} | {m['samples_per_s']:.1f} | {speed} | {m['tokens_per_s']:.0f} | "
                     f"{m['percent_of_bound']:.0f}% | {m['peak_mb']:.0f} | {mem} | {m['training_mb']:.0f} | {added} | "
                     f"{_size(m['checkpoint_bytes'])} | {m['epoch_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def _size(n: float) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB"


RATIOS = (  # (label, regime, against, measured value)
    ("bitfit vs full_ft, speed", "bitfit", "full_ft", "samples_per_s"),
    ("bitfit vs full_ft, peak memory", "bitfit", "full_ft", "peak_mb"),
    ("bitfit vs bitfit_native (--no-fast-cpu-ops), speed", "bitfit", "bitfit_native", "samples_per_s"),
    ("bitfit vs bitfit_synced (a wait for the GPU every step), speed", "bitfit", "bitfit_synced", "samples_per_s"),
    ("bitfit vs hf_trainer (run_glue defaults), speed", "bitfit", "hf_trainer", "samples_per_s"),
    ("bitfit vs hf_trainer_best, speed", "bitfit", "hf_trainer_best", "samples_per_s"),
    ("bitfit vs original recipe, speed", "bitfit", "original", "samples_per_s"),
    ("bitfit with attention dropout 0 vs bitfit, speed", "bitfit_attn0", "bitfit", "samples_per_s"),
    ("original recipe vs bitfit, epoch time", "original", "bitfit", "epoch_seconds"),
)


def ratios(summary: dict[str, dict]) -> list[str]:
    """The side-by-side ratios the docs cite, for the regimes this run measured."""
    return [f"{label}: {summary[a][key] / summary[b][key]:.2f}x" for label, a, b, key in RATIOS
            if a in summary and b in summary]


def plot(summary: dict[str, dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, key, label in zip(axes, ("samples_per_s", "peak_mb", "epoch_seconds"),
                              ("training samples/s", "peak memory (MB)", "epoch time (s)")):
        ax.bar(names, [summary[n][key] for n in names], color=["C1" if REGIMES[n].peer else "C0" for n in names])
        ax.set_title(label)
        ax.tick_params(axis="x", rotation=45)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _device_name(device: str) -> str:
    import platform

    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
