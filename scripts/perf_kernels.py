"""Measure the kernel ratios docs/PERFORMANCE.md cites, side by side in one process.

    python -m scripts.perf_kernels dropout     # fastops.keep_mask against PyTorch's CPU dropout draw
    python -m scripts.perf_kernels bf16        # bf16 matmuls (plain and under autocast) against fp32

``dropout``: PyTorch's CPU dropout draws its mask as ``torch.empty_like(x).bernoulli_(1 - p)`` (one
Mersenne-twister number per element); ``bitfit.fastops.keep_mask`` reads four 16-bit numbers from
each 64-bit draw. Also whole dropout layers, forward and backward (``nn.Dropout`` against
``fastops.FastDropout``). ``bf16``: the bench's matmul shape (4096 tokens x 768 -> 3072) and
MiniLM's (x 384 -> 1536), in fp32, in bf16, and fp32 tensors under ``torch.autocast("cpu",
torch.bfloat16)`` (what ``--precision bf16`` does). Shapes are MiniLM's at batch 32, length 128.
Cases alternate within each repetition (``bitfit.bench.side_by_side``); only the ratios mean anything.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn

from bitfit import bench, fastops


def report(title: str, cases: dict, reps: int) -> None:
    """Print each case's median time and the median over repetitions of its speed against the first case."""
    times = bench.side_by_side(cases, reps=reps, seconds=0.3)
    first = next(iter(times.values()))
    print(f"{title}  ({torch.get_num_threads()} threads, {reps} repetitions)")
    for name, ts in times.items():
        speed = statistics.median(f / t for f, t in zip(first, ts))
        print(f"  {name:<34} {statistics.median(ts) * 1e3:8.2f} ms   {speed:5.2f}x the first's speed")


def dropout(reps: int) -> None:
    for shape in ((32, 12, 128, 128), (32, 128, 384)):  # attention probabilities, hidden states
        report(f"dropout mask p=0.1, shape {shape}", {
            "bernoulli_ (PyTorch's CPU dropout)": lambda: torch.empty(shape).bernoulli_(0.9),
            "fastops.keep_mask": lambda: fastops.keep_mask(shape, 0.1),
        }, reps)
        x = torch.randn(shape, requires_grad=True)
        native, fast = nn.Dropout(0.1), fastops.FastDropout(0.1)
        report(f"dropout layer forward + backward, shape {shape}", {
            "nn.Dropout": lambda: native(x).sum().backward(),
            "fastops.FastDropout": lambda: fast(x).sum().backward(),
        }, reps)


def bf16(reps: int) -> None:
    for width in (768, 384):
        a, b = torch.randn(4096, width), torch.randn(width, 4 * width)
        a16, b16 = a.bfloat16(), b.bfloat16()

        def autocast(a=a, b=b):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return a @ b

        report(f"matmul 4096 x {width} -> {4 * width}", {
            "fp32": lambda a=a, b=b: a @ b,
            "bf16 tensors": lambda: a16 @ b16,
            "fp32 tensors under bf16 autocast": autocast,
        }, reps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("what", choices=("dropout", "bf16"), help="which ratios to measure")
    p.add_argument("--reps", type=int, default=15, help="repetitions, cases alternating within each")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}")
    {"dropout": dropout, "bf16": bf16}[args.what](args.reps)


if __name__ == "__main__":
    main()
