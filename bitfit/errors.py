"""Errors a user can act on: bad input (one line, exit 2) and runs that stopped early."""

from __future__ import annotations


class UserError(ValueError):
    """Bad input: the message names the bad value and what would be accepted."""


class RunBusy(UserError):
    """The run folder is held by another process (its lock): nothing was written; the holder's PID is named."""

    def __init__(self, message: str, pid: str):
        super().__init__(message)
        self.pid = pid

    @classmethod
    def holding(cls, folder, pid: str) -> RunBusy:
        return cls(f"run folder {str(folder)!r} is in use by another run (pid {pid}); wait for it to end or stop it "
                   "(one writer per folder)", pid)


class RunStopped(RuntimeError):
    """A run that stopped before its last epoch (interrupted, or diverged); its checkpoint is kept."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class StopEarly(Exception):
    """Raised by an ``on_epoch`` callback (a sweep's early-stopping scheduler) to end a run after the
    epoch it was told about: the run is marked "stopped" (never complete) and keeps its checkpoint."""


class EnvironmentFailure(RuntimeError):
    """The machine, not the input, failed (a full disk, a read-only file system): exit status 74
    (EX_IOERR), distinct from bad input's 2. Nothing was half-written."""

    exit_code = 74


class UnreadableFile(UserError):
    """A file the tool parses (a run folder's JSON, a lock) that is not a regular file of bounded size and
    valid content: a FIFO, a device, a symlink, too large, too deeply nested, not JSON. ``why`` is the short
    reason (``a FIFO, not a regular file``, ``JSONDecodeError``...) for callers that phrase their own line."""

    def __init__(self, path, why: str, accepted: str = "a regular file written by this tool"):
        super().__init__(f"{str(path)!r} is unreadable ({why}); accepted: {accepted}")
        self.path, self.why = str(path), why
