"""``python -m bitfit state RUN...``: one ``<status>\\t<folder>\\t<reason>`` line per run folder.

The experiment scripts use it to decide what to do with a run (skip, --resume, --overwrite).
"""

from __future__ import annotations

from ..runstate import STATUSES, read_state


def build_parser(p):
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (need not exist: a missing one is 'new')")
    p.add_argument("--status-only", action="store_true", help="print only the status word, one line per folder")
    p.epilog = "statuses: " + ", ".join(STATUSES)
    return p


def cli(args) -> int:
    for folder in args.runs:
        st = read_state(folder)
        print(st.status if args.status_only else f"{st.status}\t{folder}\t{st.reason}")
    return 0
