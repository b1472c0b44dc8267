"""The run folder: every file written whole (temp file, then rename), never half-written.

    runs/rte/
      config.json          every setting, library versions, git commit
      metrics.jsonl        one line per epoch and split
      results.json         best epoch, its metrics, parameter counts, speed, memory
      delta.safetensors    the learned tensors of the best epoch, with what they apply to
      learning_curves.png
      RTE.tsv ...          GLUE submission files (--predict-test)
      evaluator.pkl        evaluation history and config (--save-evaluator)
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

from .errors import EnvironmentFailure, UserError
from .runlock import LOCK_FILE

_UMASK = os.umask(0)
os.umask(_UMASK)

RUN_FILES = ("config.json", "metrics.jsonl", "results.json", "delta.safetensors", "learning_curves.png", "evaluator.pkl")


def check_output_folder(path: str, overwrite: bool) -> None:
    """Refuse a non-empty output folder (or a file in its place) unless ``overwrite``; writes nothing."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"output path {path!r} is a file; accepted: a new or empty folder (or --overwrite on a run folder)")
    if p.is_dir() and any(f.name != LOCK_FILE for f in p.iterdir()) and not overwrite:
        raise UserError(f"output folder {path!r} is not empty; pass --overwrite to write into it")


TMP_PATTERN = ".*.tmp"  # what atomic_write leaves behind if the process dies mid-write


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete this tool's temporary files (``.<name>.<random>.tmp``) in ``folder`` and below; call it
    only while holding the folder's lock (no writer of ours is alive). Returns what was removed."""
    stale = [p for p in folder.rglob(TMP_PATTERN) if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temp file beside ``path``, fsync it, rename it into place and fsync the folder,
    so a crash or power cut at any moment leaves the old file or the new one, complete. On any failure the
    temp file is removed and ``path`` is as it was; a full disk or read-only file system raises
    ``EnvironmentFailure`` with one line."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise environment_failure(path, e) from None
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode open() would
        _fsync(tmp)  # the bytes are on disk before the name points at them ...
        os.replace(tmp, path)
        _fsync(path.parent)  # ... and the rename itself survives a power cut
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise environment_failure(path, e) from None
        raise


def _fsync(path: str | Path) -> None:
    """fsync a file or a folder (a folder: where the file system allows it; some refuse with EINVAL)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EBADF) or not os.path.isdir(path):
            raise
    finally:
        os.close(fd)


def environment_failure(path: Path, e: OSError) -> Exception:
    """``EnvironmentFailure`` (one line, exit 74) for a full disk or read-only file system; else ``e`` itself."""
    if e.errno in ENVIRONMENT_ERRNOS:
        return EnvironmentFailure(f"cannot write {path}: {e.strerror} (it is left as it was; free space or "
                                  "use another --output-path)")
    return e


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r, default=str) + "\n" for r in rows))


def write_pickle(path: Path, obj) -> None:
    def dump(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            pickle.dump(obj, f)

    atomic_write(path, dump)


def write_safetensors(path: Path, tensors: dict, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


SOURCE_COMMIT_ENV = "BITFIT_SOURCE_COMMIT"  # "<commit>[:dirty]" of the code a sweep's driver shipped to its workers


def source_commit() -> tuple[str | None, bool | None]:
    """(git commit, uncommitted changes) of the code this process runs: its checkout's, or, for code a sweep
    shipped to a Ray node (no checkout there), what the driver passed along in ``$BITFIT_SOURCE_COMMIT``."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=5).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    if not commit and os.environ.get(SOURCE_COMMIT_ENV):
        commit, _, flag = os.environ[SOURCE_COMMIT_ENV].partition(":")
        dirty = flag == "dirty"
    return commit, dirty


def environment() -> dict:
    """Library versions and the git commit of this code, for config.json."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str | None:  # a record, never a reason to fail: datasets is needed only for the hub
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    import torch

    root = Path(__file__).resolve().parents[1]
    commit, dirty = source_commit()
    return {
        "python": sys.version.split()[0], "torch": torch.__version__,
        **{name: installed(name) for name in ("transformers", "datasets", "accelerate")},
        "git_commit": commit, "git_dirty": dirty, "command": sys.argv, "cwd": os.getcwd(),
        "code": str(root),  # where this process imported bitfit from (a sweep's trial: the copy Ray shipped)
    }
