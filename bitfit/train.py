"""The training loop: seed, data, model, policy, optimizer, fit, evaluate every epoch, write the run.

    from bitfit.config import RunConfig
    from bitfit.train import run
    results = run(RunConfig(output_path="runs/rte", task_name="rte", data_dir="../shared/glue_data",
                            fine_tune_type="bitfit", epochs=3))

Everything that can be wrong with the input is checked before the run folder is touched.
"""

from __future__ import annotations

import json
import logging
import math
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import io, policies
from .config import RunConfig
from .data import Encoded, encode, load_glue
from .errors import UserError
from .metrics import compute_metrics
from .models import load_model, load_tokenizer, resolve_model
from .plots import plot_learning_curves
from .tasks import GlueTask, get_task

log = logging.getLogger("bitfit")

DELTA_FORMAT = "bitfit-delta/1"
PROBE_STEPS = 50  # --layers auto:K: full fine-tuning steps of the probe run
PROBE_LR = 2e-5


class EpochBatches(torch.utils.data.Sampler):
    """Shuffled batches of indices, a fresh order each epoch drawn from (seed, epoch) alone.

    With ``lengths``, batches are length-grouped as Hugging Face's ``group_by_length`` does: the
    shuffled order is cut into mega-batches of ``MEGA`` batches, each sorted by length, then cut
    into batches whose order is shuffled again; padding per batch then costs little.
    """

    MEGA = 50

    def __init__(self, n: int, batch_size: int, seed: int, lengths: list[int] | None = None):
        self.n, self.batch_size, self.seed, self.epoch, self.lengths = n, batch_size, seed, 0, lengths

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        if self.lengths is not None:
            mega = self.MEGA * self.batch_size
            order = [i for k in range(0, self.n, mega)
                     for i in sorted(order[k:k + mega], key=lambda j: -self.lengths[j])]
        batches = [order[i:i + self.batch_size] for i in range(0, self.n, self.batch_size)]
        if self.lengths is not None:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        yield from batches

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO if verbose else logging.WARNING, force=True)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def make_accelerator(cfg: RunConfig):
    from accelerate import Accelerator

    cuda = torch.cuda.is_available() and not cfg.cpu
    if cfg.gpu_device is not None and cuda:
        if cfg.gpu_device >= torch.cuda.device_count():
            raise UserError(f"gpu device {cfg.gpu_device} does not exist; accepted: 0 to {torch.cuda.device_count() - 1}")
        torch.cuda.set_device(cfg.gpu_device)
    if cfg.precision == "fp16" and not cuda:
        raise UserError("precision 'fp16' needs a CUDA GPU; accepted on the CPU: fp32, bf16")
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # a second run() in one process may use another precision; keeps the process group
    accelerator = Accelerator(cpu=cfg.cpu or not cuda, mixed_precision="no" if cfg.precision == "fp32" else cfg.precision,
                              gradient_accumulation_steps=cfg.grad_accum)
    if accelerator.device.type == "cpu" and accelerator.is_main_process:
        reason = "--cpu given" if cfg.cpu else "no GPU found"
        log.warning("%s: running on the CPU%s", reason, " (ignoring --gpu-device)" if cfg.gpu_device is not None else "")
    return accelerator


def collator(tokenizer):
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=None)


@torch.inference_mode()
def predict(model, loader, accelerator, task: GlueTask) -> tuple[np.ndarray, np.ndarray | None, float | None]:
    """Predictions (class ids or scores) over a whole split, gathered once across processes."""
    model.eval()
    preds, labels, loss_sum, count = [], [], 0.0, 0
    for batch in loader:
        out = model(**batch)
        logits = out.logits.float()
        pred = logits.squeeze(-1) if task.is_regression else logits.argmax(-1)
        if "labels" in batch:
            n = batch["labels"].shape[0]
            loss_sum += float(out.loss) * n
            count += n
            pred, gold = accelerator.gather_for_metrics((pred, batch["labels"]))
            labels.append(gold.cpu())
        else:
            pred = accelerator.gather_for_metrics(pred)
        preds.append(pred.cpu())
    model.train()
    preds_np = torch.cat(preds).numpy() if preds else np.zeros(0)
    labels_np = torch.cat(labels).numpy() if labels else None
    return preds_np, labels_np, (loss_sum / count if count else None)


def make_optimizer(cfg: RunConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return kind(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def make_scheduler(cfg: RunConfig, optimizer, total_steps: int):
    from transformers import get_scheduler

    warmup = int(cfg.warmup_ratio * total_steps)
    name = {"constant": "constant_with_warmup" if warmup else "constant"}.get(cfg.scheduler, cfg.scheduler)
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def make_probe(train: Encoded, collate, cfg: RunConfig):
    """For ``--layers auto:K``: briefly full-fine-tune a copy of the model so layers can be ranked."""

    def probe(model: torch.nn.Module) -> None:
        for p in model.parameters():
            p.requires_grad_(True)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=PROBE_LR)
        loader = torch.utils.data.DataLoader(train, batch_sampler=EpochBatches(len(train), cfg.batch_size, cfg.seed + 1),
                                             collate_fn=collate)
        device = next(model.parameters()).device
        for step, batch in enumerate(loader):
            if step >= PROBE_STEPS:
                break
            loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    return probe


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def _subset(examples, limit):
    return examples if limit is None else examples[:limit]


def run(cfg: RunConfig) -> dict:
    """Fine-tune, evaluate every epoch, write the run folder; returns results.json's content."""
    setup_logging(cfg.verbose)
    started = time.time()
    task = get_task(cfg.task_name)
    io.check_output_folder(cfg.output_path, cfg.overwrite)

    # ---- everything that can fail on bad input happens before the run folder is written
    splits = load_glue(task, cfg.data_dir, with_test=cfg.predict_test)
    splits["train"] = _subset(splits["train"], cfg.max_train_samples)
    for s in task.dev_splits:
        splits[s.name] = _subset(splits[s.name], cfg.max_eval_samples)
    for s in task.test_splits:
        if s.name in splits:
            splits[s.name] = _subset(splits[s.name], cfg.max_predict_samples)
    from accelerate.utils import set_seed

    set_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model_name)
    model, fresh = load_model(cfg.model_name, task)
    accelerator = make_accelerator(cfg)
    encoded = {name: encode(ex, tokenizer, cfg.max_seq_length, task.is_regression) for name, ex in splits.items()}
    collate = collator(tokenizer)
    if cfg.layers is not None:
        policies.parse_layers(cfg.layers, num_layers=model.config.num_hidden_layers)
    sel = policies.select(model, cfg, probe=make_probe(encoded["train"], collate, cfg))
    guard = policies.apply(model, sel)
    params = [p for p in model.parameters() if p.requires_grad]
    counts = policies.trainable_counts(model, sel)
    trainable, total = counts["trained"], counts["total"]
    if accelerator.is_main_process:
        log.info("fine-tune type %s on %s (%s)\n%s", cfg.fine_tune_type, task.glue_name, cfg.model_name,
                 policies.trainable_table(model, sel))
        for note in sel.notes:
            log.info(note)

    out = Path(cfg.output_path)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        for stale in list(io.RUN_FILES) + [s.submission for t in [task] for s in t.test_splits]:
            (out / stale).unlink(missing_ok=True)
        io.write_json(out / "config.json", {"config": cfg.to_dict(), "model_path": resolve_model(cfg.model_name),
                                            "task": task.glue_name, "policy_notes": sel.notes,
                                            "device": str(accelerator.device), "num_processes": accelerator.num_processes,
                                            "environment": io.environment()})

    # ---- data loaders, optimizer, schedule
    sampler = EpochBatches(len(encoded["train"]), cfg.batch_size, cfg.seed,
                           lengths=encoded["train"].lengths() if cfg.group_by_length else None)
    train_dl = torch.utils.data.DataLoader(encoded["train"], batch_sampler=sampler, collate_fn=collate)
    eval_names = [s.name for s in task.dev_splits] + (["train"] if cfg.eval_train else [])
    eval_dls = {n: torch.utils.data.DataLoader(encoded[n], batch_size=cfg.eval_batch_size, collate_fn=collate)
                for n in eval_names}
    test_dls = {s.name: torch.utils.data.DataLoader(encoded[s.name], batch_size=cfg.eval_batch_size, collate_fn=collate)
                for s in task.test_splits if s.name in encoded}
    optimizer = make_optimizer(cfg, params)
    model, optimizer, train_dl = accelerator.prepare(model, optimizer, train_dl)
    eval_dls = {n: accelerator.prepare(dl) for n, dl in eval_dls.items()}
    test_dls = {n: accelerator.prepare(dl) for n, dl in test_dls.items()}
    steps_per_epoch = math.ceil(len(train_dl) / cfg.grad_accum)
    scheduler = make_scheduler(cfg, optimizer, steps_per_epoch * cfg.epochs)

    # ---- fit
    history: list[dict] = []
    best: dict | None = None
    best_state: dict[str, torch.Tensor] = {}
    train_time, train_samples = 0.0, 0
    unwrapped = accelerator.unwrap_model(model)
    model.train()
    for epoch in range(1, cfg.epochs + 1):
        sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        loss_sum, seen = 0.0, 0
        bar = tqdm(train_dl, desc=f"epoch {epoch}/{cfg.epochs}", disable=not (cfg.verbose and accelerator.is_main_process),
                   leave=False, dynamic_ncols=True, mininterval=1.0)
        for batch in bar:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients:
                    guard.after_step()
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            n = batch["labels"].shape[0]
            loss_sum += float(loss.detach()) * n
            seen += n
            elapsed = time.perf_counter() - t0
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", samples_s=f"{seen * accelerator.num_processes / elapsed:.1f}")
        epoch_time = time.perf_counter() - t0
        train_time += epoch_time
        train_samples += seen * accelerator.num_processes
        rows = [{"epoch": epoch, "split": "train", "loss": loss_sum / seen, "lr": scheduler.get_last_lr()[0],
                 "seconds": round(epoch_time, 3)}]
        for name, dl in eval_dls.items():
            preds, labels, loss_ = predict(model, dl, accelerator, task)
            metrics = compute_metrics(task.metrics, preds, labels)
            if name == "train":
                rows[0].update(metrics)
            else:
                rows.append({"epoch": epoch, "split": name, "loss": loss_, **metrics})
        history += rows
        main = next(r for r in rows if r["split"] == task.main_dev_split)[task.main_metric]
        if accelerator.is_main_process:
            log.info("epoch %d: train loss %.4f, %s", epoch, rows[0]["loss"],
                     "; ".join(f"{r['split']} " + ", ".join(f"{m} {r[m]:.4f}" for m in task.metrics) for r in rows[1:]))
            io.write_jsonl(out / "metrics.jsonl", history)
        if best is None or main > best["main"]:
            best = {"epoch": epoch, "main": main, "rows": rows[1:]}
            best_state = {n: p.detach().to("cpu", copy=True) for n, p in unwrapped.named_parameters() if p.requires_grad}

    # ---- restore the best epoch, save what was learned, predict the test set
    params_by_name = dict(unwrapped.named_parameters())
    with torch.no_grad():
        for n, t in best_state.items():
            params_by_name[n].copy_(t)
    results = {
        "task": task.name, "fine_tune_type": cfg.fine_tune_type, "model_name": cfg.model_name,
        "best_epoch": best["epoch"], "main_metric": task.main_metric, "best_main_metric": best["main"],
        "best_metrics": {r["split"]: {m: r[m] for m in task.metrics} | {"loss": r["loss"]} for r in best["rows"]},
        "trainable_params": trainable, "total_params": total,
        "trainable_percent": 100 * trainable / total,
        "trainable_params_encoder": counts["trained_encoder"], "trainable_params_in_layers": counts["trained_in_layers"],
        "epochs": cfg.epochs, "train_samples": train_samples, "train_seconds": round(train_time, 3),
        "train_samples_per_second": train_samples / train_time if train_time else None,
        "peak_memory_mb": round(peak_memory_mb(accelerator.device), 1),
        "device": str(accelerator.device),
    }
    if sel.masked:
        from .sparse import achieved_sparsity

        results["achieved_sparsity"] = achieved_sparsity(unwrapped)
    if accelerator.is_main_process:
        save_delta(out / "delta.safetensors", unwrapped, sel, fresh, cfg, task, best["epoch"])
    for split in task.test_splits:
        if split.name in test_dls:
            preds, _, _ = predict(model, test_dls[split.name], accelerator, task)
            if accelerator.is_main_process:
                write_submission(out / split.submission, task, splits[split.name], preds)
    if accelerator.is_main_process:
        plot_learning_curves(history, task.metrics, out / "learning_curves.png",
                             f"{task.glue_name} · {cfg.fine_tune_type} · {cfg.model_name}")
        if cfg.save_evaluator:
            io.write_pickle(out / "evaluator.pkl", {"config": cfg.to_dict(), "history": history, "results": results})
        results["wall_seconds"] = round(time.time() - started, 3)
        io.write_json(out / "results.json", results)
        log.info("best epoch %d: %s %.4f; trainable %s of %s (%.4f%%); run folder %s", best["epoch"], task.main_metric,
                 best["main"], f"{trainable:,}", f"{total:,}", results["trainable_percent"], out)
    accelerator.wait_for_everyone()
    return results


def save_delta(path: Path, model, sel, fresh: list[str], cfg: RunConfig, task: GlueTask, epoch: int) -> None:
    """The learned tensors (plus any the base checkpoint lacked), with what they apply to."""
    tensors = policies.delta_tensors(model, sel)
    state = model.state_dict()
    for name in fresh:
        if name not in tensors and name in state:
            tensors[name] = state[name].detach().to("cpu", copy=True).contiguous()
    meta = {
        "format": DELTA_FORMAT, "base_model": cfg.model_name, "model_type": model.config.model_type,
        "task": task.name, "labels": json.dumps(list(task.labels) if task.labels else None),
        "policy": cfg.fine_tune_type, "bias_terms": json.dumps(cfg.bias_terms), "best_epoch": str(epoch),
        "config": json.dumps(cfg.to_dict()),
    }
    io.write_safetensors(path, tensors, meta)


def format_prediction(task: GlueTask, pred) -> str:
    if task.is_regression:
        return f"{min(5.0, max(0.0, float(pred))):.3f}"
    return task.labels[int(pred)]


def write_submission(path: Path, task: GlueTask, examples, preds: np.ndarray) -> None:
    """``index<TAB>prediction`` rows in the label format the GLUE server accepts."""
    if len(examples) != len(preds):
        raise RuntimeError(f"{path.name}: {len(preds)} predictions for {len(examples)} test rows")
    lines = ["index\tprediction"] + [f"{e.index}\t{format_prediction(task, p)}" for e, p in zip(examples, preds)]
    io.write_text(path, "\n".join(lines) + "\n")
