"""One writer per run folder: an OS file lock held for the whole run.

    with RunLock("runs/rte") as lock:      # refuses at once, naming the holder's PID, if another run holds it
        ...                                # write the run folder
    holder("runs/rte")                     # the PID of the run writing there now, or None

The lock is ``fcntl.flock`` on ``<run>/.bitfit.lock``: the OS releases it when the process ends, however
it ends (a crash or ``kill -9`` leaves no stale lock, only the file, which marks nothing and which
readers ignore). A run that ends normally removes the file while still holding the lock; a run that
locked a file that was removed meanwhile takes the new one instead. A second ``run_glue.py`` or ``--resume`` on a locked folder stops
before it writes anything.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from .errors import RunBusy, UserError

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
        except OSError as e:
            raise UserError(f"cannot create the run folder {str(self.folder)!r}: {e.strerror}; accepted: a folder "
                            "you can write in") from None
        while self._fd is None:
            self._fd = self._try_lock()
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())
        return self

    def _try_lock(self) -> int | None:
        """The locked descriptor, or None if the file was replaced meanwhile (try again); refuses if held."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"cannot create the run folder's lock {str(self.path)!r}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            pid = _pid_in(self.path)
            raise RunBusy(f"run folder {str(self.folder)!r} is in use by another run (pid {pid}); "
                          "wait for it to end or stop it (one writer per folder)", pid) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(self.path).st_ino  # not unlinked by a run that just ended
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            return None
        return fd

    def release(self, remove_if_created: bool = False) -> None:
        """Unlock; with ``remove_if_created``, also remove the folder this lock made if only the lock is in it."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # while still held: a run that opened it before sees it replaced
        os.close(self._fd)  # closing the descriptor releases the flock
        self._fd = None
        if remove_if_created and self.created and not any(self.folder.iterdir()):
            self.folder.rmdir()

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
        pid = _pid_in(path)
        return None if pid == str(os.getpid()) else pid  # this process holds it: not another run
    finally:
        os.close(fd)  # also drops the shared lock, if taken
    return None
