"""Progress for anything that takes more than a few seconds: a tqdm bar on a terminal, plain
periodic log lines when stderr is a file or a pipe (no carriage returns glued into one line).

    for batch in progress(loader, "epoch 1/3", enabled=verbose):
        ...
    bar.set_postfix(loss="0.6931")      # shown on the bar, or in the next log line
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("bitfit")

LOG_EVERY = 30.0  # seconds between plain progress lines


class _Quiet:
    def __init__(self, iterable):
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable)

    def set_postfix(self, **kw) -> None:
        pass


class LogProgress(_Quiet):
    """Iterates and logs ``desc: i/total (pct), rate/s, postfix`` every ``every`` seconds and at the end."""

    def __init__(self, iterable, desc: str, total: int | None, unit: str, every: float = LOG_EVERY):
        super().__init__(iterable)
        self.desc, self.unit, self.every, self.postfix = desc, unit, every, ""
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)

    def set_postfix(self, **kw) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kw.items())

    def _line(self, done: int, start: float) -> None:
        of = f"/{self.total} ({100 * done / self.total:.0f}%)" if self.total else ""
        rate = done / max(time.perf_counter() - start, 1e-9)
        log.info("%s: %d%s %s, %.1f %s/s%s", self.desc, done, of, self.unit, rate, self.unit,
                 f", {self.postfix}" if self.postfix else "")

    def __iter__(self):
        start = last = time.perf_counter()
        done = 0
        for item in self.iterable:
            yield item
            done += 1
            if time.perf_counter() - last >= self.every:
                self._line(done, start)
                last = time.perf_counter()
        self._line(done, start)


def progress(iterable, desc: str, total: int | None = None, enabled: bool = True, unit: str = "batches"):
    """A progress display over ``iterable``: tqdm on a terminal (its line kept), log lines otherwise."""
    if not enabled:
        return _Quiet(iterable)
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, leave=True, dynamic_ncols=True, mininterval=1.0, unit=unit)
    return LogProgress(iterable, desc, total, unit)
