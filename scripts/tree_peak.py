"""Run a command and measure it as docs/SWEEPS.md does: wall time; the peak memory of the whole
process tree (the command and everything it starts: Ray's daemons and workers, the queue's runs) as
PSS, each process's share of what it maps (pages shared by several processes, such as torch's
libraries in every worker, are split among them, so the sum is what the tree really holds; summed RSS
counts a shared page once per process), sampled every second; and with --runs OUT the time outside
the runs per run: the run slots' time not spent inside the runs' own ``wall_seconds``,
``(wall x slots - sum of the runs' wall_seconds) / runs``, where --slots is how many runs the command
trains at once (the sweep's --max-concurrent; 1 for a queue).

    python scripts/tree_peak.py --runs m/sweep --slots 2 -- python -m bitfit sweep ... -o m/sweep --max-concurrent 2

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


def tree_memory(root: psutil.Process) -> tuple[int, int]:
    """(PSS, RSS) summed over the tree, in bytes."""
    pss = rss = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            info = p.memory_full_info()
        except psutil.Error:  # ended between listing and reading
            continue
        pss += info.pss
        rss += info.rss
    return pss, rss


def runs_wall(out: Path) -> tuple[int, float]:
    walls = [json.loads(p.read_text()).get("wall_seconds") for p in out.rglob("results.json")]
    walls = [w for w in walls if w is not None]
    return len(walls), sum(walls)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path, help="output root whose results.json files give the runs' own wall time")
    ap.add_argument("--slots", type=int, default=1, help="runs the command trains at once (for the overhead per run)")
    ap.add_argument("--every", type=float, default=1.0, help="seconds between memory samples")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("give the command to measure after --")
    t0 = time.perf_counter()
    proc = subprocess.Popen(command)
    root, peak_pss, peak_rss = psutil.Process(proc.pid), 0, 0
    while proc.poll() is None:
        pss, rss = tree_memory(root)
        peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
        time.sleep(args.every)
    wall = time.perf_counter() - t0
    out = {"exit": proc.returncode, "wall_seconds": round(wall, 1), "peak_tree_pss_mb": round(peak_pss / 2**20),
           "peak_tree_rss_mb": round(peak_rss / 2**20)}
    if args.runs is not None:
        n, inside = runs_wall(args.runs)
        out |= {"runs": n, "slots": args.slots, "runs_wall_seconds": round(inside, 1),
                "outside_runs_seconds_per_run": round((wall * args.slots - inside) / n, 1) if n else None}
    print(json.dumps(out))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
