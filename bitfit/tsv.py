"""The one TSV reader: GLUE's files, prediction inputs and submission files all go through it.

    for lineno, row in read_rows("RTE/dev.tsv"):     # (line number, [column, ...]); blank lines skipped
        ...

Tabs separate columns and nothing is quoted (GLUE's files contain bare quote characters); a
byte-order mark is dropped; text that is not UTF-8 is refused with one line naming the file and byte.
A blank line is one with nothing but whitespace (spaces, tabs, ...): it carries no text and no label,
so it is skipped wherever it is; none of GLUE's files has one.
"""

from __future__ import annotations

import csv
import io
import os
import sys

from .errors import UserError

csv.field_size_limit(sys.maxsize)  # some GLUE rows are long; the default limit is 128 KiB


def parse_rows(text: str) -> list[tuple[int, list[str]]]:
    """(line number, columns) of every line of ``text`` that is not blank (empty or whitespace only)."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quotechar=None)
    return [(lineno, row) for lineno, row in enumerate(reader, start=1) if any(c.strip() for c in row)]


def read_text(path: str | os.PathLike) -> str:
    """A whole UTF-8 file (a leading byte-order mark dropped); one-line error if it is not UTF-8."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:  # newline="": csv sees "\r\n" itself
            return f.read()
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None


def read_rows(path: str | os.PathLike) -> list[tuple[int, list[str]]]:
    """(line number, columns) of every non-blank line of the TSV file at ``path`` (see ``parse_rows``)."""
    return parse_rows(read_text(path))
