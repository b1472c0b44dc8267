#!/usr/bin/env python
"""Fine-tune a Hugging Face encoder on a GLUE task under a parameter-freezing method.

    python run_glue.py -t rte -f bitfit -o runs/rte --data-dir ../shared/glue_data -e 3
    python run_glue.py -t cola -f bitfit --bias-terms query intermediate -o runs/cola -l 1e-3

The same as ``python -m bitfit train``; the flags are bitfit.config.RunConfig's fields.
"""

from __future__ import annotations

import sys

from bitfit.cli import run_command
from bitfit.cli import train as command


def main(argv: list[str] | None = None) -> int:
    return run_command(command, "run_glue.py", command.DESCRIPTION, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
