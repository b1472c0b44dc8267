"""The sweep's folder ``OUT/.tune/<sweep>/``, as the driver and its trials share it (plain files, so a
trial on any node that sees the output root sees them).

    write_json(folder / MARKER, {...})    # the driver, before any trial: proves a node sees OUT
    read_marker(folder)                   # a trial: None where its node cannot see it
    (folder / STOP).write_text("2\\n")     # the driver, on SIGINT/SIGTERM
    stop_requested(folder)                # a trial, the Tune stopper: the signal number, or None
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

MARKER = "sweep.json"
STOP = "stop"


def stop_requested(folder: str | os.PathLike) -> int | None:
    """The signal number that interrupted the sweep whose folder this is, or None."""
    try:
        return int((Path(folder) / STOP).read_text().strip() or signal.SIGINT)
    except (OSError, ValueError):
        return None


def read_marker(folder: str | os.PathLike) -> dict | None:
    try:
        value = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
