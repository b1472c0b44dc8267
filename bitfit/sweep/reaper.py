"""Ends a sweep driver's embedded Ray when the driver dies without shutting it down (kill -9, OOM).

    python bitfit/sweep/reaper.py DRIVER_PID     # started by bitfit.sweep.driver.start_reaper

Ray's GCS and raylet share the driver's fate, but its agents (dashboard and runtime-env agents, about
180 MB) and idle workers outlive a killed driver for minutes. While the driver lives, this watchdog
notes every process below it every half second; once the driver is gone it sends SIGTERM to those
still alive and to their children, and SIGKILL two seconds later. The driver terminates the watchdog
when it shuts Ray down normally. A standalone script (psutil comes with Ray): it imports nothing of
bitfit, so it starts in a fraction of a second.
"""

from __future__ import annotations

import sys
import time

import psutil

POLL_S = 0.5
GRACE_S = 2.0


def watch(driver_pid: int) -> list[psutil.Process]:
    """Until the driver ends: every process that was below it at some point (psutil's identity includes
    the start time, so a reused PID is never taken for one of them)."""
    try:
        driver = psutil.Process(driver_pid)
    except psutil.NoSuchProcess:
        return []
    seen: dict[tuple[int, float], psutil.Process] = {}
    me = psutil.Process().pid
    while driver.is_running() and driver.status() != psutil.STATUS_ZOMBIE:
        try:
            for child in driver.children(recursive=True):
                if child.pid != me:
                    seen.setdefault((child.pid, child.create_time()), child)
        except psutil.Error:
            pass
        time.sleep(POLL_S)
    return list(seen.values())


def reap(procs: list[psutil.Process]) -> None:
    victims: dict[int, psutil.Process] = {}
    for p in procs:
        try:
            if p.is_running():
                victims[p.pid] = p
                victims.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.Error:
            continue
    for p in victims.values():
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(list(victims.values()), timeout=GRACE_S)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass


if __name__ == "__main__":
    reap(watch(int(sys.argv[1])))
