"""One sweep trial = one ordinary ``bitfit.training.run`` in a Ray worker (the command layer is the
only code that calls the training loop, so the trainable lives here, beside ``sweep.py``).

The trial first checks that its node sees the sweep's folder (a shared file system; else it fails at
once, naming the node), then decides again, from ``read_state``, what to do with its run folder (a
run finished or taken meanwhile is left alone), and trains on what Ray gave it: the GPU in its
``CUDA_VISIBLE_DEVICES``, or the CPU when the sweep places runs on no GPU. It reports the dev main
metric of every epoch to Tune, cuts the run when ``--early-stop asha`` says so (``StopEarly``: the
run ends "stopped", its checkpoint kept), and stops the run through its own interrupt path when the
sweep is interrupted (a watcher thread polls the sweep's stop request). Warnings the run logs are
reported to the driver, which prints them.
"""

from __future__ import annotations

import gc
import logging
import os
import threading

from ..errors import RunBusy, RunStopped, StopEarly, UserError
from ..runstate import DIVERGED, read_state
from ..sweep.control import read_marker, stop_requested
from ..sweep.driver import METRIC
from ..sweep.plan import OVERWRITE, TO_RUN, action_for, flags_for

log = logging.getLogger("bitfit")
STOP_POLL_S = 1.0  # how often a trial looks for the sweep's stop request


class TrialFailed(RuntimeError):
    """A run that failed (bad input, diverged, a node that cannot see the output): the message is the reason
    the sweep reports; such a trial is not retried."""


class _Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage().splitlines()[0])


def _node() -> str:
    import ray

    return f"{ray.util.get_node_ip_address()} (node {ray.get_runtime_context().get_node_id()[:12]})"


def _enter(job: dict) -> None:
    """Work where the sweep started; refuse at once on a node that does not see the sweep's folder."""
    try:
        os.chdir(job["cwd"])  # run folders, data and model paths are relative to where the sweep started
    except OSError:
        raise TrialFailed(f"node {_node()} has no folder {job['cwd']!r} (where the sweep started); every node needs "
                          "the output root, the data and a local model at the same paths (a shared file system)") from None
    marker = read_marker(job["sweep_dir"])
    if marker is None or marker.get("sweep") != os.path.basename(job["sweep_dir"]):
        raise TrialFailed(f"node {_node()} cannot see the sweep's output folder (its marker {job['sweep_dir']}/sweep.json "
                          "is missing there); every node needs the output root, the data and a local model at the same "
                          "paths (a shared file system)")
    try:
        os.setpriority(os.PRIO_PROCESS, 0, job["niceness"])  # the sweep's niceness, where Ray started us lower
    except OSError:
        pass  # raising priority needs privileges; on an embedded Ray the raylet already set it


def _watch_stop(folder: str, done: threading.Event) -> None:
    from ..checkpoint import request_interrupt

    while not done.wait(STOP_POLL_S):
        signum = stop_requested(folder)
        if signum is not None:
            request_interrupt(signum)  # the loop stops at its next step, as on Ctrl-C
            return


def trial(config: dict) -> None:
    import ray
    from ray import tune

    from ..checkpoint import clear_interrupt_request
    from ..config import RunConfig
    from ..sweep import asha
    from ..training import run

    job = config["run"]
    _enter(job)
    if stop_requested(job["sweep_dir"]) is not None:
        return  # the sweep was interrupted before this trial started
    state = read_state(job["path"])
    action = action_for(state, retry_diverged=state.status == DIVERGED and job["action"] == OVERWRITE)
    if action not in TO_RUN:
        return  # complete, diverged or running elsewhere since the sweep was planned: nothing to do
    settings = dict(job["settings"])
    if not job["gpus"]:
        settings["cpu"] = True  # --gpus-per-run 0: the CPU, even where Ray leaves GPUs visible
    cfg = RunConfig(**settings, **flags_for(action))

    def on_epoch(info: dict) -> None:
        tune.report({METRIC: float(info["main"]), "epoch": info["epoch"], "metric": info["main_metric"],
                     "node": ray.get_runtime_context().get_node_id()})
        if job["early_stop"] == "asha" and info["epoch"] < cfg.epochs:
            why = asha.decide(cfg.output_path, cfg.task_name, info["epoch"], float(info["main"]), cfg.epochs)
            if why:
                raise StopEarly(why)

    warnings, done = _Warnings(), threading.Event()
    logging.getLogger("bitfit").addHandler(warnings)
    clear_interrupt_request()
    threading.Thread(target=_watch_stop, args=(job["sweep_dir"], done), daemon=True).start()
    try:
        run(cfg, on_epoch=on_epoch)
    except RunBusy:
        return  # another process took the folder meanwhile: left alone
    except RunStopped as e:
        if stop_requested(job["sweep_dir"]) is None and e.exit_code != 0:
            raise TrialFailed(str(e)) from None  # diverged (an interrupt of the sweep is not a failure)
    except UserError as e:
        raise TrialFailed(str(e)) from None
    finally:
        done.set()
        logging.getLogger("bitfit").removeHandler(warnings)
        gc.collect()  # the worker may train the next trial (reuse_actors): free this run's model and data now
        if warnings.lines:
            try:
                tune.report({"warnings": warnings.lines})
            except Exception:  # the session already ended: the warnings are lost, the run's own outcome is not
                log.debug("could not report the run's warnings", exc_info=True)

