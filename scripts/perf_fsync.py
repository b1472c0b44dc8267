"""What durable checkpoint writes cost: ``bitfit.checkpoint.save`` (the code a run calls after every epoch)
timed as it is, with its fsyncs, and with ``os.fsync`` made a no-op, alternately, on a full fine-tuning
checkpoint of the bundled MiniLM (parameters, AdamW's two moments, the best epoch's copy) and on a
BitFit one. Prints one JSON line per method: median seconds per save with and without the fsyncs.

    python -m scripts.perf_fsync --repeats 5 --folder /tmp/fsync     # a folder on the disk runs write to
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

from bitfit import checkpoint
from bitfit.models import resolve_model


def train_state(method: str) -> checkpoint.TrainState:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(resolve_model("minilm"))
    params = {n: p.detach().clone() for n, p in model.named_parameters() if method == "full_ft" or n.endswith(".bias")}
    opt = torch.optim.AdamW(list(params.values()))
    for p in params.values():
        p.grad = torch.randn_like(p)
    opt.step()
    return checkpoint.TrainState(epoch=1, params=params, best_params={n: t.clone() for n, t in params.items()},
                                 optimizer=opt.state_dict(), rng=checkpoint.rng_state(), best={"epoch": 1})


def time_saves(st: checkpoint.TrainState, folder: Path, repeats: int) -> dict:
    with_sync, without = [], []
    for i in range(repeats):
        for arm, times in (("fsync", with_sync), ("none", without)):
            run_dir = Path(tempfile.mkdtemp(dir=folder))
            patch = mock.patch.object(os, "fsync", lambda fd: None) if arm == "none" else contextlib.nullcontext()
            with patch:
                t = time.perf_counter()
                checkpoint.save(run_dir, st, best_changed=True)
                times.append(time.perf_counter() - t)
    size = sum(f.stat().st_size for f in (run_dir / checkpoint.FOLDER).iterdir())
    return {"checkpoint_mb": round(size / 2**20, 1), "save_s_with_fsync": round(statistics.median(with_sync), 3),
            "save_s_without_fsync": round(statistics.median(without), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()))
    args = ap.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    for method in ("bitfit", "full_ft"):
        print(json.dumps({"method": method, **time_saves(train_state(method), args.folder, args.repeats)}), flush=True)


if __name__ == "__main__":
    main()
