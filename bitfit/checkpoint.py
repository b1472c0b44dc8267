"""Per-epoch checkpoints for --resume: small for BitFit, never a pickle, never half-written.

    <run>/checkpoint/state.json               epoch, step, history, best, optimizer groups, file hashes
    <run>/checkpoint/state-e{N}.safetensors   trainable tensors, optimizer state, every process's RNG states
                                              after epoch N
    <run>/checkpoint/best-e{M}.safetensors    trainable tensors of the best epoch M so far

Tensor files carry the epoch in their name and ``state.json`` is replaced last, so a crash at any
moment leaves either the previous complete checkpoint or the new one. ``load`` checks each file's
SHA-256 against ``state.json`` and refuses a truncated, corrupted or hand-edited checkpoint with one line;
``state.json`` is read bounded (``io.read_json_file``) and may name only files in the checkpoint folder.
The folder is never written or emptied through a symlink, and only the files named above are deleted.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from . import io
from .config import RESUMABLE_CHANGES
from .devices import gpu_index
from .errors import UnreadableFile, UserError
from .runstate import COMPLETE, INTERRUPTED, NEW, STOPPED, read_state

FORMAT = "bitfit-checkpoint/3"  # /3: RNG states per process, fp16's loss-scaler state; /2: the scheduler state
READABLE = ("bitfit-checkpoint/2", FORMAT)  # /2 (one process's RNG, keys rng::torch, rng::cuda0...) still resumes
FOLDER = "checkpoint"
OWN_FILE = re.compile(r"state\.json|(state|best)-e\d+\.safetensors|\..+\.tmp")  # what save() writes: all it deletes


@dataclass
class TrainState:
    """Everything the loop needs to continue after ``epoch``."""

    epoch: int = 0
    global_step: int = 0
    history: list[dict] = field(default_factory=list)
    best: dict | None = None  # {"epoch", "main", "rows"} of the best epoch so far
    train_time: float = 0.0
    train_samples: int = 0
    params: dict[str, torch.Tensor] = field(default_factory=dict)  # trainable tensors by name
    best_params: dict[str, torch.Tensor] = field(default_factory=dict)
    optimizer: dict = field(default_factory=dict)  # torch optimizer state_dict
    rng: dict[str, torch.Tensor] = field(default_factory=dict)  # every process's: "r{rank}::torch", "r{rank}::cuda"
    scheduler: dict = field(default_factory=dict)  # the learning-rate scheduler's state_dict (plain numbers)
    scaler: dict = field(default_factory=dict)  # fp16's GradScaler state_dict (plain numbers); empty without one


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def rng_state(device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """This process's random state: the CPU generator's, and on a GPU that GPU's only (not every visible
    one's: a resume may see fewer GPUs, or run on another)."""
    state = {"torch": torch.get_rng_state()}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def ranked_rng(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Every process's ``rng_state`` (in rank order) under the checkpoint's keys: ``r{rank}::torch``..."""
    return {f"r{rank}::{k}": v for rank, state in enumerate(states) for k, v in state.items()}


def rng_for_rank(saved: dict[str, torch.Tensor], rank: int, device: torch.device | None = None) -> dict | None:
    """Process ``rank``'s state out of a checkpoint's RNG entries (None if the checkpoint has none for it:
    it was saved by fewer processes). A /2 checkpoint saved one process's state, its GPUs as ``cuda{i}``:
    rank 0 takes it, with the entry of the GPU it runs on if there is one."""
    if "torch" in saved:  # /2
        if rank != 0:
            return None
        index = gpu_index(device)
        return {"torch": saved["torch"]} | ({"cuda": saved[f"cuda{index}"]} if f"cuda{index}" in saved else {})
    prefix = f"r{rank}::"
    mine = {k[len(prefix):]: v for k, v in saved.items() if k.startswith(prefix)}
    return mine or None


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device | None = None) -> None:
    """Restore ``rng_state``'s result; a GPU state goes to ``device`` (this run's GPU), and is skipped
    on the CPU."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _flatten_optimizer(opt_state: dict) -> tuple[dict[str, torch.Tensor], list[dict]]:
    tensors = {}
    for idx, entry in opt_state["state"].items():
        for key, value in entry.items():
            value = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"opt::{idx}::{key}"] = value.detach().to("cpu").contiguous()
    return tensors, opt_state["param_groups"]


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list[dict]) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        _, idx, key = name.split("::", 2)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": groups}


def save(run_dir: Path, st: TrainState, best_changed: bool) -> None:
    folder = _own_folder(run_dir)
    previous = _read_json(folder / "state.json") if (folder / "state.json").exists() else None
    opt_tensors, groups = _flatten_optimizer(st.optimizer)
    tensors = {f"param::{n}": t for n, t in st.params.items()} | opt_tensors | {f"rng::{k}": v for k, v in st.rng.items()}
    state_file = f"state-e{st.epoch}.safetensors"
    io.write_safetensors(folder / state_file, {k: v.contiguous() for k, v in tensors.items()}, {"format": FORMAT})
    files = {"state": state_file}
    if best_changed or previous is None:
        best_file = f"best-e{st.epoch}.safetensors"
        io.write_safetensors(folder / best_file, {n: t.contiguous() for n, t in st.best_params.items()}, {"format": FORMAT})
        files["best"] = best_file
    else:
        files["best"] = previous["files"]["best"]
    meta = {"format": FORMAT, "epoch": st.epoch, "global_step": st.global_step, "history": st.history, "best": st.best,
            "train_time": st.train_time, "train_samples": st.train_samples, "optimizer_param_groups": groups,
            "scheduler": st.scheduler, "scaler": st.scaler,
            "files": files, "sha256": {k: sha256(folder / f) for k, f in files.items()}}
    io.write_json(folder / "state.json", meta)
    keep = set(files.values()) | {"state.json"}
    for old in folder.glob("*.safetensors"):
        if old.name not in keep and OWN_FILE.fullmatch(old.name):
            old.unlink(missing_ok=True)


def _own_folder(run_dir: Path) -> Path:
    """``<run>/checkpoint``, made if missing; refuses a symlink or a file there (save deletes old files in it)."""
    folder = run_dir / FOLDER
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        what = "a symlink" if folder.is_symlink() else "a file"
        raise UserError(f"checkpoint folder {str(folder)!r} is {what}; accepted: a folder of the run's own (remove "
                        "it, then start the run again)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise io.environment_failure(folder, e) from None
    return folder


def _read_json(path: Path) -> dict:
    try:
        meta = io.read_json_file(path)
    except (OSError, UnreadableFile) as e:
        why = e.why if isinstance(e, UnreadableFile) else e.__class__.__name__
        raise UserError(f"checkpoint {path} is unreadable ({why}); it cannot be resumed") from None
    if not isinstance(meta, dict):
        raise UserError(f"checkpoint {path} is unreadable (not a JSON object); it cannot be resumed")
    return meta


def exists(run_dir: Path) -> bool:
    return (run_dir / FOLDER / "state.json").is_file()


def load(run_dir: Path) -> TrainState:
    folder = run_dir / FOLDER
    if not exists(run_dir):
        raise UserError(f"nothing to resume: {folder / 'state.json'} does not exist (a run saves it after each epoch)")
    meta = _read_json(folder / "state.json")
    if meta.get("format") not in READABLE:
        raise UserError(f"checkpoint {folder} has format {meta.get('format')!r}; accepted: {', '.join(READABLE)} "
                        "(a checkpoint of an older version cannot be resumed: start the run again with --overwrite)")
    try:
        return _from_meta(folder, meta)
    except UserError:
        raise
    except (KeyError, TypeError, AttributeError, ValueError) as e:  # valid JSON of another shape
        raise UserError(f"checkpoint {folder / 'state.json'} is malformed ({e.__class__.__name__}: {e}); it cannot "
                        "be resumed") from None


def _from_meta(folder: Path, meta: dict) -> TrainState:
    loaded = {}
    for key, name in meta["files"].items():
        if not isinstance(name, str) or not OWN_FILE.fullmatch(name) or not name.endswith(".safetensors"):
            raise UserError(f"checkpoint {folder / 'state.json'} names the file {name!r}; accepted: a state-eN or "
                            "best-eN .safetensors file in the checkpoint folder; it cannot be resumed")
        path = folder / name
        if not path.is_file():
            raise UserError(f"checkpoint file {path} is missing; the checkpoint cannot be resumed")
        if sha256(path) != meta["sha256"][key]:
            raise UserError(f"checkpoint file {path} does not match its recorded SHA-256 (truncated or modified); "
                            "refusing to resume from it")
        try:
            loaded[key] = load_file(path)
        except (SafetensorError, OSError) as e:
            raise UserError(f"checkpoint file {path} is unreadable ({e}); refusing to resume from it") from None
    state = loaded["state"]
    return TrainState(
        epoch=meta["epoch"], global_step=meta["global_step"], history=meta["history"], best=meta["best"],
        train_time=meta["train_time"], train_samples=meta["train_samples"],
        params={k[len("param::"):]: v for k, v in state.items() if k.startswith("param::")},
        best_params=loaded["best"],
        optimizer=_unflatten_optimizer({k: v for k, v in state.items() if k.startswith("opt::")},
                                       meta["optimizer_param_groups"]),
        rng={k[len("rng::"):]: v for k, v in state.items() if k.startswith("rng::")},
        scheduler=meta["scheduler"], scaler=meta.get("scaler") or {},
    )


def check_params(st: TrainState, trainable: dict[str, torch.Tensor], run_dir: Path) -> None:
    """The checkpoint's tensors are exactly this run's trainable tensors: names, shapes, finite values."""
    for label, tensors in (("trainable", st.params), ("best", st.best_params)):
        if label == "best" and st.best is None and not tensors:  # no epoch may be best yet (diff_prune's search)
            continue
        if set(tensors) != set(trainable):
            odd = sorted(set(tensors) ^ set(trainable))[:3]
            raise UserError(f"checkpoint in {str(run_dir)!r} holds other {label} tensors than this run trains "
                            f"({', '.join(odd)}, ...); it cannot be resumed")
        for name, t in tensors.items():
            if tuple(t.shape) != tuple(trainable[name].shape) or not bool(torch.isfinite(t).all()):
                raise UserError(f"checkpoint tensor {name!r} in {str(run_dir)!r} has the wrong shape or non-finite "
                                "values; it cannot be resumed")


def remove(run_dir: Path) -> None:
    """Delete the checkpoint: the files ``save`` writes, then the folder if that empties it. A symlink in the
    folder's place is removed itself, never followed (what it points at is not the run's)."""
    folder = run_dir / FOLDER
    if folder.is_symlink():
        folder.unlink()
        return
    if not folder.is_dir():
        return
    for f in folder.iterdir():
        if OWN_FILE.fullmatch(f.name) and (f.is_symlink() or not f.is_dir()):
            f.unlink(missing_ok=True)
    if not any(folder.iterdir()):
        folder.rmdir()


_REQUESTED: list[int] = []  # a stop asked for from another thread (a sweep trial's watcher): its signal number


def request_interrupt(signum: int = signal.SIGINT) -> None:
    """Stop the run of this process as ``signum`` would, from any thread (a Ray worker runs the loop in one
    that cannot receive signals): the loop ends at its next step through the interrupt path."""
    _REQUESTED.append(int(signum))


def clear_interrupt_request() -> None:
    _REQUESTED.clear()


class Interrupt:
    """SIGINT/SIGTERM (or ``request_interrupt``) set a flag that the loop checks after every step; a second
    signal acts at once."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict[int, object] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        return False

    def _handle(self, signum, frame):
        self.signum = signum
        for sig, handler in self._old.items():  # a second Ctrl-C is not caught
            signal.signal(sig, handler)

    def requested(self) -> bool:
        """Whether a stop was asked for since the block began (or by ``request_interrupt``)."""
        if self.signum is None and _REQUESTED:
            self.signum = _REQUESTED[0]
        return self.signum is not None


# settings added after runs were written: what a config.json without them ran with
BEFORE_FIELD = {"fast_cpu_ops": False, "tf32": False}


def check_resumable(cfg, out: Path) -> None:
    """--resume: the folder holds a checkpoint of a run with the same settings."""
    state = read_state(out)
    if (out / FOLDER).is_symlink():
        raise UserError(f"checkpoint folder {str(out / FOLDER)!r} is a symlink; accepted: a folder of the run's own "
                        "(the run writes and deletes files in it: move the files there and remove the link)")
    if state.status not in (INTERRUPTED, STOPPED):
        why = ("the run is already complete" if state.status == COMPLETE
               else "no config.json (no run there: start it without --resume)" if state.status == NEW
               else state.reason)
        raise UserError(f"nothing to resume in {str(out)!r}: {why}")
    cwd = (state.saved or {}).get("environment", {}).get("cwd") or os.getcwd()  # where the run was started
    saved = _normalised(BEFORE_FIELD | state.config, cwd)
    mine = _normalised(cfg.to_dict(), os.getcwd())
    changed = sorted(k for k in cfg.compared_on_resume() if k in mine and saved.get(k) != mine[k])
    if changed:
        k = changed[0]
        raise UserError(f"--resume with {k}={mine[k]!r} but the run was started with {k}={saved.get(k)!r}; "
                        f"resume with the original settings (may differ: {', '.join(sorted(RESUMABLE_CHANGES))})")


def _normalised(settings: dict, cwd: str) -> dict:
    """Paths as real absolute paths (relative ones taken from ``cwd``), so ``runs/x``, ``./runs/x/`` and
    ``/abs/runs/x`` compare equal; the output path is left out (it is the folder being resumed)."""
    out = {k: v for k, v in settings.items() if k != "output_path"}
    for key in ("data_dir", "model_name", "train_file", "validation_file", "test_file"):
        value = out.get(key)
        if isinstance(value, str) and (key != "model_name" or os.path.exists(os.path.join(cwd, value))):
            out[key] = os.path.realpath(os.path.join(cwd, os.path.expanduser(value)))
    return out


def launcher(env=None) -> list[str]:
    """The launcher this process runs under, as a command to put before the script: ``accelerate launch`` (its
    process count, machines, mixed precision and CPU flag, as it passed them on) or ``torchrun``; [] for a
    process started on its own. Several machines: the command is the one to run on each, with its own
    ``--machine_rank`` / ``--node_rank``."""
    env = os.environ if env is None else env
    if "LOCAL_RANK" not in env or "WORLD_SIZE" not in env:
        return []
    world = int(env["WORLD_SIZE"])
    per_machine = int(env.get("LOCAL_WORLD_SIZE", world))
    machines = int(env.get("GROUP_WORLD_SIZE", 1))
    if any(k.startswith("ACCELERATE_") for k in env):
        head = ["accelerate", "launch", "--num_processes", str(world)]
        if env.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
            head.append("--cpu")
        elif world > 1:
            head.append("--multi_gpu")
        head += ["--num_machines", str(machines)]
        if machines > 1:
            head += ["--machine_rank", "THIS_MACHINE_RANK", "--main_process_ip", env.get("MASTER_ADDR", "MAIN_HOST"),
                     "--main_process_port", env.get("MASTER_PORT", "29500")]
        head += ["--mixed_precision", env.get("ACCELERATE_MIXED_PRECISION", "no")]
        if "ACCELERATE_DYNAMO_BACKEND" in env:
            head += ["--dynamo_backend", env["ACCELERATE_DYNAMO_BACKEND"].lower()]
        return head
    head = ["torchrun", "--nproc_per_node", str(per_machine)]
    if machines > 1:
        head += ["--nnodes", str(machines), "--node_rank", "THIS_NODE_RANK", "--master_addr",
                 env.get("MASTER_ADDR", "MAIN_HOST"), "--master_port", env.get("MASTER_PORT", "29500")]
    return head


def resume_command(cfg) -> str:
    """The command that continues this run, as it was started: ``python run_glue.py ...`` or ``python -m bitfit
    train ...`` with ``--resume`` (and without ``--overwrite``), after the same launcher when it ran under
    ``accelerate launch`` or ``torchrun`` (``launcher``); a sweep's trial is continued by its sweep; a run
    started from Python by ``run(RunConfig(..., resume=True))``."""
    return rerun_command(cfg, resume=True)


def restart_command(cfg) -> str:
    """The command that starts this run again from its first epoch (a run stopped before any checkpoint): as
    it was started, with ``--overwrite`` instead of ``--resume``."""
    return rerun_command(cfg, resume=False)


def rerun_command(cfg, resume: bool) -> str:
    """``resume_command`` (``resume``) or ``restart_command``."""
    flag, other = ("--resume", "--overwrite") if resume else ("--overwrite", "--resume")
    argv = sys.argv
    ray = sys.modules.get("ray")
    launch = launcher()
    if argv and argv[0].endswith("run_glue.py"):
        head, args = (launch or ["python"]) + [argv[0]], argv[1:]
    elif argv and Path(argv[0]).parent.name == "bitfit" and Path(argv[0]).name == "__main__.py" and argv[1:2] == ["train"]:
        head, args = (launch + ["-m"] if launch else ["python", "-m"]) + ["bitfit", "train"], argv[2:]
    elif ray is not None and ray.is_initialized():  # a sweep's trial, in a Ray worker
        return f"the same `python -m bitfit sweep` command again (it {'resumes' if resume else 'restarts'} {cfg.output_path})"
    else:
        return (f"run(RunConfig(**{{...as before}}, {'resume' if resume else 'overwrite'}=True)) with "
                f"output_path={cfg.output_path!r}")
    args = [a for a in args if a != other]
    return shlex.join([*head, *args] + ([] if flag in args else [flag]))


def check_same_task(task, out: Path) -> None:
    """--resume of a task given as files: the files still define the task the run started with (its classes, text
    columns and metrics, config.json's ``task_definition``); a head trained for other classes cannot go on."""
    from .tasks import task_definition

    saved = (read_state(out).saved or {}).get("task_definition")
    mine = task_definition(task)
    if saved != mine:
        raise UserError(f"--resume: the data files now define task {task.name!r} as {mine}, but the run in "
                        f"{str(out)!r} started with {saved}; resume with the files it was trained on, or start again "
                        "with --overwrite")
