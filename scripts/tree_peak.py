"""Run a command and measure it as docs/SWEEPS.md does: wall time, the peak resident memory of the
whole process tree (the command and everything it starts: Ray's daemons and workers, the queue's
runs), sampled every half second, and with --runs OUT the per-run overhead (wall time not spent
inside the runs' own ``wall_seconds``, over the number of runs completed under OUT).

    python scripts/tree_peak.py --runs m/sweep -- python -m bitfit sweep ... -o m/sweep

Prints one JSON line. psutil comes with Ray (requirements.txt).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil


def tree_rss(root: psutil.Process) -> int:
    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:  # ended between listing and reading
            pass
    return total


def runs_wall(out: Path) -> tuple[int, float]:
    walls = [json.loads(p.read_text()).get("wall_seconds") for p in out.rglob("results.json")]
    walls = [w for w in walls if w is not None]
    return len(walls), sum(walls)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path, help="output root whose results.json files give the runs' own wall time")
    ap.add_argument("--every", type=float, default=0.5, help="seconds between memory samples")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("give the command to measure after --")
    t0 = time.perf_counter()
    proc = subprocess.Popen(command)
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(root))
        time.sleep(args.every)
    wall = time.perf_counter() - t0
    out = {"exit": proc.returncode, "wall_seconds": round(wall, 1), "peak_tree_rss_mb": round(peak / 2**20)}
    if args.runs is not None:
        n, inside = runs_wall(args.runs)
        out |= {"runs": n, "runs_wall_seconds": round(inside, 1),
                "overhead_seconds_per_run": round((wall - inside) / n, 1) if n else None}
    print(json.dumps(out))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
