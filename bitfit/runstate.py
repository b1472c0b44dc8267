"""What state a run folder is in: the one reader that report, submit, --resume and the scripts use.

    from bitfit.runstate import read_state
    st = read_state("runs/rte")
    st.status        # "new" | "complete" | "interrupted" | "diverged" | "stopped" | "broken"
    st.reason        # one line for people: why, and what to do
    st.config        # config.json's "config" (the run's settings), or None
    st.results       # results.json, or None

    python -m bitfit state runs/rte runs/cola      # one "<status>\t<folder>\t<reason>" line each

- ``new``: the folder does not exist or is empty; start the run.
- ``complete``: results.json says complete (or, written before it had a status, names a best
  epoch) and has a finite dev main metric; nothing to do.
- ``interrupted``: a checkpoint of a complete epoch is there and the run did not finish (stopped by
  a signal, killed, or still running); continue it with ``--resume``.
- ``diverged``: the loss became non-finite; results.json says where. Retrying needs other settings.
- ``stopped``: stopped early on purpose (a sweep's ``--early-stop``), after the epoch results.json
  names; never counted as complete; ``--resume`` trains the remaining epochs.
- ``broken``: anything else (unreadable files, stopped before its first epoch's checkpoint, not a
  run folder); start it again with ``--overwrite``. Also a symlink loop or a link to nothing, a folder
  that cannot be listed, and a folder of run folders (``runs/``: the reason names the runs in it).

While a run writes a folder it holds the folder's lock (``bitfit.runlock``): ``running`` is then its
PID, and the reason starts ``running (pid N)`` and says only what is checkpointed so far (never
``--resume`` or ``--overwrite``: wait for it, or stop it), whatever the status of the files.

Reads only JSON files, each bounded (``io.read_json_file``: a regular file of at most ``io.JSON_LIMIT``
bytes, never through a symlink or a FIFO, a reason for anything unreadable); never raises for what it
finds on disk; never imports torch.
"""

from __future__ import annotations

import dataclasses
import errno
import math
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import UnreadableFile
from .io import read_json_file
from .runlock import LOCK_FILE, holder

NEW, COMPLETE, INTERRUPTED, DIVERGED, BROKEN, STOPPED = "new", "complete", "interrupted", "diverged", "broken", "stopped"
STATUSES = (NEW, COMPLETE, INTERRUPTED, DIVERGED, BROKEN, STOPPED)
CHECKPOINT_STATE = Path("checkpoint") / "state.json"


@dataclass(frozen=True)
class RunState:
    path: Path
    status: str
    reason: str
    config: dict | None = None  # the run's settings (config.json's "config")
    saved: dict | None = None  # config.json as written (settings, model path, device, environment)
    results: dict | None = None
    checkpoint_epoch: int | None = None  # last epoch with a complete checkpoint
    running: str | None = None  # PID of the run writing the folder now (it holds the folder's lock), or None

    @property
    def resumable(self) -> bool:
        return self.status in (INTERRUPTED, STOPPED)


def _json(path: Path) -> dict | None | str:
    """The file's JSON object; None if absent; a short reason if it is not a JSON object."""
    try:
        value = read_json_file(path)
    except FileNotFoundError:
        return None
    except UnreadableFile as e:
        return f"unreadable ({e.why})"
    return value if isinstance(value, dict) else "not a JSON object"


def _dangling(path: Path) -> str:
    """Why a symlink leads nowhere: a loop, or a target that does not exist."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symlink loop"
    return f"a symlink to {os.readlink(path)!r}, which does not exist"


def _run_folders_in(path: Path) -> list[str]:
    """Names of the subfolders of ``path`` that hold a run's files (config.json or results.json), sorted."""
    return sorted(p.name for p in path.iterdir()
                  if p.is_dir() and any(os.path.lexists(p / name) for name in ("config.json", "results.json")))


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _complete(results: dict) -> bool:
    status = results.get("status")
    return status == "complete" or (status is None and results.get("best_epoch") is not None)


def _main_metric_ok(results: dict) -> bool:
    return _finite(results.get("best_main_metric"))


def read_state(folder: str | os.PathLike) -> RunState:
    """The state of one run folder (see the module docstring); ``running`` says whether a run holds it now.
    Whatever is on disk, this returns a state (an unreadable folder is ``broken``, with the reason)."""
    path = Path(folder)
    try:
        state = _read_files(path)
    except OSError as e:  # a folder that cannot be listed, a file system that fails
        state = RunState(path, BROKEN, f"unreadable ({e.strerror or e.__class__.__name__}); accepted: a run folder "
                                       "this user can read")
    pid = holder(path) if path.is_dir() else None
    if pid is None:
        return state
    return dataclasses.replace(state, running=pid, reason=_running(pid, state))


def _running(pid: str, state: RunState) -> str:
    """A running run's reason: what is checkpointed so far, and no advice to --resume or --overwrite."""
    epochs = (state.config or {}).get("epochs")
    of = f" of {epochs}" if epochs else ""
    done = f"epoch {state.checkpoint_epoch}{of} checkpointed" if state.checkpoint_epoch else "no epoch checkpointed yet"
    return f"running (pid {pid}): {done}; wait for it to end, or stop it, before acting on this folder"


def _read_files(path: Path) -> RunState:
    if path.is_symlink() and not path.exists():
        return RunState(path, BROKEN, f"{_dangling(path)}; accepted: a run folder (remove or fix the link)")
    if not path.exists() or (path.is_dir() and all(p.name == LOCK_FILE for p in path.iterdir())):
        return RunState(path, NEW, "no run here yet")
    if not path.is_dir():
        return RunState(path, BROKEN, "a file, not a run folder")
    saved = _json(path / "config.json")
    if saved is None and (runs := _run_folders_in(path)):
        shown = ", ".join(runs[:3]) + (", ..." if len(runs) > 3 else "")
        return RunState(path, BROKEN, f"not a run folder: it holds {len(runs)} run folder(s) ({shown}); name them, "
                                      f"e.g. {path / runs[0]}")
    results = _json(path / "results.json")
    ckpt = _json(path / CHECKPOINT_STATE)
    epoch = ckpt.get("epoch") if isinstance(ckpt, dict) and isinstance(ckpt.get("epoch"), int) else None
    config = saved.get("config") if isinstance(saved, dict) and isinstance(saved.get("config"), dict) else None
    kw = dict(config=config, saved=saved if isinstance(saved, dict) else None,
              results=results if isinstance(results, dict) else None, checkpoint_epoch=epoch)
    if config is None:
        why = "missing" if saved is None else saved if isinstance(saved, str) else "not a run's"
        return RunState(path, BROKEN, f"no usable config.json ({why})", **kw)
    if isinstance(results, str):
        return RunState(path, BROKEN, f"results.json is {results}", **kw)
    of = f" of {config.get('epochs')}" if config.get("epochs") else ""
    if results is not None:
        status = results.get("status")
        if _complete(results):
            if not _main_metric_ok(results):
                return RunState(path, BROKEN, "results.json has no finite dev main metric", **kw)
            return RunState(path, COMPLETE, f"complete: best epoch {results.get('best_epoch')}", **kw)
        if status == "diverged":
            return RunState(path, DIVERGED, f"diverged: {results.get('message', 'non-finite loss')}", **kw)
        if status == "stopped" and epoch:
            return RunState(path, STOPPED, f"{results.get('message', 'stopped early')} (not complete: "
                                           "--resume trains the remaining epochs)", **kw)
        if status not in ("interrupted", None):
            return RunState(path, BROKEN, f"results.json has status {status!r}", **kw)
    if isinstance(ckpt, str):
        return RunState(path, BROKEN, f"{CHECKPOINT_STATE} is {ckpt}; it cannot be resumed (start it again with "
                                      "--overwrite)", **kw)
    if epoch:
        return RunState(path, INTERRUPTED, f"interrupted after epoch {epoch}{of} (or still running): "
                                           "continue it with --resume", **kw)
    said = f" (results.json says {results.get('status')})" if isinstance(results, dict) else ""
    return RunState(path, BROKEN, f"no checkpoint to resume from{said}: stopped or killed before one was written, or "
                                  "still in its first epoch; start it again with --overwrite", **kw)
