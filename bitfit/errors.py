"""Errors a user can act on: bad input (one line, exit 2) and runs that stopped early."""


class UserError(ValueError):
    """Bad input: the message names the bad value and what would be accepted."""


class RunBusy(UserError):
    """The run folder is held by another process (its lock): nothing was written; the holder's PID is named."""

    def __init__(self, message: str, pid: str):
        super().__init__(message)
        self.pid = pid


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
