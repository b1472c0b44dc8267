"""``python -m bitfit report RUNS... -o REPORT``: the paper's tables and figures from run folders.

    python -m bitfit report runs/ -o report/
    python -m bitfit report runs/minilm/full runs/minilm/n4000 -o docs/results --overwrite
    python -m bitfit report runs/ -o report/ --no-deltas      # tables and curves only: fast

Prints the path of the README.md written; the library side is ``bitfit.report.write_report``.
"""

from __future__ import annotations

import argparse

from ..logs import setup_logging
from ..report import write_report


def build_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("runs", nargs="+", help="folders holding run folders (searched recursively)")
    p.add_argument("--output", "-o", required=True, help="report folder to write (refused if not empty, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty folder (replaces its figures/)")
    p.add_argument("--deltas", action=argparse.BooleanOptionalAction, default=True,
                   help="draw the figures that read each run's delta and its base model (bias change, per-layer "
                        "distance); --no-deltas: tables and curves only")
    p.add_argument("--verbose", action=argparse.BooleanOptionalAction, default=True, help="log skipped runs and progress")
    return p


def cli(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    print(write_report(args.runs, args.output, overwrite=args.overwrite, deltas=args.deltas))
    return 0
