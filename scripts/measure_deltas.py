"""Measure what docs/DELTAS.md reports: delta size per policy, task-switch time, memory for N tasks.

    python -m scripts.measure_deltas sizes                     # MiniLM and a random BERT-base config
    python -m scripts.measure_deltas switch --model bert-base  # median / p90 / max switch time
    python -m scripts.measure_deltas memory --model bert-base --tasks 9

``bert-base`` is a randomly initialised ``BertConfig()`` (110M parameters, BERT-base's shapes; no
download), saved once under ``--cache`` with MiniLM's tokenizer (the same bert-base-uncased
vocabulary). Deltas are made as a run would write them, without training: the policy's tensors
moved at random (sizes and switch times do not depend on the values). Everything runs on one CPU
thread unless ``--threads`` says otherwise.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

POLICIES = [  # (label, fine_tune_type, extra RunConfig fields)
    ("frozen (head only)", "frozen", {}),
    ("bitfit, query + intermediate biases", "bitfit", {"bias_terms": ["query", "intermediate"]}),
    ("bitfit (every bias)", "bitfit", {}),
    ("rand_uniform (as many random entries)", "rand_uniform", {}),
    ("rand_row_col", "rand_row_col", {}),
    ("sparse_mask (1% of Linear weights)", "sparse_mask", {"mask_sparsity": 0.01}),
    ("layers last:1", "layers", {"layers": ["last:1"]}),
    ("full_ft", "full_ft", {}),
    ("lora (r 8, query value)", "lora", {}),
    ("lora, --lora-bias all", "lora", {"lora_bias": "all"}),
    ("ia3", "ia3", {}),
    ("adapters, size 64", "adapters", {}),
    ("diff_prune 0.5%", "diff_prune", {"epochs": 2}),
]
GLUE9 = ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"]


def model_dir(name: str, cache: Path) -> str:
    """``minilm`` as is; ``bert-base``: a random BertConfig() saved once under ``cache``."""
    if name != "bert-base":
        return name
    folder = cache / "bert-base-random"
    if not (folder / "model.safetensors").is_file():
        from transformers import AutoTokenizer, BertConfig, BertModel

        from bitfit.models import resolve_model

        torch.manual_seed(0)
        BertModel(BertConfig()).save_pretrained(folder)
        AutoTokenizer.from_pretrained(resolve_model("minilm")).save_pretrained(folder)
    return str(folder)


def make_delta(base: str, task_name: str, policy: str, path: Path, seed: int = 0, model=None, fresh=None,
               fp: str | None = None, **kw) -> Path:
    """A delta as a run writes it: the policy's tensors moved at random, saved by ``bitfit.delta.save``."""
    from bitfit import delta, policies
    from bitfit.policies import diff, sparse
    from bitfit.config import RunConfig
    from bitfit.models import load_model
    from bitfit.tasks import get_task

    task = get_task(task_name)
    if model is None:
        model, fresh = load_model(base, task)
    fp = fp or delta.fingerprint(model, fresh)
    cfg = RunConfig(output_path=str(path.parent), task_name=task_name, model_name=base, fine_tune_type=policy,
                    verbose=False, **kw)
    sel = policies.select(model, cfg)
    guard = policies.apply(model, sel)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        params = {policies.added.canonical(n): p for n, p in model.named_parameters()}
        for name, mask in sel.trainable.items():
            noise = 0.01 * torch.randn(params[name].shape, generator=g)
            params[name].add_(noise if mask is None else noise * mask)
        for m in model.modules():
            if isinstance(m, sparse.TopKMask):
                m.scores.copy_(torch.rand(m.scores.shape, generator=g))
            if isinstance(m, diff.DiffGate):
                m.diff.copy_(0.01 * torch.randn(m.diff.shape, generator=g))
    if sel.diffed:  # the search's end: the largest differences kept
        guard.end_epoch(sel.diff_search_epochs)
    delta.save(path, model, sel, fresh, cfg, task, epoch=1, base_fp=fp)
    return path


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


# ---------------------------------------------------------------------------------------------


def sizes(args) -> None:
    from bitfit import delta, policies
    from bitfit.config import RunConfig
    from bitfit.models import load_model
    from bitfit.tasks import get_task

    rows = {}
    totals = {}
    for name in args.models:
        base = model_dir(name, args.cache)
        model, fresh = load_model(base, get_task("rte"))
        t0 = time.perf_counter()
        fp = delta.fingerprint(model, fresh)
        fp_s = time.perf_counter() - t0
        totals[name] = (sum(p.numel() for p in model.parameters()), fp_s)
        with tempfile.TemporaryDirectory() as tmp:
            for label, policy, kw in POLICIES:
                if args.methods and policy not in args.methods:
                    continue
                m = copy.deepcopy(model)
                path = make_delta(base, "rte", policy, Path(tmp) / f"{policy}.safetensors", model=m, fresh=fresh, fp=fp, **kw)
                counted = copy.deepcopy(model)  # applied: added modules are counted once they are in
                sel = policies.select(counted, RunConfig(output_path=tmp, task_name="rte", model_name=base,
                                                         fine_tune_type=policy, **kw))
                policies.apply(counted, sel)
                counts = policies.trainable_counts(counted, sel)
                del counted
                rows.setdefault(label, {})[name] = (path.stat().st_size, counts["trained"])
                path.unlink()
                del m
    print("| policy | " + " | ".join(f"{n}: delta file | {n}: entries trained" for n in args.models) + " |")
    print("|---|" + "---:|---:|" * len(args.models))
    for label, by_model in rows.items():
        print(f"| {label} | " + " | ".join(f"{human(by_model[n][0])} | {by_model[n][1]:,}" for n in args.models) + " |")
    for n, (params, fp_s) in totals.items():
        print(f"\n{n}: {params:,} parameters ({human(4 * params)} fp32); fingerprint of every byte {fp_s:.3f} s")


def switch(args) -> None:
    from bitfit.serve import Backbone

    base = model_dir(args.model, args.cache)
    cases = [("bitfit", "bitfit", {}, GLUE9), ("sparse_mask 1%", "sparse_mask", {"mask_sparsity": 0.01}, ["rte", "stsb"]),
             ("rand_uniform", "rand_uniform", {}, ["rte", "stsb"]), ("full_ft", "full_ft", {}, ["rte", "stsb"]),
             ("lora", "lora", {}, GLUE9), ("ia3", "ia3", {}, GLUE9), ("adapters 64", "adapters", {}, GLUE9),
             ("diff_prune 0.5%", "diff_prune", {"epochs": 2}, ["rte", "stsb"]),
             ("mixed: bitfit, lora, ia3, adapters, diff_prune", None, {}, ["rte", "stsb", "mrpc", "cola", "sst2"])]
    mixed = {"rte": ("bitfit", {}), "stsb": ("lora", {}), "mrpc": ("ia3", {}), "cola": ("adapters", {}),
             "sst2": ("diff_prune", {"epochs": 2})}
    print(f"| deltas ({args.model}) | tasks | switches | median | p90 | max |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, policy, kw, tasks in cases:
        if (policy == "full_ft" and args.skip_full) or (args.methods and (policy or "mixed") not in args.methods):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            paths = [make_delta(base, t, policy or mixed[t][0], Path(tmp) / t / "delta.safetensors", seed=i,
                                **(kw if policy else mixed[t][1])) for i, t in enumerate(tasks)]
            bb = Backbone.for_deltas(paths)
            bb.activate(tasks[0])
            bb.switches.clear()
            for r in range(args.switches):
                bb.activate(tasks[(r + 1) % len(tasks)])
            times = sorted(s for _, _, s in bb.switches)
            q = lambda f: 1e3 * times[min(len(times) - 1, int(f * len(times)))]  # noqa: E731
            print(f"| {label} | {len(tasks)} | {len(times)} | {q(0.5):.3f} ms | {q(0.9):.3f} ms | {1e3 * times[-1]:.3f} ms |")
            del bb


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def memory_child(args) -> None:
    """One measurement in a fresh process: RSS grown by serving the tasks one way, one batch each."""
    import transformers
    from transformers.models.bert import modeling_bert  # noqa: F401  (every import before the baseline)

    import bitfit.training  # noqa: F401
    from bitfit.serve import Backbone

    sentences = [("a man is playing a guitar .", "someone plays music .")] * 8
    before = _rss()
    if args.mode == "backbone":  # paths: deltas
        bb = Backbone(args.base)
        for i, p in enumerate(args.paths):
            bb.add(f"t{i}", p)
        for name, t in bb.tasks.items():
            bb.predict(name, sentences if len(t.task.test_text_columns) == 2 else [a for a, _ in sentences])
        held = sum(bb.memory().values())
    else:  # paths: merged model folders, one full model each
        tok = transformers.AutoTokenizer.from_pretrained(args.paths[0])
        batch = tok(*map(list, zip(*sentences)), return_tensors="pt", padding=True)
        models = [transformers.AutoModelForSequenceClassification.from_pretrained(p).eval() for p in args.paths]
        with torch.inference_mode():
            for m in models:
                m(**batch)
        held = sum(p.numel() * p.element_size() for m in models for p in m.parameters())
    print(json.dumps({"rss": _rss() - before, "held": held}))


def memory(args) -> None:
    from bitfit import delta

    base = model_dir(args.model, args.cache)
    tasks = (GLUE9 * ((args.tasks + 8) // 9))[:args.tasks]
    with tempfile.TemporaryDirectory() as tmp:
        paths = [make_delta(base, t, "bitfit", Path(tmp) / f"{i}-{t}" / "delta.safetensors", seed=i)
                 for i, t in enumerate(tasks)]
        merged = [str(delta.merge(p, p.parent / "merged")) for p in paths]
        result = {}
        for mode, inputs in (("backbone", list(map(str, paths))), ("separate", merged)):
            out = subprocess.run([sys.executable, "-m", "scripts.measure_deltas", "memory-child", "--mode", mode,
                                  "--base", base, "--threads", str(args.threads), *inputs], capture_output=True, text=True)
            if out.returncode:
                sys.exit(out.stderr)
            result[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"| {args.model}, {args.tasks} bitfit tasks, one batch predicted each | tensors held | process RSS growth |")
    print("|---|---:|---:|")
    print(f"| one backbone + {args.tasks} deltas | {human(result['backbone']['held'])} | {human(result['backbone']['rss'])} |")
    print(f"| {args.tasks} merged full models | {human(result['separate']['held'])} | {human(result['separate']['rss'])} |")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("what", choices=("sizes", "switch", "memory", "memory-child"), help="what to measure")
    p.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    p.add_argument("--models", nargs="+", default=["minilm", "bert-base"], help="sizes: models to measure")
    p.add_argument("--model", default="bert-base", help="switch, memory: the backbone (minilm or bert-base)")
    p.add_argument("--switches", type=int, default=300, help="switch: task switches to time")
    p.add_argument("--skip-full", action="store_true", help="switch: leave out full_ft deltas (about 1.3 GB for bert-base)")
    p.add_argument("--methods", nargs="+", default=None,
                   help="sizes, switch: only these fine-tune types ('mixed': the switch case mixing five methods)")
    p.add_argument("--tasks", type=int, default=9, help="memory: number of tasks served")
    p.add_argument("--mode", choices=("backbone", "separate"), default="backbone", help=argparse.SUPPRESS)
    p.add_argument("--base", default=None, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "bitfit-measure",
                   help="where the random BERT-base folder is kept")
    args = p.parse_intermixed_args(argv)
    torch.set_num_threads(args.threads)
    import logging

    logging.basicConfig(level=logging.ERROR)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    {"sizes": sizes, "switch": switch, "memory": memory, "memory-child": memory_child}[args.what](args)


if __name__ == "__main__":
    main()
