"""``python -m bitfit state RUN...``: one ``<status>\\t<folder>\\t<reason>`` line per run folder.

The experiment scripts use it to decide what to do with a run (skip, --resume, --overwrite). Every folder
gets its line whatever happens with the others: one that cannot be read is ``broken``, with the reason.
The exit status is 0 (the statuses are the answer); tabs and line breaks in a folder's name or a reason are
shown escaped, so each folder is exactly one line.
"""

from __future__ import annotations

from ..runstate import BROKEN, STATUSES, read_state


def build_parser(p):
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (need not exist: a missing one is 'new')")
    p.add_argument("--status-only", action="store_true", help="print only the status word, one line per folder")
    p.epilog = "statuses: " + ", ".join(STATUSES)
    return p


def _shown(text: str) -> str:
    """``text`` on one line, printable whatever bytes a file name held."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")  # a name that is not UTF-8: its bytes escaped
    return text.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def cli(args) -> int:
    for folder in args.runs:
        try:
            st = read_state(folder)
            status, reason = st.status, st.reason
        except Exception as e:  # noqa: BLE001 - one folder's surprise must not cost the others their line
            status, reason = BROKEN, f"unreadable ({e.__class__.__name__}: {e})"
        print(status if args.status_only else f"{status}\t{_shown(folder)}\t{_shown(reason)}", flush=True)
    return 0
