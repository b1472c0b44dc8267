"""``python -m bitfit submit RUN...``: the runs' test predictions as a checked GLUE submission zip.

    python -m bitfit submit runs/* -o glue_submission.zip --data-dir ../shared/glue_data
"""

from __future__ import annotations

import logging

from ..submit import KNOWN_ROWS, submit


def build_parser(p):
    """Flags of ``python -m bitfit submit`` (added to the parser ``bitfit.__main__`` makes)."""
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders written with --predict-test, one per task")
    p.add_argument("--output", "-o", default="glue_submission.zip", help="zip file to write")
    p.add_argument("--data-dir", default=None, help="GLUE folder whose test files the row counts and indices are "
                   "checked against (default: $GLUE_DIR, else each run's own data dir, else GLUE's known counts)")
    p.add_argument("--allow-missing", action="store_true",
                   help="zip even if some of the 11 GLUE files are missing (the GLUE server wants all of them)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing zip file")
    return p


def cli(args) -> int:
    logging.basicConfig(format="%(levelname)s: %(message)s", level=logging.WARNING)
    files, missing = submit(args.runs, args.output, args.data_dir, args.allow_missing, args.overwrite)
    width = max(len(f) for f in KNOWN_ROWS)
    for name in KNOWN_ROWS:
        if name in files:
            e = files[name][1]
            print(f"{name:<{width}}  {e.rows:>7,} rows  {e.run}  (checked against {e.expected_from})")
        else:
            print(f"{name:<{width}}  missing")
    print(f"wrote {args.output}: {len(files)} of {len(KNOWN_ROWS)} GLUE files"
          + (f"; MISSING {', '.join(missing)} (--allow-missing)" if missing else ""))
    return 0
