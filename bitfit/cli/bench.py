"""``python -m bitfit bench``: training speed and memory of the methods and two peers, side by side.

    python -m bitfit bench --task rte --data-dir ../shared/glue_data --batch-size 32 --steps 8 --reps 2
    python -m bitfit bench --task rte --data-dir ../shared/glue_data --regimes full_ft bitfit --out docs/perf

Flags are generated from ``bitfit.bench.Settings``; the regimes are ``bitfit.bench.REGIMES``. The
table's header records the command with every setting spelled out, so it repeats the run even after
a default changes.
"""

from __future__ import annotations

import dataclasses
import shlex

from .. import bench
from ..logs import setup_logging
from .args import add_dataclass_flags, flag_name


def build_parser(p):
    add_dataclass_flags(p, bench.Settings)
    p.epilog = "regimes: " + "; ".join(f"{name}: {r.about}" for name, r in bench.REGIMES.items())
    return p


def cli(args) -> int:
    settings = bench.Settings(**vars(args))
    setup_logging(True)
    print(bench.run(settings, command=command_line(settings)), end="")
    return 0


def command_line(s: bench.Settings) -> str:
    """``python -m bitfit bench --task rte ...``: every setting of ``s`` as a flag."""
    words = ["python", "-m", "bitfit", "bench"]
    for f in dataclasses.fields(s):
        value = getattr(s, f.name)
        if value is None or value is False:
            continue
        words.append(flag_name(f.name))
        if value is not True:
            words += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return shlex.join(words)
