"""The training loop: seed, data, model, policy, optimizer, fit, evaluate every epoch, write the run.

    from bitfit.config import RunConfig
    from bitfit.train import run
    results = run(RunConfig(output_path="runs/rte", task_name="rte", data_dir="../shared/glue_data",
                            fine_tune_type="bitfit", epochs=3))

Everything that can be wrong with the input is checked before the run folder is touched.
"""

from __future__ import annotations

import logging
import math
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import checkpoint, delta, fastops, io, policies
from .config import RunConfig
from .data import EpochBatches, Encoded, collator, encode, load_glue
from .devices import peak_memory_mb
from .logs import setup_logging
from .errors import RunStopped, UserError
from .metrics import compute_metrics
from .models import load_model, load_tokenizer, resolve_model
from .plots import plot_learning_curves
from .tasks import GlueTask, get_task

log = logging.getLogger("bitfit")

PROBE_STEPS = 50  # --layers auto:K: full fine-tuning steps of the probe run
PROBE_LR = 2e-5


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


@torch.inference_mode()
def predict(model, loader, accelerator, task: GlueTask) -> tuple[np.ndarray, np.ndarray | None, float | None]:
    """Predictions (class ids or scores) and mean loss over a whole split, each example counted once
    across processes (``gather_for_metrics`` drops the padding duplicates of an uneven last batch)."""
    model.eval()
    preds, labels, losses = [], [], []
    for batch in loader:
        gold = batch.pop("labels", None)
        logits = model(**batch).logits.float()
        pred = logits.squeeze(-1) if task.is_regression else logits.argmax(-1)
        if gold is not None:
            loss = (torch.nn.functional.mse_loss(logits.squeeze(-1), gold.float(), reduction="none") if task.is_regression
                    else torch.nn.functional.cross_entropy(logits, gold, reduction="none"))
            pred, gold, loss = accelerator.gather_for_metrics((pred, gold, loss))
            labels.append(gold.cpu())
            losses.append(loss.cpu())
        else:
            pred = accelerator.gather_for_metrics(pred)
        preds.append(pred.cpu())
    model.train()
    preds_np = torch.cat(preds).numpy() if preds else np.zeros(0)
    labels_np = torch.cat(labels).numpy() if labels else None
    return preds_np, labels_np, (float(torch.cat(losses).double().mean()) if losses else None)


def make_optimizer(cfg: RunConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """Adam(W) over the trainable tensors only: fused kernels on CUDA, foreach (multi-tensor) elsewhere."""
    kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    cuda = all(p.is_cuda for p in params)
    return kind(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                **({"fused": True} if cuda else {"foreach": True}))


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


def _subset(examples, limit):
    return examples if limit is None else examples[:limit]


@dataclass
class Setup:
    """A validated run, before anything is written: data, model, policy, accelerator."""

    cfg: RunConfig
    task: GlueTask
    splits: dict
    encoded: dict
    tokenizer: object
    model: torch.nn.Module
    fresh: list[str]
    base_fp: str  # delta.fingerprint of the base, written into the delta
    sel: policies.Selection
    accelerator: object
    out: Path


def prepare(cfg: RunConfig) -> Setup:
    """Everything that can fail on bad input, done before the run folder is touched."""
    task = get_task(cfg.task_name)
    out = Path(cfg.output_path)
    if cfg.resume:
        checkpoint.check_resumable(cfg, out)
    else:
        io.check_output_folder(cfg.output_path, cfg.overwrite)
    splits = load_glue(task, cfg.data_dir, with_test=cfg.predict_test)
    splits["train"] = _subset(splits["train"], cfg.max_train_samples)
    for s in task.dev_splits:
        splits[s.name] = _subset(splits[s.name], cfg.max_eval_samples)
    for s in task.test_splits:
        if s.name in splits:
            splits[s.name] = _subset(splits[s.name], cfg.max_predict_samples)
    from accelerate.utils import set_seed

    set_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model_name, cfg.trust_remote_code)
    model, fresh = load_model(cfg.model_name, task, cfg.trust_remote_code, cfg.attention_dropout)
    base_fp = delta.fingerprint(model, fresh)  # of the pretrained weights, before anything trains
    accelerator = make_accelerator(cfg)
    encoded = {name: encode(ex, tokenizer, cfg.max_seq_length, task.is_regression) for name, ex in splits.items()}
    if cfg.layers is not None:
        policies.parse_layers(cfg.layers, num_layers=model.config.num_hidden_layers)
    sel = policies.select(model, cfg, probe=make_probe(encoded["train"], collator(tokenizer), cfg))
    return Setup(cfg, task, splits, encoded, tokenizer, model, fresh, base_fp, sel, accelerator, out)


def open_run_folder(su: Setup) -> None:
    """Create the folder (main process only, after every process has checked it) and write config.json."""
    su.accelerator.wait_for_everyone()
    if not su.accelerator.is_main_process:
        return
    su.out.mkdir(parents=True, exist_ok=True)
    if not su.cfg.resume:
        for stale in list(io.RUN_FILES) + [s.submission for s in su.task.test_splits]:
            (su.out / stale).unlink(missing_ok=True)
        checkpoint.remove(su.out)
    io.write_json(su.out / "config.json", {
        "config": su.cfg.to_dict(), "model_path": resolve_model(su.cfg.model_name), "task": su.task.glue_name,
        "policy_notes": su.sel.notes, "device": str(su.accelerator.device),
        "num_processes": su.accelerator.num_processes, "environment": io.environment()})


def run(cfg: RunConfig) -> dict:
    """Fine-tune, evaluate every epoch, write the run folder; returns results.json's content.

    Raises ``RunStopped`` (after writing results.json with status "interrupted" or "diverged" and
    keeping the last complete epoch's checkpoint) on SIGINT/SIGTERM or a non-finite loss.
    """
    setup_logging(cfg.verbose)
    started = time.time()
    su = prepare(cfg)
    cfg, task, accelerator, model, sel = su.cfg, su.task, su.accelerator, su.model, su.sel
    guard = policies.apply(model, sel)
    params = [p for p in model.parameters() if p.requires_grad]
    counts = policies.trainable_counts(model, sel)
    if cfg.fast_cpu_ops and accelerator.device.type == "cpu" and not cfg.compile:
        switched = fastops.install(model)
        log.info("fast CPU ops: %d dropout modules%s", switched["dropout"],
                 " and the attention" if switched["attention"] else "")
    if cfg.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if accelerator.is_main_process:
        log.info("fine-tune type %s on %s (%s)\n%s", cfg.fine_tune_type, task.glue_name, cfg.model_name,
                 policies.trainable_table(model, sel))
        for note in sel.notes:
            log.info(note)
    open_run_folder(su)

    # ---- data loaders, optimizer, schedule
    collate = collator(su.tokenizer)
    train = su.encoded["train"]
    sampler = EpochBatches(len(train), cfg.batch_size, cfg.seed, lengths=train.lengths() if cfg.group_by_length else None)
    train_dl = torch.utils.data.DataLoader(train, batch_sampler=sampler, collate_fn=collate)
    eval_names = [s.name for s in task.dev_splits] + (["train"] if cfg.eval_train else [])

    def loader(name):
        return accelerator.prepare(torch.utils.data.DataLoader(su.encoded[name], batch_size=cfg.eval_batch_size,
                                                               collate_fn=collate))

    eval_dls = {n: loader(n) for n in eval_names}
    optimizer = make_optimizer(cfg, params)
    model, optimizer, train_dl = accelerator.prepare(model, optimizer, train_dl)
    if cfg.compile:
        model = torch.compile(model, dynamic=True)  # dynamic: batches are padded to varying lengths
    steps_per_epoch = math.ceil(len(train_dl) / cfg.grad_accum)
    scheduler = make_scheduler(cfg, optimizer, steps_per_epoch * cfg.epochs)
    unwrapped = accelerator.unwrap_model(model)
    named = dict(unwrapped.named_parameters())

    st = checkpoint.TrainState(epoch=0, global_step=0, history=[], best=None, train_time=0.0, train_samples=0)
    if cfg.resume:
        st = checkpoint.load(su.out)
        with torch.no_grad():
            for n, t in st.params.items():
                named[n].copy_(t)
        optimizer.load_state_dict(st.optimizer)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(st.global_step):
                scheduler.step()
        checkpoint.set_rng_state(st.rng)
        log.info("resuming after epoch %d of %d (step %d)", st.epoch, cfg.epochs, st.global_step)

    # ---- fit
    model.train()
    with checkpoint.Interrupt() as interrupt:
        for epoch in range(st.epoch + 1, cfg.epochs + 1):
            # accelerate's loader hands its own epoch counter to the sampler (one process) or none at all
            # (several, behind BatchSamplerShard): set both, so the order depends on (seed, epoch) alone
            train_dl.set_epoch(epoch)
            sampler.set_epoch(epoch)
            t0 = time.perf_counter()
            loss_sum, seen = 0.0, 0
            bar = tqdm(train_dl, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, dynamic_ncols=True, mininterval=1.0,
                       disable=not (cfg.verbose and accelerator.is_main_process))
            for batch in bar:
                with accelerator.accumulate(model):
                    loss = model(**batch).loss
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        _stop(su, st, counts, started, "diverged",
                              f"non-finite loss ({value}) at epoch {epoch}, step {st.global_step + 1} with learning "
                              f"rate {scheduler.get_last_lr()[0]:g}; lower --learning-rate", exit_code=1)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                    optimizer.step()
                    if accelerator.sync_gradients:
                        guard.after_step()
                        scheduler.step()
                        st.global_step += 1
                    optimizer.zero_grad(set_to_none=True)
                n = batch["labels"].shape[0]
                loss_sum += value * n
                seen += n
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}",
                                samples_s=f"{seen * accelerator.num_processes / (time.perf_counter() - t0):.1f}")
                if interrupt.poll(st.global_step):
                    sig = signal.Signals(interrupt.signum or signal.SIGINT)
                    _stop(su, st, counts, started, "interrupted",
                          f"{sig.name} during epoch {epoch}: stopped; epochs 1-{st.epoch} are kept. Resume with:\n  "
                          f"{checkpoint.resume_command(cfg)}", exit_code=128 + sig.value)
            epoch_time = time.perf_counter() - t0
            if accelerator.num_processes > 1:  # every process's share of the epoch
                loss_sum, seen = accelerator.reduce(torch.tensor([loss_sum, seen], dtype=torch.float64,
                                                                 device=accelerator.device), "sum").tolist()
                seen = int(seen)
            rows = [{"epoch": epoch, "split": "train", "loss": loss_sum / seen, "lr": scheduler.get_last_lr()[0],
                     "seconds": round(epoch_time, 3)}]
            for name, dl in eval_dls.items():
                preds, labels, loss_ = predict(model, dl, accelerator, task)
                metrics = compute_metrics(task.metrics, preds, labels)
                if name == "train":
                    rows[0].update(metrics)
                else:
                    rows.append({"epoch": epoch, "split": name, "loss": loss_, **metrics})
            main = next(r for r in rows if r["split"] == task.main_dev_split)[task.main_metric]
            improved = st.best is None or main > st.best["main"]
            trainable_now = {n: p.detach().to("cpu", copy=True) for n, p in named.items() if p.requires_grad}
            if improved:
                st.best, st.best_params = {"epoch": epoch, "main": main, "rows": rows[1:]}, trainable_now
            st.epoch, st.history = epoch, st.history + rows
            st.train_time += epoch_time
            st.train_samples += seen
            st.params, st.optimizer, st.rng = trainable_now, optimizer.state_dict(), checkpoint.rng_state()
            if accelerator.is_main_process:
                log.info("epoch %d: train loss %.4f, %s", epoch, rows[0]["loss"], "; ".join(
                    f"{r['split']} " + ", ".join(f"{m} {r[m]:.4f}" for m in task.metrics) for r in rows[1:]))
                io.write_jsonl(su.out / "metrics.jsonl", st.history)
                checkpoint.save(su.out, st, best_changed=improved)
    return finish(su, model, st, counts, started)


def _results(su: Setup, st: checkpoint.TrainState, counts: dict, started: float, status: str) -> dict:
    cfg, task = su.cfg, su.task
    best = st.best or {}
    return {
        "status": status, "task": task.name, "fine_tune_type": cfg.fine_tune_type, "model_name": cfg.model_name,
        "completed_epochs": st.epoch, "epochs": cfg.epochs,
        "best_epoch": best.get("epoch"), "main_metric": task.main_metric, "best_main_metric": best.get("main"),
        "best_metrics": {r["split"]: {m: r[m] for m in task.metrics} | {"loss": r["loss"]} for r in best.get("rows", [])},
        "trainable_params": counts["trained"], "total_params": counts["total"],
        "trainable_percent": 100 * counts["trained"] / counts["total"],
        "trainable_params_encoder": counts["trained_encoder"], "trainable_params_in_layers": counts["trained_in_layers"],
        "train_samples": st.train_samples, "train_seconds": round(st.train_time, 3),
        "train_samples_per_second": st.train_samples / st.train_time if st.train_time else None,
        "peak_memory_mb": round(peak_memory_mb(su.accelerator.device), 1),
        "device": str(su.accelerator.device), "wall_seconds": round(time.time() - started, 3),
    }


def _stop(su: Setup, st, counts, started, status: str, message: str, exit_code: int):
    """Record why the run stopped (the last complete epoch's checkpoint stays) and raise RunStopped."""
    if su.accelerator.is_main_process:
        results = _results(su, st, counts, started, status) | {"message": message}
        if status == "interrupted":
            results["resume_command"] = checkpoint.resume_command(su.cfg)
        io.write_json(su.out / "results.json", results)
    raise RunStopped(message, exit_code)


def finish(su: Setup, model, st: checkpoint.TrainState, counts: dict, started: float) -> dict:
    """Restore the best epoch, save the delta, predict the test set, plot, write results.json."""
    cfg, task, accelerator = su.cfg, su.task, su.accelerator
    unwrapped = accelerator.unwrap_model(model)
    named = dict(unwrapped.named_parameters())
    with torch.no_grad():
        for n, t in st.best_params.items():
            named[n].copy_(t)
    results = _results(su, st, counts, started, "complete")
    if su.sel.masked:
        from .sparse import achieved_sparsity

        results["achieved_sparsity"] = achieved_sparsity(unwrapped)
    if accelerator.is_main_process:
        delta.save(su.out / "delta.safetensors", unwrapped, su.sel, su.fresh, cfg, task, st.best["epoch"],
                   base_fp=su.base_fp)
    collate = collator(su.tokenizer)
    for split in task.test_splits:
        if split.name in su.encoded:
            dl = accelerator.prepare(torch.utils.data.DataLoader(su.encoded[split.name], batch_size=cfg.eval_batch_size,
                                                                 collate_fn=collate))
            preds, _, _ = predict(model, dl, accelerator, task)
            if accelerator.is_main_process:
                write_submission(su.out / split.submission, task, su.splits[split.name], preds)
    if accelerator.is_main_process:
        plot_learning_curves(st.history, task.metrics, su.out / "learning_curves.png",
                             f"{task.glue_name} · {cfg.fine_tune_type} · {cfg.model_name}")
        if cfg.save_evaluator:
            io.write_pickle(su.out / "evaluator.pkl", {"config": cfg.to_dict(), "history": st.history, "results": results})
        results["wall_seconds"] = round(time.time() - started, 3)
        io.write_json(su.out / "results.json", results)
        if not cfg.keep_checkpoint:
            checkpoint.remove(su.out)
        log.info("best epoch %d: %s %.4f; trainable %s of %s (%.4f%%); run folder %s", st.best["epoch"],
                 task.main_metric, st.best["main"], f"{counts['trained']:,}", f"{counts['total']:,}",
                 results["trainable_percent"], su.out)
    accelerator.wait_for_everyone()
    return results


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
