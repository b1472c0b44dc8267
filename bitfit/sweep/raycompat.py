"""Every place the sweep leans on Ray beyond its plain public calls, in one module
(tests/test_sweep_ray.py fails on a Ray that changed any of them; ray is pinned in requirements.txt).

    raycompat.quiet()                         # no banners, no token warning, no Tune SIGINT handler
    raycompat.set_worker_niceness(0)          # trials at the sweep's niceness, not Ray's 15
    raycompat.lost_worker(result.error)       # a worker or node lost (retry) vs. the trial's own error
    tune.RunConfig(stop=StopWhenInterrupted(folder), callbacks=[that same object])

- ``RAY_worker_niceness`` (a Ray config entry, read from the environment by the raylet at start):
  Ray starts workers at nice 15, so on a shared machine a trial got 3% of a core beside a plain run.
- ``RAY_AIR_NEW_OUTPUT=0`` with ``verbose=0``: Tune prints nothing of its own (its newer output
  prints a configuration box and "View detailed results" lines even at verbosity 0).
- ``TUNE_DISABLE_SIGINT_HANDLER=1``: the sweep handles Ctrl-C itself (the runs stop through their own
  interrupt path); Tune's handler would end the trials' workers and advise ``Tuner.restore``.
- ``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1``: no TensorBoard/CSV/JSON files of Tune's own (runs log to
  their folders; ``--report-to tensorboard`` writes ``<run>/tensorboard``), and no hint pointing
  TensorBoard at /tmp/ray.
- ``Silent``: with the older output, Tune adds a ``TrialProgressCallback`` that prints "Trial ...
  completed. Last result:" lines, unless the callbacks hold one already: this one, which prints nothing.
- The token-authentication warning Ray logs at every start (``ray._private.authentication``), and
  Tune's "failed to fetch metrics" for the result files turned off above (what a trial did is read
  from its run folder), a failed trial's traceback (the summary gives its reason in one line; Tune
  keeps the traceback in ``OUT/.tune/<sweep>/round<N>/<trial>/error.txt``) and the list of trial ids
  that did not complete.
"""

from __future__ import annotations

import logging
import os

from ray.exceptions import RayTaskError
from ray.tune import Callback
from ray.tune.progress_reporter import TrialProgressCallback
from ray.tune.stopper import Stopper

from .control import stop_requested

NICENESS_ENV = "RAY_worker_niceness"
QUIET_ENV = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_DISABLE_SIGINT_HANDLER": "1", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}
NOISY_LOGGERS = ("ray._private.authentication.authentication_token_setup",  # a warning at every start
                 "ray.tune.analysis.experiment_analysis",  # "failed to fetch metrics": Tune's own files are off
                 "ray.tune.execution.tune_controller",  # a failed trial's traceback (its error.txt keeps it)
                 "ray.tune.tune")  # "Trials did not complete: [trial_...]": the summary names the runs


def quiet() -> None:
    os.environ.update(QUIET_ENV)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)


def set_worker_niceness(niceness: int) -> None:
    """For a Ray started after this call in this process (the raylet reads it from the environment)."""
    os.environ[NICENESS_ENV] = str(int(niceness))


def lost_worker(error: BaseException) -> bool:
    """Whether a trial failed because its worker process or node was lost (killed, out of memory, node
    gone), not by raising an error of its own (``RayTaskError`` wraps what the trainable raised)."""
    return not isinstance(error, RayTaskError)


class StopWhenInterrupted(Callback, Stopper):
    """Ends the Tune run once the sweep was interrupted (its folder holds the stop request) and every
    running trial has stopped its run (each through the run's own interrupt path); trials not started
    are not started. Pass it as the run's ``stop`` and among its callbacks (it counts running trials)."""

    def __init__(self, folder):
        self.folder = str(folder)
        self.running: set[str] = set()

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.add(trial.trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)

    def __call__(self, trial_id, result) -> bool:
        return False

    def stop_all(self) -> bool:
        return not self.running and stop_requested(self.folder) is not None


class Silent(TrialProgressCallback):
    """Tune's per-trial printer, printing nothing (its presence keeps Tune from adding a printing one)."""

    def on_trial_result(self, *args, **kw):
        pass

    def on_trial_error(self, *args, **kw):
        pass

    def on_trial_complete(self, *args, **kw):
        pass
