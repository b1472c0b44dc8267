"""One writer per run folder: an OS file lock held for the whole run.

    with RunLock("runs/rte") as lock:      # refuses at once, naming the holder's PID, if another run holds it
        ...                                # write the run folder
    holder("runs/rte")                     # the PID of the run writing there now, or None

The lock is ``fcntl.flock`` on ``<run>/.bitfit.lock``: the OS releases it when the process ends, however
it ends (a crash or ``kill -9`` leaves no stale lock). The file itself stays (an empty lock file
marks nothing; readers ignore it). A second ``run_glue.py`` or ``--resume`` on a locked folder stops
before it writes anything.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from pathlib import Path

from .errors import UserError

LOCK_FILE = ".bitfit.lock"


def _pid_in(path: Path) -> str:
    try:
        return path.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


class RunLock:
    """An exclusive, non-blocking lock on a run folder; creates the folder if it does not exist."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.created = False  # whether acquire() made the folder (so a failed start can remove it again)
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        if self.folder.exists() and not self.folder.is_dir():
            raise UserError(f"output path {str(self.folder)!r} is a file; accepted: a new or empty folder")
        self.created = not self.folder.exists()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"cannot create the run folder {str(self.folder)!r}: {e.strerror}; accepted: a folder "
                            "you can write in") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise UserError(f"run folder {str(self.folder)!r} is in use by another run (pid {_pid_in(self.path)}); "
                            "wait for it to end or stop it (one writer per folder)") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self, remove_if_created: bool = False) -> None:
        """Unlock; with ``remove_if_created``, also remove the folder this lock made if only the lock is in it."""
        if self._fd is None:
            return
        os.close(self._fd)  # closing the descriptor releases the flock
        self._fd = None
        if remove_if_created and self.created and [p.name for p in self.folder.iterdir()] == [LOCK_FILE]:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False


def holder(folder: str | os.PathLike) -> str | None:
    """The PID (as written in the lock file) of the run holding ``folder``'s lock, or None."""
    path = Path(folder) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _pid_in(path)
    finally:
        os.close(fd)  # also drops the shared lock, if taken
    return None
