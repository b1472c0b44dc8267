"""Everything a run needs, checked before the run folder is touched: data, model, method, device."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import checkpoint, delta, io, policies, preflight, userdata
from ..config import RunConfig
from ..data import Encoded, EpochBatches, collator, encode, load_glue, warn_single_class
from ..devices import hardware, make_accelerator, world_size
from ..metrics import baseline
from ..models import check_max_length, load_model, load_tokenizer, resolve_model
from ..preflight import check_inputs, is_main_process
from ..runlock import RunLock
from ..tasks import GlueTask, define, get_task, task_definition

log = logging.getLogger("bitfit")

PROBE_STEPS = 50  # --layers auto:K: full fine-tuning steps of the probe run
PROBE_LR = 2e-5


@dataclass
class Setup:
    """A validated run, before anything is written: data, model, method, accelerator."""

    cfg: RunConfig
    task: GlueTask
    splits: dict  # split name -> examples
    encoded: dict  # split name -> Encoded
    tokenizer: object
    model: torch.nn.Module
    new_params: list[str]  # what load_model initialised (the task head): saved in the delta
    base_fingerprint: str  # delta.fingerprint of the pretrained weights, written into the delta
    selection: policies.Selection
    accelerator: object
    out: Path
    lock: RunLock | None  # held by the main process for the whole run
    baselines: dict  # dev split -> what always giving one answer scores there (metrics.baseline)


def _first(examples, limit):
    return examples if limit is None else examples[:limit]


def load_splits(cfg: RunConfig) -> tuple[GlueTask, dict]:
    """The run's task and every split it uses, cut to the --max-*-samples limits: GLUE's, or a task of the user's
    given as files (``bitfit.userdata``: the task is defined by them, and made known to ``get_task``)."""
    if cfg.train_file is not None:
        task, splits = userdata.load_files(cfg)
        define(task_definition(task), replace=True)  # this run's files are the authority on its name
    else:
        task = get_task(cfg.task_name)
        splits = load_glue(task, cfg.data_dir, with_test=cfg.predict_test)
    splits["train"] = _first(splits["train"], cfg.max_train_samples)
    for s in task.dev_splits:
        splits[s.name] = _first(splits[s.name], cfg.max_eval_samples)
    for s in task.test_splits:
        if s.name in splits:
            splits[s.name] = _first(splits[s.name], cfg.max_predict_samples)
    for name, examples in splits.items():  # what the run uses, after the cuts
        warn_single_class(task, name, examples)
    return task, splits


def prepare(cfg: RunConfig) -> Setup:
    """Take the run folder's lock, then everything that can fail on bad input, before anything is written.

    A failure here releases the lock and removes the folder if this call created it (empty but for the lock).
    """
    check_inputs(cfg)  # before the lock makes the folder (the command line checked them already, before torch)
    lock = RunLock(cfg.output_path).acquire() if is_main_process() else None
    try:
        return _prepare(cfg, lock)
    except BaseException:
        if lock is not None:
            lock.release(remove_if_created=True)
        raise


def _prepare(cfg: RunConfig, lock: RunLock | None) -> Setup:
    out = Path(cfg.output_path)
    if cfg.resume:
        checkpoint.check_resumable(cfg, out)
    else:
        preflight.check_output_folder(cfg.output_path, cfg.overwrite)
    # from the hub, under a launch of several processes: the main process downloads, then the others read its cache
    hub = cfg.data_dir is None and cfg.train_file is None and world_size() > 1
    accelerator = make_accelerator(cfg) if hub else None
    with accelerator.main_process_first() if hub else nullcontext():
        task, splits = load_splits(cfg)
    if cfg.resume:
        checkpoint.check_same_task(task, out)
    from accelerate.utils import set_seed

    set_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model_name, cfg.trust_remote_code)
    model, new_params = load_model(cfg.model_name, task, cfg.trust_remote_code, cfg.attention_dropout)
    base_fp = delta.fingerprint(model, new_params)  # of the pretrained weights, before anything trains
    accelerator = accelerator or make_accelerator(cfg)
    check_max_length(cfg.max_seq_length, model, tokenizer, cfg.model_name)
    encoded = {name: encode(ex, tokenizer, cfg.max_seq_length, task.is_regression) for name, ex in splits.items()}
    sel = policies.select(model, cfg, probe=make_probe(encoded["train"], collator(tokenizer), cfg, accelerator.device),
                          on_main=on_main(accelerator))
    baselines = {s.name: baseline(task, [e.label for e in splits[s.name]]) for s in task.dev_splits}
    return Setup(cfg, task, splits, encoded, tokenizer, model, new_params, base_fp, sel, accelerator, out, lock,
                 baselines)


def on_main(accelerator):
    """``fn -> fn()`` computed by the main process only and shared with the others (an error too: every
    process then raises it, none waits for a result that never comes)."""

    def call(fn):
        if accelerator.num_processes == 1:
            return fn()
        from accelerate.utils import broadcast_object_list

        box = [None]
        if accelerator.is_main_process:
            try:
                box[0] = ("ok", fn())
            except Exception as e:  # noqa: BLE001 - handed to every process, raised there
                box[0] = ("error", e)
        kind, value = broadcast_object_list(box)[0]
        if kind == "error":
            raise value
        return value

    return call


def make_probe(train: Encoded, collate, cfg: RunConfig, device: torch.device | None = None):
    """For ``--layers auto:K``: briefly full-fine-tune a copy of the model (on ``device``: the run's) so
    layers can be ranked."""

    def probe(model: torch.nn.Module) -> None:
        for p in model.parameters():
            p.requires_grad_(True)
        if device is not None:
            model.to(device)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=PROBE_LR)
        loader = torch.utils.data.DataLoader(train, batch_sampler=EpochBatches(len(train), cfg.batch_size, cfg.seed + 1),
                                             collate_fn=collate)
        at = next(model.parameters()).device
        for step, batch in enumerate(loader):
            if step >= PROBE_STEPS:
                break
            loss = model(**{k: v.to(at) for k, v in batch.items()}).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    return probe


def open_run_folder(su: Setup) -> None:
    """Create the folder (main process only, after every process has checked it) and write config.json."""
    su.accelerator.wait_for_everyone()
    if not su.accelerator.is_main_process:
        return
    try:
        su.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise io.environment_failure(su.out, e) from None  # a full disk or read-only file system: exit 74
    for stale in io.remove_stale_temp_files(su.out):  # a crash mid-write; we hold the lock, so no writer is alive
        log.info("removed a temporary file a stopped run left behind: %s", stale)
    if not su.cfg.resume:
        for stale in list(io.RUN_FILES) + [s.submission for s in su.task.test_splits]:
            (su.out / stale).unlink(missing_ok=True)
        checkpoint.remove(su.out)
    io.write_json(su.out / "config.json", {
        "config": su.cfg.to_dict(), "model_path": resolve_model(su.cfg.model_name), "task": su.task.glue_name,
        "task_definition": task_definition(su.task),
        "policy_notes": su.selection.notes, "device": str(su.accelerator.device),
        "num_processes": su.accelerator.num_processes, "precision": su.cfg.precision,
        **hardware(su.accelerator.device, su.accelerator.num_processes), "environment": io.environment()})
