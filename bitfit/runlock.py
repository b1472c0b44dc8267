"""One writer per run folder: an OS file lock held for the whole run.

    with RunLock("runs/rte") as lock:      # refuses at once, naming the holder's PID, if another run holds it
        ...                                # write the run folder
    holder("runs/rte")                     # the PID of the run writing there now, or None

The lock is ``fcntl.flock`` on ``<run>/.bitfit.lock``: the OS releases it when the process ends, however
it ends (a crash or ``kill -9`` leaves no stale lock, only the file, which marks nothing and which
readers ignore). A run that ends normally removes the file while still holding the lock; a run that
locked a file that was removed meanwhile takes the new one instead. A second ``run_glue.py`` or ``--resume`` on a locked folder stops
before it writes anything.

The lock file is opened without following a symlink and without blocking on a FIFO, and only a regular
file is written: a symlink, FIFO or device under that name is refused with one line (its target is never
touched). A full disk while writing the PID is ``EnvironmentFailure`` (exit 74), and the lock file (and
the folder, if this lock made it) is removed again.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

from .errors import RunBusy, UserError
from .io import environment_failure, file_kind

LOCK_FILE = ".bitfit.lock"
_NO_FOLLOW = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # never through a symlink, never waiting on a FIFO


def _pid_in(fd: int) -> str:
    """The PID written in an open lock file (digits only, so it can go into a one-line message), or "unknown"."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"


def _open_regular(path: Path, flags: int) -> int:
    """``os.open(path)`` that refuses (``UserError``) anything but a regular file at the lock's name."""
    try:
        fd = os.open(path, flags | _NO_FOLLOW, 0o644)
    except OSError:
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            mode = stat.S_IFREG
        if not stat.S_ISREG(mode):  # a symlink (ELOOP), a folder (EISDIR), a device on a nodev mount (EACCES)
            raise _not_a_lock(path, mode) from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _not_a_lock(path, mode)
    return fd


def _not_a_lock(path: Path, mode: int) -> UserError:
    return UserError(f"run folder lock {str(path)!r} is {file_kind(mode)}, not a regular file; accepted: a regular "
                     "file or nothing there (remove it)")


class RunLock:
    """An exclusive, non-blocking lock on a run folder; creates the folder if it does not exist."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.created = False  # whether acquire() made the folder (so a failed start can remove it again)
        self.made: list[Path] = []  # the folders acquire() made, the run folder first, then its new parents
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        self._make_folder()
        try:
            while self._fd is None:
                self._fd = self._try_lock()
            self._write_pid()
        except BaseException:
            self.release(remove_if_created=True)  # held: removing the file cannot hurt another run
            raise
        return self

    def _write_pid(self) -> None:
        try:
            os.ftruncate(self._fd, 0)
            os.write(self._fd, f"{os.getpid()}\n".encode())
        except OSError as e:
            raise environment_failure(self.path, e) from None

    def _make_folder(self) -> None:
        if self.folder.is_symlink() and not self.folder.exists():
            raise UserError(f"output path {str(self.folder)!r} is a symlink to nothing (or a symlink loop); accepted: "
                            "a new or empty folder (remove the link)")
        if self.folder.exists() and not self.folder.is_dir():
            raise UserError(f"output path {str(self.folder)!r} is a file; accepted: a new or empty folder")
        self.created = not self.folder.exists()
        self.made = [f for f in [self.folder, *self.folder.parents] if not f.exists() and not f.is_symlink()]
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            _raise_if_environment(self.folder, e)
            raise UserError(f"cannot create the run folder {str(self.folder)!r}: {e.strerror}; accepted: a folder "
                            "you can write in") from None

    def _try_lock(self) -> int | None:
        """The locked descriptor, or None if the file was replaced meanwhile (try again); refuses if held."""
        try:
            fd = _open_regular(self.path, os.O_RDWR | os.O_CREAT)
        except OSError as e:
            _raise_if_environment(self.path, e)
            raise UserError(f"cannot create the run folder's lock {str(self.path)!r}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            pid = _pid_in(fd)
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise RunBusy.holding(self.folder, pid) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino  # not unlinked meanwhile
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            return None
        return fd

    def release(self, remove_if_created: bool = False) -> None:
        """Unlock; with ``remove_if_created``, also remove the folder this lock made, and the parents it made for
        it, each if empty (a failed start leaves no trace, not even the parents of ``-o``)."""
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # while still held: a run that opened it before sees it replaced
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
        if remove_if_created and self.created:
            for folder in self.made:  # innermost first; stops at the first one something else has written into
                try:
                    folder.rmdir()
                except OSError:
                    break
            self.created, self.made = False, []

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False


def _raise_if_environment(path: Path, e: OSError) -> None:
    """Raise ``EnvironmentFailure`` (exit 74) for a full disk or read-only file system; otherwise return."""
    failure = environment_failure(path, e)
    if failure is not e:
        raise failure from None


def holder(folder: str | os.PathLike) -> str | None:
    """The PID (as written in the lock file) of the run holding ``folder``'s lock, or None. Never follows a
    symlink or waits on a FIFO at the lock's name (no run of ours can hold one: ``acquire`` refuses them)."""
    try:
        fd = _open_regular(Path(folder) / LOCK_FILE, os.O_RDONLY)
    except (OSError, UserError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        pid = _pid_in(fd)
        return None if pid == str(os.getpid()) else pid  # this process holds it: not another run
    finally:
        os.close(fd)  # also drops the shared lock, if taken
    return None
