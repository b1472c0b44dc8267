"""The training loop, top to bottom: start, one epoch, evaluate, end of epoch, finish.

    from bitfit import RunConfig, run
    results = run(RunConfig(output_path="runs/rte", task_name="rte", data_dir="../shared/glue_data",
                            fine_tune_type="bitfit", epochs=3))

The run's moving parts live in one object, ``Training``; its progress (epoch, step, history, best
epoch, what the checkpoint saves) in ``checkpoint.TrainState``. Everything that can be wrong with
the input is checked (``setup.prepare``) before the run folder is touched.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from .. import checkpoint, delta, fastops, io, policies
from ..trackers import close_trackers, log_epoch, open_trackers
from ..config import RunConfig
from ..data import EpochBatches, SortedLoader, collator, loader_options, sorted_loader
from ..devices import max_peak_memory_mb
from ..errors import RunStopped, StopEarly
from ..logs import setup_logging
from ..metrics import baseline_answer, compute_metrics
from ..plots import plot_learning_curves
from ..progress import progress
from ..tasks import dev_main
from ..submit import write_submission
from . import masks, stops
from .evaluate import predict
from .optim import make_optimizer, make_scheduler
from .setup import Setup, open_run_folder, prepare

log = logging.getLogger("bitfit")

SHOW_EVERY = 1.0  # seconds between updates of the progress display's loss (reading it waits for the GPU)


@dataclass
class Training:
    """One run in progress: its set-up, the prepared model, loaders, optimizer and schedule, its state."""

    su: Setup
    model: torch.nn.Module
    guard: policies.Guard
    params: list[torch.nn.Parameter]  # the trainable tensors, in the optimizer's order
    named: dict[str, torch.nn.Parameter]  # every parameter of the unwrapped model, by name
    counts: dict[str, int]
    sampler: EpochBatches
    train_dl: object
    eval_dls: dict
    optimizer: torch.optim.Optimizer
    scheduler: object
    started: float
    st: checkpoint.TrainState = field(default_factory=checkpoint.TrainState)
    trackers: list = field(default_factory=list)  # --report-to, main process
    watch: stops.LossWatch = field(default_factory=stops.LossWatch)  # non-finite losses, on the device
    unchecked: int = 0  # optimizer steps of this epoch since the last check (stops.check)
    lrs: dict[int, float] = field(default_factory=dict)  # their learning rates, by step, for a divergence's message
    interrupted: int = 0  # the signal that reached this process (0: none); it stops at the next check
    mask_4d: bool = False  # the model takes the attention mask in its 4D form (masks.py: no wait per forward)

    @property
    def cfg(self) -> RunConfig:
        return self.su.cfg

    @property
    def accelerator(self):
        return self.su.accelerator


EpochCallback = Callable[[dict], None]


def run(cfg: RunConfig, on_epoch: EpochCallback | None = None) -> dict:
    """Fine-tune, evaluate every epoch, write the run folder; returns results.json's content.

    ``on_epoch`` (main process) is called after every epoch's checkpoint with ``{"epoch", "rows",
    "main_metric", "main"}`` (a sweep reports it to Tune); it may raise ``StopEarly``.

    Raises ``RunStopped`` (after writing results.json with status "interrupted", "diverged" or
    "stopped" and keeping the last complete epoch's checkpoint) on SIGINT/SIGTERM, a non-finite loss,
    or ``StopEarly``.
    """
    setup_logging(cfg.verbose)
    started = time.time()
    su = prepare(cfg)  # holds the run folder's lock from here on
    tr = None
    try:
        tr = start(su, started)
        tr.trackers = open_trackers(cfg.report_to, su.out, cfg.to_dict(), tr.accelerator.is_main_process)
        tr.model.train()
        with checkpoint.Interrupt() as interrupt:
            for epoch in range(tr.st.epoch + 1, cfg.epochs + 1):
                loss, seen, seconds = epoch_totals(tr, *train_epoch(tr, epoch, interrupt))
                rows = evaluate(tr, epoch, loss, seen, seconds)
                end_epoch(tr, epoch, rows, seen, seconds)
                _call_back(tr, on_epoch, epoch, rows)
        return finish(tr)
    finally:
        if tr is not None:
            close_trackers(tr.trackers)
        if su.lock is not None:
            su.lock.release()


def _with_baseline(row: dict, metrics: tuple[str, ...], base: dict) -> str:
    """``dev accuracy 0.4874 (always 'entailment': 0.5271)``: each metric beside its trivial baseline."""
    shown = ", ".join(f"{m} {row[m]:.4f}" for m in metrics)
    if not base:
        return f"{row['split']} {shown}"
    return f"{row['split']} {shown} ({baseline_answer(base)}: " + ", ".join(f"{base[m]:.4f}" for m in metrics) + ")"


def beats_baseline(tr: Training) -> bool:
    """Whether the best epoch's main metric is above the main dev split's trivial baseline."""
    task, best = tr.su.task, tr.st.best
    return best is not None and best["main"] > tr.su.baselines[task.main_dev_split][task.main_metric]


def _warn_if_not_learned(tr: Training) -> None:
    task = tr.su.task
    if beats_baseline(tr):
        return
    base = tr.su.baselines[task.main_dev_split]
    answer = "a constant prediction" if base["answer"] == "constant" else f"always answering {base['answer']!r}"
    log.warning("best dev %s %.4f is not above %s (%.4f): the model did not learn the task; what usually helps: more "
                "epochs (the paper's BitFit used up to 16), the learning-rate grid (1e-4 to 1e-3 for BitFit), or "
                "another seed", task.main_metric, tr.st.best["main"], answer, base[task.main_metric])


def _call_back(tr: Training, on_epoch: EpochCallback | None, epoch: int, rows: list[dict]) -> None:
    """The main process calls ``on_epoch``; every process stops if it raised ``StopEarly``."""
    mine = None
    if on_epoch is not None and tr.accelerator.is_main_process:
        task = tr.su.task
        try:
            on_epoch({"epoch": epoch, "rows": rows, "main_metric": task.main_metric, "main": dev_main(task, rows)})
        except StopEarly as e:
            mine = stops.Stop("stopped", f"stopped early after epoch {epoch} of {tr.cfg.epochs}: {e}", exit_code=0)
    agreed = stops.agree(tr.accelerator, mine)
    if agreed is not None:
        stop(tr, agreed.status, agreed.message, agreed.exit_code)


def start(su: Setup, started: float) -> Training:
    """Apply the method, log what trains, open the run folder, build loaders, optimizer, schedule; resume."""
    cfg, accelerator, model = su.cfg, su.accelerator, su.model
    guard = policies.apply(model, su.selection)
    params = [p for p in model.parameters() if p.requires_grad]
    counts = policies.trainable_counts(model, su.selection)
    _speed_options(cfg, model, accelerator)
    if accelerator.is_main_process:
        log.info("fine-tune type %s on %s (%s)\n%s", cfg.fine_tune_type, su.task.glue_name, cfg.model_name,
                 policies.trainable_table(model, su.selection))
        for note in su.selection.notes:
            log.info(note)
    open_run_folder(su)
    collate = collator(su.tokenizer)
    train = su.encoded["train"]
    sampler = EpochBatches(len(train), cfg.batch_size, cfg.seed, lengths=train.lengths() if cfg.group_by_length else None)
    train_dl = torch.utils.data.DataLoader(train, batch_sampler=sampler, collate_fn=collate,
                                           **loader_options(cfg.num_workers, accelerator.device))
    eval_names = [s.name for s in su.task.dev_splits] + (["train"] if cfg.eval_train else [])
    eval_dls = {n: _eval_loader(su, n) for n in eval_names}
    optimizer = make_optimizer(cfg, guard.param_groups(model), accelerator.device)  # the params are still on the CPU here
    model, optimizer, train_dl = accelerator.prepare(model, optimizer, train_dl)
    if accelerator.num_processes > 1:  # each process its own dropout stream (seed + rank); one process: as ever
        from accelerate.utils import set_seed

        set_seed(cfg.seed, device_specific=True)
    if cfg.compile:
        model = torch.compile(model, dynamic=True)  # dynamic: batches are padded to varying lengths
    steps_per_epoch = math.ceil(len(train_dl) / cfg.grad_accum)
    scheduler = make_scheduler(cfg, optimizer, steps_per_epoch * cfg.epochs)
    named = dict(accelerator.unwrap_model(model).named_parameters())
    tr = Training(su, model, guard, params, named, counts, sampler, train_dl, eval_dls, optimizer, scheduler, started)
    tr.mask_4d = masks.prepared_mask_works(accelerator.unwrap_model(model), accelerator.device, len(su.tokenizer))
    if accelerator.scaler is not None:  # fp16: the loss scaler skips a step with inf/NaN gradients
        tr.watch = stops.LossWatch(tolerate=stops.FP16_PATIENCE)
    if cfg.resume:
        _resume(tr)
    return tr


def _shows(tr: Training) -> bool:
    """Whether this process shows progress (the main one, unless --no-verbose)."""
    return tr.cfg.verbose and tr.accelerator.is_main_process


def _speed_options(cfg: RunConfig, model, accelerator) -> None:
    if cfg.fast_cpu_ops and accelerator.device.type == "cpu" and not cfg.compile:
        switched = fastops.install(model)
        log.info("fast CPU ops: %d dropout modules%s", switched["dropout"],
                 " and the attention" if switched["attention"] else "")
    if cfg.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def _eval_loader(su: Setup, split: str) -> SortedLoader:
    return sorted_loader(su.encoded[split], su.cfg.eval_batch_size, collator(su.tokenizer), su.accelerator.prepare,
                         **loader_options(su.cfg.num_workers, su.accelerator.device))


def _resume(tr: Training) -> None:
    """Continue after the checkpoint's epoch: tensors, optimizer and schedule state, RNG states."""
    tr.st = checkpoint.load(tr.su.out)
    checkpoint.check_params(tr.st, {n: p for n, p in tr.named.items() if p.requires_grad}, tr.su.out)
    with torch.no_grad():
        for n, t in tr.st.params.items():
            tr.named[n].copy_(t)
    tr.optimizer.load_state_dict(tr.st.optimizer)
    tr.scheduler.load_state_dict(tr.st.scheduler)
    if tr.accelerator.scaler is not None and tr.st.scaler:
        tr.accelerator.scaler.load_state_dict(tr.st.scaler)
    _restore_rng(tr)
    if tr.guard.diff is not None:  # diff_prune: the phase of the next epoch, and the differences kept so far
        tr.guard.start_epoch(tr.st.epoch + 1)
        tr.counts = policies.trainable_counts(tr.accelerator.unwrap_model(tr.model), tr.su.selection)
    log.info("resuming after epoch %d of %d (step %d)", tr.st.epoch, tr.cfg.epochs, tr.st.global_step)


def _restore_rng(tr: Training) -> None:
    """Each process continues its own random streams (a checkpoint saved by fewer processes has none for
    the others: they go on from the seed's)."""
    accelerator = tr.accelerator
    mine = checkpoint.rng_for_rank(tr.st.rng, accelerator.process_index, accelerator.device)
    if mine is not None:
        checkpoint.set_rng_state(mine, accelerator.device)
    else:
        log.warning("process %d: the checkpoint holds no random state for it (saved by fewer processes); its "
                    "dropout continues from the seed's, so the resumed run is not bit-identical to an uninterrupted "
                    "one", accelerator.process_index)


def train_epoch(tr: Training, epoch: int, interrupt: checkpoint.Interrupt) -> tuple[torch.Tensor, int, float]:
    """One pass over the training set; returns (this process's [summed loss, examples in it] on the device,
    examples seen, seconds). Ends with a check (``_check``) of the steps not yet checked, so a non-finite
    loss never reaches the epoch's checkpoint."""
    # accelerate's loader hands its own epoch counter to the sampler (one process) or none at all
    # (several, behind BatchSamplerShard): set both, so the order depends on (seed, epoch) alone
    tr.train_dl.set_epoch(epoch)
    tr.sampler.set_epoch(epoch)
    tr.guard.start_epoch(epoch)
    t0 = shown = time.perf_counter()
    totals = torch.zeros(2, dtype=torch.float64, device=tr.accelerator.device)  # read only to show or at the end
    seen = 0
    bar = progress(tr.train_dl, f"epoch {epoch}/{tr.cfg.epochs}", enabled=_shows(tr))
    for batch in bar:
        n = batch["labels"].shape[0]
        _step(tr, batch, epoch, interrupt, totals, n)
        seen += n
        if _shows(tr) and time.perf_counter() - shown >= SHOW_EVERY:
            loss_sum, counted = totals.tolist()  # a wait for the device, once per SHOW_EVERY seconds, to show
            shown = time.perf_counter()
            bar.set_postfix(loss=f"{loss_sum / max(counted, 1):.4f}",
                            samples_s=f"{seen * tr.accelerator.num_processes / (shown - t0):.1f}")
    if tr.unchecked:
        _check(tr, epoch)
    return totals, seen, time.perf_counter() - t0


def _step(tr: Training, batch: dict, epoch: int, interrupt: checkpoint.Interrupt, totals: torch.Tensor, n: int) -> None:
    """Forward, backward and (at the end of an accumulation window) an optimizer step; the loss is added to
    ``totals`` on the device. Every ``--check-every`` optimizer steps, before that step's update, every
    process agrees whether the run stops there (``_check``); in between nothing waits for the device."""
    accelerator, cfg = tr.accelerator, tr.cfg
    with accelerator.accumulate(tr.model):
        loss = tr.model(**(masks.as_4d(batch) if tr.mask_4d else batch)).loss
        value = loss.detach().double()
        finite = torch.isfinite(value)  # a non-finite loss fp16's scaler skips is left out of the epoch's loss
        totals += torch.stack([torch.where(finite, value * n, 0.0), finite.double() * n])
        tr.watch.add(value)
        if accelerator.sync_gradients:
            step = tr.st.global_step + 1
            tr.watch.close(step)
            tr.lrs[step] = tr.scheduler.get_last_lr()[0]
            tr.unchecked += 1
            if not tr.interrupted and interrupt.requested():
                tr.interrupted = interrupt.signum or signal.SIGINT
            # several processes check together, at the same steps; one alone acts on a signal at once
            if tr.unchecked >= cfg.check_every or (tr.interrupted and accelerator.num_processes == 1):
                _check(tr, epoch)
        penalty = tr.guard.penalty()  # diff_prune's L0 term: trained, never part of the loss shown
        accelerator.backward(loss if penalty is None else loss + penalty)
        if accelerator.sync_gradients and cfg.max_grad_norm > 0:
            accelerator.clip_grad_norm_(tr.params, cfg.max_grad_norm)
        tr.optimizer.step()
        if accelerator.sync_gradients:
            tr.guard.after_step()
            if not accelerator.optimizer_step_was_skipped:  # fp16's scaler found inf/NaN gradients: no step
                tr.scheduler.step()
                tr.st.global_step += 1
        tr.optimizer.zero_grad(set_to_none=True)


def _check(tr: Training, epoch: int) -> None:
    """Every process at the same step: stop the run here if any process saw a non-finite loss (under fp16,
    one that persisted past what the loss scaler skips) or a signal since the last check."""
    anything, found = stops.check(tr.accelerator, tr.watch, bool(tr.interrupted))
    lrs, tr.lrs, tr.unchecked = tr.lrs, {}, 0
    if not anything:
        return
    agreed = stops.most_serious(tr.accelerator, _reason(tr, epoch, found, lrs))
    stop(tr, agreed.status, agreed.message, agreed.exit_code)


def _reason(tr: Training, epoch: int, found: stops.Found, lrs: dict[int, float]) -> stops.Stop | None:
    """This process's reason to stop, from what it found: a non-finite loss, or a signal."""
    cfg = tr.cfg
    if found.step is not None:
        lr = lrs.get(found.step, tr.scheduler.get_last_lr()[0])
        return stops.Stop("diverged", f"non-finite loss ({found.loss}) at epoch {epoch}, step {found.step} with "
                          f"learning rate {lr:g}; lower --learning-rate"
                          + (f" (or --weight-decay, now {cfg.weight_decay:g})" if cfg.weight_decay else "")
                          + ("; fp16 overflows easily: try --precision bf16 or fp32" if cfg.precision == "fp16" else ""),
                          exit_code=1, step=found.step)
    if found.interrupted:
        sig = signal.Signals(tr.interrupted)
        if not tr.st.epoch:  # no checkpoint yet: --resume would find nothing to continue
            return stops.Stop("interrupted", f"{sig.name} during epoch {epoch}: stopped before any epoch was complete, "
                              "so nothing is kept and the run starts over. Start it again with:\n  "
                              f"{checkpoint.restart_command(cfg)}", exit_code=128 + sig.value)
        return stops.Stop("interrupted", f"{sig.name} during epoch {epoch}: stopped; epochs 1-{tr.st.epoch} are "
                          f"kept. Resume with:\n  {checkpoint.resume_command(cfg)}", exit_code=128 + sig.value)
    return None


def epoch_totals(tr: Training, totals: torch.Tensor, seen: int, seconds: float) -> tuple[float, int, float]:
    """(mean training loss, examples seen, seconds) of the epoch over every process."""
    accelerator = tr.accelerator
    totals = torch.cat([totals, torch.tensor([seen], dtype=torch.float64, device=totals.device)])
    if accelerator.num_processes > 1:
        totals = accelerator.reduce(totals, "sum")
    loss_sum, counted, seen = totals.tolist()
    # several processes: even batches repeat a few examples to fill the last one; the epoch saw each example once
    seen = min(int(seen), len(tr.su.encoded["train"]))
    return loss_sum / counted if counted else math.nan, seen, seconds


def evaluate(tr: Training, epoch: int, loss: float, seen: int, seconds: float) -> list[dict]:
    """metrics.jsonl rows of this epoch: the train row (loss over every process), then each dev split."""
    accelerator = tr.accelerator
    rows = [{"epoch": epoch, "split": "train", "loss": loss, "lr": tr.scheduler.get_last_lr()[0],
             "seconds": round(seconds, 3)}]
    task = tr.su.task
    for name, dl in tr.eval_dls.items():
        preds, labels, loss = predict(tr.model, dl, accelerator, task, f"evaluating {name}", _shows(tr))
        metrics = compute_metrics(task.metrics, preds, labels)
        if name == "train":
            rows[0].update(metrics)
        else:
            rows.append({"epoch": epoch, "split": name, "loss": loss, **metrics})
    return rows


def end_epoch(tr: Training, epoch: int, rows: list[dict], seen: int, seconds: float) -> None:
    """Track the best epoch, log the epoch, write metrics.jsonl and the checkpoint."""
    st, task = tr.st, tr.su.task
    main = dev_main(task, rows)
    kept = tr.guard.end_epoch(epoch)  # diff_prune's projection, before this epoch's checkpoint holds the state
    if kept is not None:
        tr.counts = policies.trainable_counts(tr.accelerator.unwrap_model(tr.model), tr.su.selection)  # as kept
    if kept is not None and tr.accelerator.is_main_process:
        log.info("diff_prune: after the search (epoch %d), %s differences kept; the best epoch is chosen among "
                 "epochs %d-%d", epoch, f"{kept:,}", epoch + 1, tr.cfg.epochs)
    improved = tr.guard.eligible(epoch) and (st.best is None or main > st.best["main"])
    trainable_now = {n: p.detach().to("cpu", copy=True) for n, p in tr.named.items() if p.requires_grad}
    if improved:
        st.best, st.best_params = {"epoch": epoch, "main": main, "rows": rows[1:]}, trainable_now
    st.epoch, st.history = epoch, st.history + rows
    st.train_time += seconds
    st.train_samples += seen
    st.params, st.optimizer, st.rng = trainable_now, tr.optimizer.state_dict(), _every_rng(tr.accelerator)
    st.scheduler = tr.scheduler.state_dict()
    st.scaler = tr.accelerator.scaler.state_dict() if tr.accelerator.scaler is not None else {}
    if tr.accelerator.is_main_process:
        log.info("epoch %d: train loss %.4f; %s", epoch, rows[0]["loss"], "; ".join(
            _with_baseline(r, task.metrics, tr.su.baselines.get(r["split"], {})) for r in rows[1:]))
        io.write_jsonl(tr.su.out / "metrics.jsonl", st.history)
        log_epoch(tr.trackers, rows, epoch)
        checkpoint.save(tr.su.out, st, best_changed=improved)


def _every_rng(accelerator) -> dict[str, torch.Tensor]:
    """Every process's random state (gathered, for the main process to save), under the checkpoint's keys."""
    mine = checkpoint.rng_state(accelerator.device)
    if accelerator.num_processes == 1:
        return checkpoint.ranked_rng([mine])
    from accelerate.utils import gather_object

    return checkpoint.ranked_rng(gather_object([mine]))


def results(tr: Training, status: str) -> dict:
    """results.json's content for the run as it stands (every process calls it: peak memory is the
    largest of any process's)."""
    cfg, task, st, counts = tr.cfg, tr.su.task, tr.st, tr.counts
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
        "peak_memory_mb": round(max_peak_memory_mb(tr.accelerator), 1),
        "device": str(tr.accelerator.device), "wall_seconds": round(time.time() - tr.started, 3),
        "baseline": tr.su.baselines, "beats_baseline": beats_baseline(tr),
    }


def stop(tr: Training, status: str, message: str, exit_code: int):
    """Record why the run stopped (the last complete epoch's checkpoint stays) and raise RunStopped; every
    process calls it at the same point (``stops.agree``)."""
    res = results(tr, status) | {"message": message}
    if tr.accelerator.is_main_process:
        if status == "interrupted" and tr.st.epoch:
            res["resume_command"] = checkpoint.resume_command(tr.cfg)
        elif status == "interrupted":  # before the first checkpoint: nothing to resume
            res["restart_command"] = checkpoint.restart_command(tr.cfg)
        io.write_json(tr.su.out / "results.json", res)
    tr.accelerator.wait_for_everyone()  # no process ends (and has the launcher end the others) before it is written
    raise RunStopped(message, exit_code)


def finish(tr: Training) -> dict:
    """Restore the best epoch, save the delta, predict the test set, plot, write results.json."""
    su, st, accelerator = tr.su, tr.st, tr.accelerator
    unwrapped = accelerator.unwrap_model(tr.model)
    with torch.no_grad():
        for n, t in st.best_params.items():
            tr.named[n].copy_(t)
    res = results(tr, "complete")
    if su.selection.masked:
        from ..policies.sparse import achieved_sparsity

        res["achieved_sparsity"] = achieved_sparsity(unwrapped)
    if accelerator.is_main_process:
        delta.save(su.out / "delta.safetensors", unwrapped, su.selection, su.new_params, su.cfg, su.task,
                   st.best["epoch"], base_fp=su.base_fingerprint)
    _predict_test(tr)
    if accelerator.is_main_process:
        _write_final(tr, res)
    accelerator.wait_for_everyone()
    return res


def _predict_test(tr: Training) -> None:
    su = tr.su
    for split in su.task.test_splits:
        if split.name in su.encoded:
            preds, _, _ = predict(tr.model, _eval_loader(su, split.name), tr.accelerator, su.task,
                                  f"predicting {split.submission}", _shows(tr))
            if tr.accelerator.is_main_process:
                write_submission(su.out / split.submission, su.task, su.splits[split.name], preds)


def _write_final(tr: Training, res: dict) -> None:
    """Main process: learning curves, evaluator.pkl, results.json, checkpoint removal, the closing log line."""
    su, st, cfg, task = tr.su, tr.st, tr.cfg, tr.su.task
    plot_learning_curves(st.history, task.metrics, su.out / "learning_curves.png",
                         f"{task.glue_name} · {cfg.fine_tune_type} · {cfg.model_name}",
                         baselines=su.baselines)
    if cfg.save_evaluator:
        io.write_pickle(su.out / "evaluator.pkl", {"config": cfg.to_dict(), "history": st.history, "results": res})
    res["wall_seconds"] = round(time.time() - tr.started, 3)
    io.write_json(su.out / "results.json", res)
    if not cfg.keep_checkpoint:
        checkpoint.remove(su.out)
    log.info("best epoch %d: %s %.4f; trainable %s of %s (%.4f%%); run folder %s", st.best["epoch"],
             task.main_metric, st.best["main"], f"{tr.counts['trained']:,}", f"{tr.counts['total']:,}",
             res["trainable_percent"], su.out)
    _warn_if_not_learned(tr)
