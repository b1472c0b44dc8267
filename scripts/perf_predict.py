"""Prediction speed against BitFit training speed on the same examples, side by side in one process.

    python -m scripts.perf_predict --data-dir ../shared/glue_data --task rte --examples 512

Trains BitFit for one epoch on the task's first N training examples (its samples/s is what
results.json reports: training time only), then predicts those same N examples with the run's
delta on the serving backbone, once with length-sorted batches (what the tool does) and once in file
order (what it did before), and prints the rates and their ratios. Threads: torch's default.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from unittest import mock


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--task", default="rte")
    p.add_argument("--examples", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8, help="training batch size (prediction: the run's 64)")
    args = p.parse_args()

    import torch

    from bitfit import Backbone, RunConfig, run
    from bitfit.data import load_glue, sorted_loader
    from bitfit.tasks import get_task

    task = get_task(args.task)
    examples = load_glue(task, args.data_dir)["train"][:args.examples]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        res = run(RunConfig(output_path=str(out), task_name=task.name, data_dir=args.data_dir, epochs=1, verbose=False,
                            max_train_samples=args.examples, max_eval_samples=16, batch_size=args.batch_size))
        bb = Backbone(res["model_name"])
        bb.add(task.name, out)
        rates = {"train (BitFit)": res["train_samples_per_second"]}
        with torch.inference_mode():
            bb.logits(task.name, examples[:64])  # warm-up: the first forward pays one-time costs
        for name, loader in (("predict, length-sorted batches", sorted_loader), ("predict, file order", _in_order)):
            with mock.patch("bitfit.serve.sorted_loader", loader), torch.inference_mode():
                t0 = time.perf_counter()
                bb.logits(task.name, examples)
                rates[name] = len(examples) / (time.perf_counter() - t0)
    base = rates["train (BitFit)"]
    for name, rate in rates.items():
        print(f"{name:<32} {rate:8.1f} samples/s   {rate / base:5.2f}x training")


def _in_order(encoded, batch_size, collate):
    import numpy as np
    import torch

    from bitfit.data import SortedLoader

    loader = torch.utils.data.DataLoader(encoded, batch_size=batch_size, collate_fn=collate)
    return SortedLoader(loader, np.arange(len(encoded)))


if __name__ == "__main__":
    main()
