"""Running a planned sweep on Ray Tune: embedded Ray (or a cluster), one Tune trial per run folder.

    from bitfit.sweep.driver import Resources, run_sweep
    outcomes = run_sweep(to_run, trainable, Resources(cpus=1), out=Path("runs"))

The trainable (``bitfit.cli.sweep_trial``: one ordinary ``bitfit.training.run`` per trial) is passed
in, so this library never imports the training loop. Tune keeps its own files in ``OUT/.tune`` (the
report skips dot-folders). What a trial did is read back from its run folder with ``read_state``;
Tune's error, when the folder says nothing (bad data before anything was written), gives the reason.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from ..runstate import COMPLETE, DIVERGED, STOPPED, read_state
from .plan import Planned

log = logging.getLogger("bitfit")
METRIC = "main"  # the dev main metric each epoch reports to Tune


@dataclass(frozen=True)
class Resources:
    cpus: float = 1.0  # per trial
    gpus: float = 0.0  # per trial; fractional packs several runs on one GPU
    address: str | None = None  # None: embedded Ray on this machine; "auto" or HOST:PORT: join a cluster
    early_stop: str | None = None  # None or "asha"
    max_concurrent: int = 0  # 0: as many as the resources allow


@dataclass(frozen=True)
class Outcome:
    path: Path
    status: str  # done, stopped, failed, not finished
    reason: str


def trial_param(p: Planned, early_stop: str | None = None) -> dict:
    """What a Tune trial receives: the run folder, its settings, the action planned, where paths are relative to."""
    return {"path": str(p.trial.path), "settings": p.trial.settings, "action": p.action, "cwd": os.getcwd(),
            "early_stop": early_stop}


def start_ray(res: Resources) -> None:
    import ray

    root = str(Path(__file__).resolve().parents[2])  # the folder holding the bitfit package: workers import it
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    kw: dict = {"runtime_env": {"env_vars": {"PYTHONPATH": path}}, "include_dashboard": False,
                "log_to_driver": False, "logging_level": logging.WARNING}
    if res.address:
        ray.init(address=res.address, **kw)
    else:  # "local": a Ray of its own, even where RAY_ADDRESS is set or `ray start` left a cluster running here
        ray.init(address="local", num_cpus=os.cpu_count() or 1, **kw)
    log.info("ray: %s", ray.cluster_resources())


def _scheduler(res: Resources, to_run: list[Planned]):
    """None (every run trains all its epochs) or ASHA within each group of comparable runs (``asha``)."""
    if res.early_stop != "asha":
        return None
    from .asha import GroupedASHA

    return GroupedASHA({str(p.trial.path): (str(p.trial.path.parent), p.trial.config().epochs) for p in to_run},
                       metric=METRIC, time_attr="epoch")


def run_sweep(to_run: list[Planned], trainable, res: Resources, out: Path, callbacks=()) -> dict[str, str]:
    """Train the planned runs on Ray Tune; returns {run folder: Tune's error line} for trials that raised."""
    import ray
    from ray import tune

    start_ray(res)
    old_term = signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))  # as Ctrl-C
    try:
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": res.cpus, "gpu": res.gpus}),
            param_space={"run": tune.grid_search([trial_param(p, res.early_stop) for p in to_run])},
            tune_config=tune.TuneConfig(scheduler=_scheduler(res, to_run),
                                        num_samples=1, max_concurrent_trials=res.max_concurrent or None,
                                        trial_dirname_creator=_trial_dirname),
            run_config=tune.RunConfig(name="sweep", storage_path=str((out / ".tune").resolve()), verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                                      callbacks=list(callbacks)))
        grid = tuner.fit()
        return {r.config["run"]["path"]: _error_line(r.error) for r in grid if r.error is not None}
    finally:
        signal.signal(signal.SIGTERM, old_term)
        ray.shutdown()


def _trial_dirname(trial) -> str:
    """Tune's folder for a trial (in OUT/.tune/sweep): its id and run folder's last three parts."""
    return "_".join([trial.trial_id, *Path(trial.config["run"]["path"]).parts[-3:]])


def _error_line(error) -> str:
    """The last meaningful line of a trial's error (Ray wraps it in a traceback)."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    wanted = [ln.partition("TrialFailed: ")[2] for ln in lines if "TrialFailed: " in ln]
    return (wanted or lines or ["unknown error"])[-1]


def outcomes(planned: list[Planned], errors: dict[str, str]) -> list[Outcome]:
    """What became of every planned run, read from its folder now."""
    result = []
    for p in planned:
        st = read_state(p.trial.path)
        if st.status == COMPLETE:
            status, reason = "done", st.reason
        elif st.status == STOPPED:
            status, reason = "stopped", st.reason
        elif st.status == DIVERGED or str(p.trial.path) in errors:
            status, reason = "failed", errors.get(str(p.trial.path)) or st.reason
        else:
            status, reason = "not finished", f"{st.status}: {st.reason} (run the sweep again to continue it)"
        result.append(Outcome(p.trial.path, status, reason))
    return result
