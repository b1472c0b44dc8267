"""Training-speed and memory benchmark: our regimes and two peers, side by side in one run.

    python -m bitfit.bench --task rte --data-dir ../shared/glue_data --batch-size 32 --steps 20 --reps 3

Each measurement runs in a fresh subprocess (so peak memory is its own), regimes alternate within
every repetition, and the median of the repetitions is reported. Regimes:

  full_ft, bitfit, bitfit_qi, frozen   this tool: length-grouped batches padded per batch, foreach AdamW
                                       over the trainable tensors only
  bitfit_attn0                         bitfit with --attention-dropout 0 (PyTorch's fused attention in training)
  full_ft_native, bitfit_native        full_ft / bitfit with --no-fast-cpu-ops (PyTorch's dropout and attention;
                                       the same as full_ft / bitfit on a GPU)
  bitfit_gc                            bitfit with --gradient-checkpointing
  bitfit_compile                       bitfit with --compile (torch.compile, dynamic shapes; PyTorch's ops: the
                                       compiler fuses dropout itself); compiling happens in the warm-up steps
  hf_trainer                           transformers' Trainer with BitFit's parameters frozen, run_glue.py's
                                       defaults (every example padded to --max-seq-length)
  hf_trainer_best                      the same Trainer at its best: dynamic padding + group_by_length
  original                             the original BitFit recipe: pad to 128, plain batches, Adam over
                                       the trainable parameters, evaluate the training set every epoch

Reported: training samples/s, padded tokens/s, % of the arithmetic bound (forward ~2 FLOPs per
non-embedding parameter per token; BitFit 2x that, full fine-tuning 3x, frozen 1x, measured against
this device's fp32 matmul rate), peak memory (process RSS on CPU, max_memory_allocated on GPU),
the saved checkpoint's size, and the time of one epoch of the task (training, plus evaluating the
training set for the original recipe, plus the dev set) computed from the measured rates.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REGIMES = ("full_ft", "bitfit", "bitfit_qi", "bitfit_attn0", "frozen", "full_ft_native", "bitfit_native", "bitfit_gc",
           "bitfit_compile", "hf_trainer", "hf_trainer_best", "original")
OURS = ("full_ft", "bitfit", "bitfit_qi", "bitfit_attn0", "frozen", "full_ft_native", "bitfit_native", "bitfit_gc",
        "bitfit_compile")
POLICY = {"full_ft": ("full_ft", None), "bitfit": ("bitfit", None), "bitfit_qi": ("bitfit", ["query", "intermediate"]),
          "bitfit_attn0": ("bitfit", None), "full_ft_native": ("full_ft", None), "bitfit_native": ("bitfit", None),
          "bitfit_gc": ("bitfit", None), "bitfit_compile": ("bitfit", None),
          "frozen": ("frozen", None), "hf_trainer": ("bitfit", None), "hf_trainer_best": ("bitfit", None),
          "original": ("bitfit", None)}
# passes of forward-sized matmul work per step: full fine-tuning 3 (forward, input and weight gradients),
# frozen 1 (the head's backward is negligible), every BitFit-like regime 2 (no weight gradients)
FLOP_FACTOR = {r: {"full_ft": 3, "frozen": 1}.get(POLICY[r][0], 2) for r in REGIMES}


def matmul_gflops(device: str, seconds: float = 2.0) -> float:
    """This device's fp32 matmul rate on transformer-shaped products (tokens x 384/768 x 4 times that)."""
    import torch

    a = torch.randn(4096, 768, device=device)
    b = torch.randn(768, 3072, device=device)
    for _ in range(3):
        a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 2 * 4096 * 768 * 3072 * n / (time.perf_counter() - t0) / 1e9


# ----------------------------------------------------------------------------- one measurement (child)


def _model_and_data(args, regime: str):
    import torch

    from . import policies
    from .config import RunConfig
    from .data import encode, load_glue
    from .models import load_model, load_tokenizer
    from .tasks import get_task

    torch.manual_seed(0)
    task = get_task(args.task)
    splits = load_glue(task, args.data_dir)
    tok = load_tokenizer(args.model)
    model, fresh = load_model(args.model, task, attention_dropout=0.0 if regime == "bitfit_attn0" else None)
    if args.random_init:  # speed does not depend on the weights: a random model of the same shape
        model = type(model)(model.config)
    policy, terms = POLICY[regime]
    cfg = RunConfig(output_path="-", task_name=task.name, fine_tune_type=policy, bias_terms=terms)
    sel = policies.select(model, cfg)
    policies.apply(model, sel)
    # the timed batches come from the first examples; the epoch estimate uses the whole training set
    train = encode(splits["train"][:args.max_train_samples], tok, args.max_seq_length, task.is_regression)
    dev = encode(splits[task.main_dev_split], tok, args.max_seq_length, task.is_regression)
    return task, tok, model, sel, fresh, train, dev, len(splits["train"])


def _batches(train, tok, batch_size: int, steps: int, pad_to: int | None, grouped: bool):
    from transformers import DataCollatorWithPadding

    from .data import EpochBatches

    collate = DataCollatorWithPadding(tok, padding="max_length" if pad_to else True, max_length=pad_to)
    sampler = EpochBatches(len(train), batch_size, seed=0, lengths=train.lengths() if grouped else None)
    sampler.set_epoch(1)
    out = []
    for idx in sampler:
        out.append(collate([train[i] for i in idx]))
        if len(out) == steps:
            break
    return out


def _peak_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _eval_rate(model, batches, device) -> float:
    import torch

    model.eval()
    n, t0 = 0, time.perf_counter()
    with torch.inference_mode():
        for b in batches:
            model(**{k: v.to(device) for k, v in b.items()})
            n += b["input_ids"].shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    model.train()
    return n / (time.perf_counter() - t0)


def measure(args, regime: str) -> dict:
    """Train ``args.steps`` steps (after 3 warm-up steps) under ``regime``; this runs in a child process."""
    import torch

    from . import fastops, policies
    from .logs import setup_logging

    setup_logging(False)
    device = torch.device(args.device)
    task, tok, model, sel, fresh, train, dev, n_train = _model_and_data(args, regime)
    model.to(device)
    if regime in OURS and not regime.endswith(("_native", "_compile")) and device.type == "cpu":
        fastops.install(model)  # what run_glue.py does on the CPU (--fast-cpu-ops, the default)
    if regime == "bitfit_gc":
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    forward = torch.compile(model, dynamic=True) if regime == "bitfit_compile" else model
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warm = 3
    ours = regime in OURS
    pad_to = None if (ours or regime == "hf_trainer_best") and not args.pad_all else args.max_seq_length
    batches = _batches(train, tok, args.batch_size, warm + args.steps, pad_to, grouped=regime not in ("hf_trainer", "original"))
    baseline = _rss_now_mb() if device.type == "cpu" else torch.cuda.memory_allocated(device) / 2**20
    tokens = sum(b["input_ids"].numel() for b in batches[warm:])
    samples = sum(b["input_ids"].shape[0] for b in batches[warm:])
    if regime.startswith("hf_trainer"):
        seconds = _trainer_seconds(args, model, batches, warm, tok)
    else:
        params = [p for p in model.parameters() if p.requires_grad]
        opt = (torch.optim.AdamW(params, lr=1e-4, foreach=device.type != "cuda", fused=device.type == "cuda") if ours
               else torch.optim.Adam(params, lr=1e-4))
        model.train()
        for i, b in enumerate(batches):
            if i == warm:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
            loss = forward(**{k: v.to(device) for k, v in b.items()}).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    peak = _peak_mb(device)  # the process's peak; less the baseline: what training itself added
    eval_pad = args.max_seq_length if regime in ("hf_trainer", "original") else None
    eval_batches = _batches(dev, tok, args.eval_batch_size, 4, eval_pad, grouped=False)
    eval_rate = _eval_rate(model, eval_batches, device)
    with tempfile.TemporaryDirectory() as tmp:
        if ours:
            from safetensors.torch import save_file

            tensors = policies.delta_tensors(model, sel) | {n: t.detach().cpu().contiguous()
                                                            for n, t in model.state_dict().items() if n in fresh}
            save_file(tensors, f"{tmp}/delta.safetensors")
            size = os.path.getsize(f"{tmp}/delta.safetensors")
        elif regime == "original":
            torch.save(model, f"{tmp}/model.pt")  # the original pickled the whole model into its evaluator
            size = os.path.getsize(f"{tmp}/model.pt")
        else:
            model.save_pretrained(tmp)
            size = os.path.getsize(f"{tmp}/model.safetensors")
    n_dev = len(dev)
    epoch_seconds = n_train / (samples / seconds) + n_dev / eval_rate + (n_train / eval_rate if regime == "original" else 0)
    return {"regime": regime, "samples_per_s": samples / seconds, "tokens_per_s": tokens / seconds,
            "peak_mb": peak, "training_mb": peak - baseline, "checkpoint_bytes": size, "eval_samples_per_s": eval_rate,
            "epoch_seconds": epoch_seconds, "non_embedding_params": _non_embedding(model)}


def _non_embedding(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)


def _trainer_seconds(args, model, batches, warm: int, tok) -> float:
    """Time transformers' Trainer over the same batches (its own loop, optimizer and clipping)."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            if state.global_step == warm:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.t0 = time.perf_counter()

        def on_train_end(self, a, state, control, **kw):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.seconds = time.perf_counter() - self.t0

    class Fixed(torch.utils.data.Dataset):  # one pre-collated batch per item: the exact batches timed above
        def __len__(self):
            return len(batches)

        def __getitem__(self, i):
            return batches[i]

    timer = Timer()
    targs = TrainingArguments(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=1, max_steps=len(batches),
                              learning_rate=1e-4, report_to=[], save_strategy="no", eval_strategy="no",
                              logging_strategy="no", dataloader_num_workers=0, use_cpu=args.device == "cpu",
                              disable_tqdm=True)
    class InOrder(Trainer):  # the same batches in the same order as the other regimes (Trainer shuffles)
        def _get_train_sampler(self, *args, **kwargs):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    trainer = InOrder(model=model, args=targs, train_dataset=Fixed(), data_collator=lambda items: items[0],
                      callbacks=[timer])
    trainer.train()
    return timer.seconds


# ----------------------------------------------------------------------------- the driver


def run_child(args, regime: str) -> dict:
    cmd = [sys.executable, "-m", "bitfit.bench", "--child", regime] + _forward(args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{regime} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _forward(args) -> list[str]:
    out = ["--task", args.task, "--model", args.model, "--batch-size", str(args.batch_size), "--steps", str(args.steps),
           "--max-seq-length", str(args.max_seq_length), "--eval-batch-size", str(args.eval_batch_size),
           "--device", args.device]
    if args.data_dir:
        out += ["--data-dir", args.data_dir]
    if args.random_init:
        out += ["--random-init"]
    if args.max_train_samples:
        out += ["--max-train-samples", str(args.max_train_samples)]
    if args.pad_all:
        out += ["--pad-all"]
    return out


def summarize(rows: list[dict], gflops: float) -> dict[str, dict]:
    out = {}
    for regime in dict.fromkeys(r["regime"] for r in rows):
        rs = [r for r in rows if r["regime"] == regime]
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "regime"}
        flops = FLOP_FACTOR[regime] * 2 * med["non_embedding_params"] * med["tokens_per_s"]
        med["percent_of_bound"] = 100 * flops / (gflops * 1e9)
        med["reps"] = len(rs)
        out[regime] = med
    return out


def markdown(summary: dict[str, dict], header: str) -> str:
    base = summary.get("full_ft")
    lines = [header, "", "| regime | samples/s | x full_ft | tokens/s | % of bound | peak MB | x full_ft | added by training MB | x full_ft | checkpoint | epoch s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for regime, m in summary.items():
        speed = f"{m['samples_per_s'] / base['samples_per_s']:.2f}" if base else "-"
        mem = f"{m['peak_mb'] / base['peak_mb']:.2f}" if base else "-"
        added = f"{m['training_mb'] / base['training_mb']:.2f}" if base and base["training_mb"] > 0 else "-"
        lines.append(f"| {regime} | {m['samples_per_s']:.1f} | {speed} | {m['tokens_per_s']:.0f} | "
                     f"{m['percent_of_bound']:.0f}% | {m['peak_mb']:.0f} | {mem} | {m['training_mb']:.0f} | {added} | "
                     f"{_size(m['checkpoint_bytes'])} | "
                     f"{m['epoch_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def _size(n: float) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB"


def ratios(summary: dict[str, dict]) -> list[str]:
    s = summary
    out = []

    def r(a, b, key="samples_per_s"):
        if a in s and b in s:
            return s[a][key] / s[b][key]

    pairs = [("bitfit vs full_ft, speed", r("bitfit", "full_ft")), ("bitfit vs full_ft, peak memory", r("bitfit", "full_ft", "peak_mb")),
             ("bitfit vs hf_trainer (run_glue defaults), speed", r("bitfit", "hf_trainer")),
             ("bitfit vs hf_trainer_best, speed", r("bitfit", "hf_trainer_best")),
             ("bitfit vs original recipe, speed", r("bitfit", "original")),
             ("bitfit with attention dropout 0 vs bitfit, speed", r("bitfit_attn0", "bitfit")),
             ("original recipe vs bitfit, epoch time", r("original", "bitfit", "epoch_seconds"))]
    for name, value in pairs:
        if value is not None:
            out.append(f"{name}: {value:.2f}x")
    return out


def plot(summary: dict[str, dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, key, label in zip(axes, ("samples_per_s", "peak_mb", "epoch_seconds"),
                              ("training samples/s", "peak memory (MB)", "epoch time (s)")):
        ax.bar(names, [summary[n][key] for n in names], color=["C0" if n in POLICY and not n.startswith(("hf", "orig")) else "C1" for n in names])
        ax.set_title(label)
        ax.tick_params(axis="x", rotation=45)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bitfit.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", default="rte", help="GLUE task whose training data is used")
    p.add_argument("--model", default="minilm", help="model name or folder (see run_glue.py -m)")
    p.add_argument("--random-init", action="store_true", help="random weights of the model's shape (speed only)")
    p.add_argument("--data-dir", default=os.environ.get("GLUE_DIR"), help="GLUE TSV folder")
    p.add_argument("--max-train-samples", type=int, default=None, help="draw timed batches from the first N examples")
    p.add_argument("--batch-size", type=int, default=32, help="training batch size")
    p.add_argument("--eval-batch-size", type=int, default=64, help="evaluation batch size")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per measurement (after 3 warm-up)")
    p.add_argument("--reps", type=int, default=3, help="repetitions (regimes alternate within each)")
    p.add_argument("--max-seq-length", type=int, default=128, help="truncation / the peers' fixed padding length")
    p.add_argument("--pad-all", action="store_true",
                   help="pad every regime's batches to --max-seq-length (fixed shapes, e.g. for memory at length 128)")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu", help="cpu or cuda[:N]")
    p.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=REGIMES, help="what to measure")
    p.add_argument("--out", default="docs/perf", help="folder for the Markdown table, JSON and PNG")
    p.add_argument("--child", choices=REGIMES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args, args.child)))
        return 0
    gflops = matmul_gflops(args.device)
    print(f"fp32 matmul rate on {args.device}: {gflops:.1f} GFLOP/s", flush=True)
    rows = []
    for rep in range(args.reps):
        order = args.regimes if rep % 2 == 0 else list(reversed(args.regimes))
        for regime in order:
            row = run_child(args, regime)
            rows.append(row)
            print(f"rep {rep + 1} {regime}: {row['samples_per_s']:.1f} samples/s, peak {row['peak_mb']:.0f} MB", flush=True)
    summary = summarize(rows, gflops)
    device_name = _device_name(args.device)
    name = (f"bench_{args.task}_{Path(args.model).name}{'_random' if args.random_init else ''}_{args.device.split(':')[0]}"
            f"_b{args.batch_size}{f'_pad{args.max_seq_length}' if args.pad_all else ''}")
    header = (f"### {args.task}, {args.model}{' (random init)' if args.random_init else ''}, batch {args.batch_size}, "
              f"{device_name}\n\nMedian of {args.reps} repetitions of {args.steps} timed steps; fp32 matmul rate "
              f"{gflops:.0f} GFLOP/s. Command: `python -m bitfit.bench {' '.join(argv if argv is not None else sys.argv[1:])}`")
    table = markdown(summary, header)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(table + "\n" + "\n".join(f"- {line}" for line in ratios(summary)) + "\n")
    (out / f"{name}.json").write_text(json.dumps({"gflops": gflops, "device": device_name, "rows": rows,
                                                  "summary": summary}, indent=2))
    plot(summary, out / f"{name}.png", header.splitlines()[0].lstrip("# "))
    print(table)
    print("\n".join(ratios(summary)))
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _device_name(device: str) -> str:
    import platform

    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


if __name__ == "__main__":
    sys.exit(main())
