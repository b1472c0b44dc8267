"""``python -m bitfit <command>``: what to do with finished runs.

    python -m bitfit merge runs/rte -o merged/rte
    python -m bitfit predict --delta runs/rte runs/stsb --input pairs.jsonl -o predictions/
    python -m bitfit submit runs/* -o glue_submission.zip --data-dir ../shared/glue_data
    python -m bitfit report runs/ -o report/

Training itself is ``python run_glue.py``. Each command lives in the module named below, which
offers ``build_parser(parser)`` (adds its flags) and ``cli(args) -> int``; adding a command is one
line in ``COMMANDS``. Bad input gets one line, ``python -m bitfit <command>: error: ...``, exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import OneLineErrors, UserError

COMMANDS: dict[str, tuple[str, str]] = {  # name -> (module, one-line description)
    "merge": ("bitfit.delta", "write a standalone Hugging Face model folder: the base with a run's delta applied"),
    "predict": ("bitfit.serve", "predict with one or more task deltas on one shared backbone"),
    "submit": ("bitfit.submit", "collect runs' test predictions into a GLUE submission zip, checked"),
    "report": ("bitfit.report", "the paper's tables and figures from a tree of run folders"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    return "usage: python -m bitfit <command> [-h] ...\n\ncommands:\n" + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), end="", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"python -m bitfit: error: unknown command {name!r}; accepted: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    prog = f"python -m bitfit {name}"
    parser = module.build_parser(OneLineErrors(prog=prog, description=COMMANDS[name][1],
                                               formatter_class=argparse.ArgumentDefaultsHelpFormatter))
    try:
        args = parser.parse_args(rest)
    except SystemExit as e:  # -h, or a bad flag (already reported on one line)
        return int(e.code or 0)
    try:
        return module.cli(args)
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
