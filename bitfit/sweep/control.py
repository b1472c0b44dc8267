"""The sweep's folder ``OUT/.tune/<sweep>/``, as the driver and its trials share it (plain files, so a
trial on any node that sees the output root sees them).

    write_json(folder / MARKER, {...})    # the driver, before any trial: proves a node sees OUT
    read_marker(folder)                   # a trial: None where its node cannot see it
    (folder / STOP).write_text("2\\n")     # the driver, on SIGINT/SIGTERM
    stop_requested(folder)                # a trial, the Tune stopper: the signal number, or None
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from ..errors import UnreadableFile
from ..io import read_json_file, read_regular_file

MARKER = "sweep.json"
STOP = "stop"
LIMIT = 4096  # both files are a few dozen bytes ("2\n"; the marker's three keys); read no more than this


def stop_requested(folder: str | os.PathLike) -> int | None:
    """The signal number that interrupted the sweep whose folder this is, or None (also where the file is not a
    regular file of at most ``LIMIT`` bytes: read without following a symlink or waiting on a FIFO)."""
    try:
        return int(read_regular_file(Path(folder) / STOP, LIMIT).decode("ascii").strip() or signal.SIGINT)
    except (OSError, UnreadableFile, ValueError):  # UnicodeDecodeError is a ValueError
        return None


def read_marker(folder: str | os.PathLike) -> dict | None:
    try:
        value = read_json_file(Path(folder) / MARKER, LIMIT)
    except (OSError, UnreadableFile):
        return None
    return value if isinstance(value, dict) else None
