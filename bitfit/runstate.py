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
  run folder); start it again with ``--overwrite``.

While a run writes a folder it holds the folder's lock (``bitfit.runlock``): ``running`` is then its
PID, whatever the files say so far.

Reads only small JSON files; never imports torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

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
    """The file's JSON object; None if absent; a one-word reason if it is not a JSON object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return f"unreadable ({e.__class__.__name__})"
    return value if isinstance(value, dict) else "not a JSON object"


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _complete(results: dict) -> bool:
    status = results.get("status")
    return status == "complete" or (status is None and results.get("best_epoch") is not None)


def _main_metric_ok(results: dict) -> bool:
    return _finite(results.get("best_main_metric"))


def read_state(folder: str | os.PathLike) -> RunState:
    """The state of one run folder (see the module docstring); ``running`` says whether a run holds it now."""
    state = _read_files(Path(folder))
    pid = holder(state.path) if state.path.is_dir() else None
    if pid is None:
        return state
    return dataclasses.replace(state, running=pid, reason=f"running now (pid {pid}); on disk: {state.reason}")


def _read_files(path: Path) -> RunState:
    if not path.exists() or (path.is_dir() and all(p.name == LOCK_FILE for p in path.iterdir())):
        return RunState(path, NEW, "no run here yet")
    if not path.is_dir():
        return RunState(path, BROKEN, "a file, not a run folder")
    saved = _json(path / "config.json")
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
