"""``python -m bitfit merge RUN -o FOLDER``: base + delta as a standalone Hugging Face model folder.

    python -m bitfit merge runs/rte -o merged/rte
    python -m bitfit merge runs/tickets -o merged/tickets   # a task given as files: id2label are its class names
"""

from __future__ import annotations

import argparse

from ..logs import setup_logging


def build_parser(p):
    p.add_argument("delta", help="delta.safetensors of a run, or the run folder")
    p.add_argument("--output", "-o", required=True, help="model folder to write (refused if not empty, unless --overwrite)")
    p.add_argument("--base", default=None, help="base model to apply the delta to (default: the one the delta names); "
                   "its weights must match the delta's fingerprint")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty folder")
    p.add_argument("--trust-remote-code", action="store_true", help="allow a base model whose code lives on the hub")
    p.add_argument("--allow-unverified", action="store_true", help="load a delta that carries no digest or "
                   "fingerprint (written by an older version); it cannot be checked for corruption, edits or its base")
    p.add_argument("--verbose", action=argparse.BooleanOptionalAction, default=True, help="log what was merged")
    return p


def cli(args) -> int:
    from ..delta import merge

    setup_logging(args.verbose)
    out = merge(args.delta, args.output, base=args.base, overwrite=args.overwrite,
                trust_remote_code=args.trust_remote_code, allow_unverified=args.allow_unverified)
    print(out)
    return 0
