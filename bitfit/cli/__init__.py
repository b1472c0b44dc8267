"""The command layer: the only code that parses flags or prints usage.

    python run_glue.py -t rte -f bitfit -o runs/rte ...      (= python -m bitfit train ...)
    python -m bitfit merge runs/rte -o merged/rte
    python -m bitfit predict --delta runs/rte runs/stsb --input pairs.jsonl -o predictions/
    python -m bitfit submit runs/* -o glue_submission.zip --data-dir ../shared/glue_data
    python -m bitfit report runs/ -o report/
    python -m bitfit bench --task rte --data-dir ../shared/glue_data -o bench/
    python -m bitfit state runs/rte runs/cola

Each command is a module here offering ``build_parser(parser)`` (adds its flags) and
``cli(args) -> int`` (calls the library); adding a command is one line in ``COMMANDS``. Bad input
gets one line, ``<prog>: error: ...``, exit status 2. Modules are imported only when their command
runs, so ``-h`` stays fast (no torch).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import EnvironmentFailure, RunStopped, UserError

COMMANDS: dict[str, str] = {  # name -> one-line description; the module is bitfit.cli.<name>
    "train": "fine-tune on a GLUE task under a fine-tune method (the same as python run_glue.py)",
    "merge": "write a standalone Hugging Face model folder: the base with a run's delta applied",
    "predict": "predict with one or more task deltas on one shared backbone",
    "submit": "collect runs' test predictions into a GLUE submission zip, checked",
    "report": "the paper's tables and figures from a tree of run folders",
    "bench": "training speed and memory of the methods and two peers, side by side",
    "sweep": "a grid of runs (tasks x methods x rates x seeds x sizes) on Ray Tune, resumable; the paper's presets",
    "state": "the state of run folders: new, complete, interrupted, diverged, stopped or broken",
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {what}" for name, what in COMMANDS.items()]
    return "usage: python -m bitfit <command> [-h] ...\n\ncommands:\n" + "\n".join(lines) + "\n"


class OneLineErrors(argparse.ArgumentParser):
    """Bad flags get one line (not the whole usage) and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see -h)\n")


def make_parser(prog: str, description: str) -> argparse.ArgumentParser:
    return OneLineErrors(prog=prog, description=description, formatter_class=HelpFormatter, allow_abbrev=False)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default unless it has none worth showing (None, False, or already in the help)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" in text or "(default" in text or any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            return text
        if action.required or isinstance(action, argparse._StoreTrueAction):
            return text
        return text + " (default: %(default)s)"


def run_command(module, prog: str, description: str, argv: list[str]) -> int:
    """Parse ``argv`` with the module's flags and run it; user errors become one line and exit 2."""
    parser = module.build_parser(make_parser(prog, description))
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # -h, or a bad flag (already reported on one line)
        return int(e.code or 0)
    try:
        return module.cli(args)
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except RunStopped as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return e.exit_code
    except EnvironmentFailure as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_code


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), end="", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"python -m bitfit: error: unknown command {name!r}; accepted: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"{__name__}.{name}")
    return run_command(module, f"python -m bitfit {name}", COMMANDS[name], rest)
