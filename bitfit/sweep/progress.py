"""Progress over a sweep's trials: finished / running / failed / waiting, time elapsed and left.

    from bitfit.sweep.progress import Progress
    run_sweep(to_run, trainable, res, out, callbacks=[Progress({"runs/.../lr1e-3_seed0": 10, ...})])

A Tune callback in the driver. On a terminal it is a tqdm bar over the trials; otherwise (a log file,
a CI job) one line per trial started or finished, one per epoch a trial reports, and the status again
at least every ``HEARTBEAT_S`` seconds, with the best dev main metric so far of each group of
comparable runs (task and method):

    sweep: 3/16 finished (1 failed), 2 running, 11 waiting; 5m12s elapsed, about 21m left; best: full/rte/bitfit accuracy 0.5632
    epoch 2/5 full/rte/bitfit/lr1e-3_seed0: accuracy 0.5632

Warnings a run logs (its trial reports them) are printed as they come and again in the summary.

Time left comes from epochs, not trials (runs of one sweep differ in epochs, and ASHA cuts some): the
epochs still to train over the epochs trained so far per second of the sweep. A trial that ends
(done, cut, failed) takes its untrained epochs off the count.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable, TextIO

from ray.tune import Callback

HEARTBEAT_S = 30.0  # without a terminal, a status line at least this often
BEST_SHOWN = 6  # groups whose best dev metric the status line shows


def duration(seconds: float) -> str:
    """``42s``, ``5m12s``, ``2h05m``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress(Callback):
    def __init__(self, epochs: dict[str, int], stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic,
                 bar: bool | None = None):
        """``epochs``: run folder -> its epochs; ``bar``: a tqdm bar (default: when ``stream`` is a terminal)."""
        self.stream = stream or sys.stderr
        self.clock = clock
        self.started = clock()
        self.epochs = dict(epochs)
        self.trained = 0  # epochs trained in this sweep, over all trials
        self.seen: dict[str, int] = {}  # run folder -> the last epoch it reported
        self.running: set[str] = set()
        self.finished: set[str] = set()
        self.failed: set[str] = set()
        self.best: dict[str, tuple[float, str]] = {}  # group -> (best dev main metric so far, its name)
        self.warnings: list[str] = []
        self.last_line = clock()
        self.bar = None
        if bar if bar is not None else getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self.bar = tqdm(total=len(self.epochs), desc="sweep", unit="run", file=self.stream,
                            bar_format="{desc}: {n_fmt}/{total_fmt} finished |{bar}| {postfix}")

    def __getstate__(self) -> dict:
        """Tune pickles its callbacks with the experiment's state: the stream, the bar and the clock stay here."""
        return {k: v for k, v in self.__dict__.items() if k not in ("stream", "bar", "clock")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, stream=sys.stderr, bar=None, clock=time.monotonic)

    @staticmethod
    def _path(trial) -> str:
        return trial.config["run"]["path"]

    @staticmethod
    def _group(path: str) -> str:
        """``full/rte/bitfit``: the size, task and method folders of a run."""
        return "/".join(Path(path).parts[-4:-1])

    def best_text(self, most: int = BEST_SHOWN) -> str:
        """``; best: full/rte/bitfit accuracy 0.5632, ...``: at most ``most`` groups (a grid such as Table 3 has 64)."""
        if not self.best:
            return ""
        shown = [f"{g} {name} {v:.4f}" for g, (v, name) in sorted(self.best.items())]
        more = f" (+{len(shown) - most} more)" if len(shown) > most else ""
        return "; best: " + ", ".join(shown[:most]) + more

    def left_s(self) -> float | None:
        """Seconds left at the rate epochs were trained so far; None before the first epoch."""
        if not self.trained:
            return None
        left = sum(max(e - self.seen.get(p, 0), 0) for p, e in self.epochs.items() if p not in self.finished)
        return left * (self.clock() - self.started) / self.trained

    def line(self) -> str:
        n, failed = len(self.finished), len(self.failed)
        waiting = len(self.epochs) - n - len(self.running)
        left = self.left_s()
        return (f"{n}/{len(self.epochs)} finished" + (f" ({failed} failed)" if failed else "")
                + f", {len(self.running)} running, {waiting} waiting; {duration(self.clock() - self.started)} elapsed"
                + (f", about {duration(left)} left" if left is not None else "") + self.best_text())

    def _show(self, changed_count: bool = False) -> None:
        if self.bar is not None:
            if changed_count:
                self.bar.n = len(self.finished)
            self.bar.set_postfix_str(self.line().split(", ", 1)[1], refresh=True)
        elif changed_count:
            self._print(f"sweep: {self.line()}")

    def _print(self, text: str) -> None:
        self.last_line = self.clock()
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def on_step_end(self, iteration, trials, **info):
        if self.bar is None and self.clock() - self.last_line >= HEARTBEAT_S:
            self._print(f"sweep: {self.line()}")

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.add(self._path(trial))
        self._show(changed_count=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        path = self._path(trial)
        for w in result.get("warnings") or []:
            self.warnings.append(f"warning: {path}: {w}")
            self._print(self.warnings[-1])
        epoch = int(result.get("epoch") or 0)
        if not epoch:
            return
        if epoch > self.seen.get(path, 0):
            self.trained += epoch - self.seen.get(path, epoch - 1)  # a resumed run's first report counts one epoch
            self.seen[path] = epoch
        name, value, group = result.get("metric", "main"), float(result.get("main", float("nan"))), self._group(path)
        if value == value and (group not in self.best or value > self.best[group][0]):
            self.best[group] = (value, name)
        if self.bar is not None:
            self._show()
        else:
            self._print(f"epoch {epoch}/{self.epochs.get(path, '?')} {'/'.join(Path(path).parts[-4:])}: {name} {value:.4f}")

    def warning_lines(self) -> list[str]:
        """The runs' warnings, for the sweep's summary."""
        return list(self.warnings)

    def _end(self, trial, failed: bool) -> None:
        path = self._path(trial)
        self.running.discard(path)
        self.finished.add(path)
        if failed:
            self.failed.add(path)
        self._show(changed_count=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, failed=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, failed=True)

    def on_experiment_end(self, trials, **info):
        if self.bar is not None:
            self.bar.close()
