"""Where a BitFit training step spends its CPU time, by operator (docs/PERFORMANCE.md's profile).

    python -m scripts.perf_profile --data-dir ../shared/glue_data              # MiniLM, RTE, batch 32
    python -m scripts.perf_profile --data-dir ../shared/glue_data --steps 3 --top 15

Profiles ``--steps`` training steps (after the bench's warm-up steps) of the bench's regimes
``bitfit_native`` (PyTorch's dropout and attention, ``--no-fast-cpu-ops``) and ``bitfit`` (this
tool's, the default), set up and batched exactly as ``python -m bitfit bench`` does, and prints
each operator's share of the self CPU time: ``aten::bernoulli_`` (PyTorch's dropout draws), the
masking passes of PyTorch's attention (``aten::isneginf``, ``aten::all``, ``aten::where``) and the
``--top`` largest.
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from bitfit import bench
from bitfit.logs import setup_logging

WATCHED = ("aten::bernoulli_", "aten::isneginf", "aten::all", "aten::where")


def shares(s: bench.Settings, regime: str) -> dict[str, float]:
    """Percent of the self CPU time of ``s.steps`` profiled steps of ``regime``, per operator."""
    p = bench.prepare(s, regime, torch.device("cpu"))
    params = [t for t in p.model.parameters() if t.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, foreach=True)
    p.model.train()
    train = bench.train_batches(s, p, regime)

    def step(b):
        p.model(**b).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for b in train[:bench.WARM]:
        step(b)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for b in train[bench.WARM:]:
            step(b)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    return {e.key: 100 * e.self_cpu_time_total / total for e in events}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", default="rte", help="GLUE task whose training batches are used")
    p.add_argument("--model", default="minilm", help="model name or folder")
    p.add_argument("--data-dir", default=None, help="GLUE TSV folder (default: $GLUE_DIR)")
    p.add_argument("--batch-size", type=int, default=32, help="training batch size")
    p.add_argument("--steps", type=int, default=5, help="profiled training steps")
    p.add_argument("--top", type=int, default=8, help="also list this many largest operators")
    args = p.parse_args()
    setup_logging(False)
    s = bench.Settings(task=args.task, model=args.model, data_dir=args.data_dir, batch_size=args.batch_size,
                       steps=args.steps, device="cpu")
    print(f"{args.model}, {args.task}, batch {args.batch_size}, {args.steps} steps, {torch.get_num_threads()} threads")
    for regime in ("bitfit_native", "bitfit"):
        share = shares(s, regime)
        print(f"\n{regime} ({bench.REGIMES[regime].about}): % of self CPU time")
        for key in dict.fromkeys(WATCHED + tuple(sorted(share, key=share.get, reverse=True)[:args.top])):
            print(f"  {key:<40} {share.get(key, 0.0):5.1f}%")
        if regime == "bitfit_native":  # with the fast ops, where is the dropout's own pass
            print(f"  {'masking passes (isneginf + all + where)':<40} {sum(share.get(k, 0.0) for k in WATCHED[1:]):5.1f}%")


if __name__ == "__main__":
    main()
