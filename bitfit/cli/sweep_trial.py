"""One sweep trial = one ordinary ``bitfit.training.run`` in a Ray worker (the command layer is the
only code that calls the training loop, so the trainable lives here, beside ``sweep.py``).

The trial decides again, from ``read_state``, what to do with its run folder (a run finished or taken
meanwhile is left alone), reports the dev main metric of every epoch to Tune, and turns Tune's
early stop (ASHA) into ``StopEarly``: the run ends with status "stopped", its checkpoint kept.
"""

from __future__ import annotations

import os
import threading

from ..errors import RunStopped, StopEarly, UserError
from ..runstate import DIVERGED, read_state
from ..sweep.driver import METRIC
from ..sweep.plan import OVERWRITE, TO_RUN, action_for, flags_for

STOP_GRACE_S = 120  # how long a stopped trial's actor waits for the run to write results.json
RUN_ENDED = threading.Event()  # set when this worker's trial has returned or raised (one trial per actor)


class TrialFailed(RuntimeError):
    """A run that failed (bad input, diverged): the message is the reason the sweep reports."""


def trial(config: dict) -> None:
    import ray
    from ray import tune

    from ..config import RunConfig
    from ..training import run

    job = config["run"]
    RUN_ENDED.clear()
    os.chdir(job["cwd"])  # run folders, data and model paths are relative to where the sweep started
    state = read_state(job["path"])
    action = action_for(state, retry_diverged=state.status == DIVERGED and job["action"] == OVERWRITE)
    if action not in TO_RUN:
        return  # complete, diverged or running elsewhere since the sweep was planned: nothing to do

    cfg = RunConfig(**job["settings"], **flags_for(action))

    def on_epoch(info: dict) -> None:
        try:
            tune.report({METRIC: float(info["main"]), "epoch": info["epoch"], "metric": info["main_metric"],
                         "node": ray.get_runtime_context().get_node_id()})
        except SystemExit:  # Tune stops this trial: its scheduler (ASHA), or the sweep was interrupted
            if info["epoch"] == cfg.epochs:
                return  # the last epoch: nothing left to cut, the run finishes
            if job.get("early_stop"):
                raise StopEarly("Tune's ASHA scheduler cut it (among the worst at this epoch)") from None
            raise

    try:
        run(cfg, on_epoch=on_epoch)
    except RunStopped as e:
        if e.exit_code != 0:
            raise TrialFailed(str(e)) from None
    except UserError as e:
        raise TrialFailed(str(e)) from None
    finally:
        RUN_ENDED.set()


def make_trainable(early_stop: bool):
    """Tune's function trainable for ``trial``; with early stopping, a stopped trial's actor first waits
    for the run to record "stopped" (Tune's own clean-up does not wait for the training thread)."""
    from ray.tune.trainable.function_trainable import wrap_function

    base = wrap_function(trial)
    if not early_stop:
        return base

    class WaitingTrial(base):
        def cleanup(self):
            from ray.train._internal.session import get_session  # Ray 2.60's session (pinned)

            from bitfit.cli import sweep_trial  # this worker's module (the class itself travels by value)

            session = get_session()
            if session is not None and session.training_started:
                session.stop_event.set()  # what Tune's finish() does first: the blocked tune.report exits ...
                session.continue_lock.release()
                sweep_trial.RUN_ENDED.wait(timeout=STOP_GRACE_S)  # ... and the run records "stopped"
            super().cleanup()

    WaitingTrial.__name__ = base.__name__
    return WaitingTrial
