"""The run folder: every file written whole (temp file, then rename), never half-written, and every file
read back for parsing read bounded (``read_json_file``: a regular file only, never through a symlink or a
FIFO, at most ``JSON_LIMIT`` bytes, a reason rather than a traceback for anything else).

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
import re
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

from .errors import EnvironmentFailure, UnreadableFile

_UMASK = os.umask(0)
os.umask(_UMASK)

RUN_FILES = ("config.json", "metrics.jsonl", "results.json", "delta.safetensors", "learning_curves.png", "evaluator.pkl")


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
                                  "write to another disk)")
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
    """Write tensors atomically; a full disk is ``EnvironmentFailure`` (safetensors reports it as its own
    ``SafetensorError``, which names the OS error only in its message)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    def save(tmp: Path) -> None:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except SafetensorError as e:
            raise _os_error_in(e) or e from None

    atomic_write(path, save)


def _os_error_in(e: Exception) -> OSError | None:
    """The OS error a library names in its message (``... (os error 28)``), if it is a full disk, a quota or a
    read-only or failing file system; None for anything else (left as the library raised it)."""
    found = re.search(r"\(os error (\d+)\)", str(e))
    code = int(found.group(1)) if found else errno.ENOSPC if "No space left on device" in str(e) else None
    return OSError(code, os.strerror(code)) if code in ENVIRONMENT_ERRNOS else None


JSON_LIMIT = 64 << 20  # config.json, results.json, checkpoint/state.json: a few KB to a few MB in practice
JSONL_LIMIT = 256 << 20  # metrics.jsonl: one ~300-byte row per epoch and split; 10,000 epochs of 3 splits is ~10 MB
_KINDS = ((stat.S_ISLNK, "a symlink"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def file_kind(mode: int) -> str:
    """What a file that is not a regular one is, for a one-line refusal ("a FIFO", "a symlink": ``mode`` from
    ``lstat``), from its ``st_mode``."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def read_regular_file(path: str | os.PathLike, limit: int) -> bytes:
    """The bytes of ``path``, read without following a symlink at its name or blocking on a FIFO, and only if it
    is a regular file of at most ``limit`` bytes. Raises FileNotFoundError if there is nothing there, and
    ``UnreadableFile`` (one line, naming the path and what it is) for anything else."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as e:
        why = "a symlink" if e.errno == errno.ELOOP and os.path.islink(path) else e.strerror
        raise UnreadableFile(path, why) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnreadableFile(path, f"{file_kind(st.st_mode)}, not a regular file")
        data = _read_at_most(fd, limit + 1) if st.st_size <= limit else b""
        if st.st_size > limit or len(data) > limit:  # the size, or what it grew to while being read
            raise UnreadableFile(path, f"larger than {limit:,} bytes")
        return data
    except OSError as e:
        raise UnreadableFile(path, e.strerror) from None
    finally:
        os.close(fd)


def _read_at_most(fd: int, n: int) -> bytes:
    chunks, size = [], 0
    while size < n:
        chunk = os.read(fd, min(1 << 20, n - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def read_json_file(path: str | os.PathLike, limit: int = JSON_LIMIT):
    """The JSON value in ``path`` (read as ``read_regular_file`` reads: no symlink, no FIFO, at most ``limit``
    bytes). Raises FileNotFoundError if there is nothing there, and ``UnreadableFile`` if it is not a regular
    file, too large, not UTF-8, not JSON or nested too deeply to parse (a reason, never a RecursionError)."""
    return _parse(path, read_regular_file(path, limit))


def read_jsonl_file(path: str | os.PathLike, limit: int = JSONL_LIMIT) -> list:
    """The JSON value of each non-blank line of ``path`` (metrics.jsonl), read as ``read_json_file`` reads."""
    lines = read_regular_file(path, limit).splitlines()
    return [_parse(f"{path}:{i}", line) for i, line in enumerate(lines, 1) if line.strip()]


def _parse(where, data: bytes):
    try:
        return json.loads(data.decode("utf-8"))
    except RecursionError:
        raise UnreadableFile(where, "JSON nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an integer too long to convert
        raise UnreadableFile(where, e.__class__.__name__) from None


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
