"""Running a planned sweep on Ray Tune: embedded Ray (or a cluster), one Tune trial per run folder.

    from bitfit.sweep.driver import Resources, run_sweep
    result = run_sweep(to_run, trainable, Resources(cpus=1), out=Path("runs"))
    result.errors, result.retried, result.signum

The trainable (``bitfit.cli.sweep_trial``: one ordinary ``bitfit.training.run`` per trial) is passed
in, so this library never imports the training loop. What a trial did is read back from its run
folder with ``read_state``; Tune's error, when the folder says nothing, gives the reason.

- **Placing.** Ray places every trial: ``gpus`` per run (None: one GPU where the cluster has GPUs,
  else the CPU; 0: the CPU, explicitly; a fraction packs runs on one GPU). A trial trains on the
  GPU Ray gave it (Ray sets its ``CUDA_VISIBLE_DEVICES``). A request no node can meet, or an
  address where no cluster answers within ``ADDRESS_TIMEOUT_S``, is one line before any trial.
- **Clusters.** The ``bitfit`` package travels to the workers in Ray's runtime environment
  (``py_modules``): no node needs this checkout. Run folders are written where the trial runs, so
  every node must see the output root at the same path (a shared file system): the driver writes a
  marker in ``OUT/.tune/<sweep>/`` and a trial that cannot read it fails at once, naming its node.
- **Retries.** A trial whose worker or node was lost (not one that failed on its own input) is run
  again, up to ``max_retries`` times; it resumes from its run folder's checkpoint.
- **Interrupts.** SIGINT/SIGTERM write ``OUT/.tune/<sweep>/stop``; each running trial stops its run
  through the run's own interrupt path (results.json "interrupted", checkpoint kept, lock released),
  trials not started yet do not start, and ``signum`` says which signal (the command exits 128+N).
  A second signal stops at once. If the driver is killed outright, ``reaper`` ends the embedded Ray.
- Each invocation keeps its Tune files in its own ``OUT/.tune/<sweep>/`` (two sweeps into one OUT
  do not share state); the report skips dot-folders.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UnreadableFile, UserError
from ..io import SOURCE_COMMIT_ENV, environment_failure, read_json_file, source_commit, write_json, write_text
from ..runstate import COMPLETE, DIVERGED, INTERRUPTED, STOPPED, read_state
from . import raycompat
from .control import MARKER, STOP
from .plan import Planned

log = logging.getLogger("bitfit")
METRIC = "main"  # the dev main metric each epoch reports to Tune
ADDRESS_TIMEOUT_S = 30.0  # how long to wait for a cluster at --address before saying none answers
LOCAL_INIT: dict = {}  # extra ray.init arguments for the embedded Ray (the tests declare GPUs: {"num_gpus": 4})


@dataclass(frozen=True)
class Resources:
    cpus: float = 1.0  # per trial
    gpus: float | None = None  # per trial; None: 1 where the cluster has GPUs, else 0; fractions pack runs
    address: str | None = None  # None: embedded Ray on this machine; "auto" or HOST:PORT: join a cluster
    early_stop: str | None = None  # None or "asha"
    max_concurrent: int = 0  # 0: as many as the resources allow
    max_retries: int = 2  # runs of a trial whose worker or node was lost


@dataclass(frozen=True)
class Outcome:
    path: Path
    status: str  # done, stopped, failed, not finished, left alone
    reason: str
    retried: int = 0  # times its trial was run again after a lost worker


@dataclass
class SweepResult:
    errors: dict[str, str] = field(default_factory=dict)  # run folder -> why its trial failed
    retried: dict[str, int] = field(default_factory=dict)  # run folder -> times it was run again after a lost worker
    gpus: float = 0.0  # GPUs per run, as placed
    signum: int | None = None  # the signal that interrupted the sweep


# ------------------------------------------------------------------------------------------------
# Ray: connecting, checking what it can place


def _source_commit() -> str:
    """``<commit>[:dirty]`` of this checkout, for the workers' config.json (``io.source_commit``)."""
    commit, dirty = source_commit()
    return f"{commit}:dirty" if commit and dirty else commit or ""


def runtime_env(start: Path) -> dict:
    """The ``bitfit`` package itself travels to every worker (no node needs this checkout at this path), and
    only it: ``start``, an empty folder, is the workers' working_dir, because without one Ray puts the
    driver's current folder first on every worker's sys.path, where a node holding another checkout at that
    path would import its code instead of the shipped copy."""
    package = Path(__file__).resolve().parents[1]
    return {"py_modules": [str(package)], "working_dir": str(start), "excludes": ["__pycache__", "*.pyc"],
            "env_vars": {SOURCE_COMMIT_ENV: _source_commit()}}


def check_address(address: str) -> None:
    """HOST:PORT must accept a connection (one line at once where nothing listens); 'auto' is Ray's to resolve."""
    if address == "auto":
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise UserError(f"--address {address!r} is not HOST:PORT or 'auto'; accepted: e.g. 10.0.0.5:6379, auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=min(ADDRESS_TIMEOUT_S, 10)).close()
    except OSError as e:
        raise UserError(f"no Ray cluster answers at --address {address!r} ({e.strerror or e}); start one with "
                        "`ray start --head` there, or leave --address out to run on this machine") from None


def connect(res: Resources, start: Path) -> None:
    """Start the embedded Ray, or join the cluster at ``res.address`` (one line if none answers in time)."""
    import ray

    raycompat.quiet()
    kw: dict = {"runtime_env": runtime_env(start), "include_dashboard": False, "log_to_driver": False,
                "logging_level": logging.WARNING}
    if not res.address:  # "local": a Ray of its own, even where RAY_ADDRESS is set or `ray start` left one running
        raycompat.set_worker_niceness(os.getpriority(os.PRIO_PROCESS, 0))  # trials run at the sweep's niceness
        try:
            ray.init(address="local", **({"num_cpus": os.cpu_count() or 1} | LOCAL_INIT), **kw)
        except (ValueError, RuntimeError, ConnectionError, OSError) as e:
            raise UserError(f"cannot start Ray on this machine: {str(e).splitlines()[0]}") from None
        return
    check_address(res.address)
    failure: list[BaseException] = []
    joined = threading.Thread(target=_init_into, args=(failure, res.address, kw), daemon=True)
    joined.start()
    joined.join(ADDRESS_TIMEOUT_S)
    if joined.is_alive() or failure:
        why = f"no answer within {ADDRESS_TIMEOUT_S:g} s" if joined.is_alive() else str(failure[0]).splitlines()[0]
        raise UserError(f"cannot join the Ray cluster at --address {res.address!r}: {why}; accepted: the address "
                        "`ray start --head` printed (HOST:PORT), or auto on a machine of the cluster")


def _init_into(failure: list, address: str, kw: dict) -> None:
    import ray

    try:
        ray.init(address=address, **kw)
    except Exception as e:  # reported by connect(), in one line
        failure.append(e)


def place(res: Resources) -> float:
    """GPUs per run (the default decided from the cluster), or one line when no node can hold one run."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    gpus = res.gpus if res.gpus is not None else (1.0 if any(n.get("GPU", 0) for n in nodes) else 0.0)
    if not any(n.get("CPU", 0) >= res.cpus and n.get("GPU", 0) >= gpus for n in nodes):
        have = "; ".join(f"{n.get('CPU', 0):g} CPUs, {n.get('GPU', 0):g} GPUs" for n in nodes) or "none alive"
        raise UserError(f"no node can run one trial with --cpus-per-run {res.cpus:g} and --gpus-per-run {gpus:g} "
                        f"(the cluster's nodes: {have}); accepted: at most one node's CPUs and GPUs "
                        "(--gpus-per-run 0 trains on the CPU)")
    log.info("ray: %s; %g GPU(s) per run", ray.cluster_resources(), gpus)
    return gpus


# ------------------------------------------------------------------------------------------------
# the sweep's own folder: marker, stop request


def sweep_dir(out: Path) -> Path:
    """``OUT/.tune/<time>-<pid>``: this invocation's Tune files, marker and stop request."""
    name = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    return (out / ".tune" / name).resolve()


def write_marker(folder: Path) -> None:
    """The marker trials look for (``write_json`` makes the folder: a full disk there is one line, exit 74)."""
    import ray

    write_json(folder / MARKER, {"sweep": folder.name, "driver_node": ray.get_runtime_context().get_node_id(),
                                 "driver_pid": os.getpid()})


class Interrupts:
    """SIGINT/SIGTERM in the driver: the first writes the stop request; a second stops at once."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.signum: int | None = None
        self._old: dict = {}

    def __enter__(self) -> Interrupts:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        return False

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt  # the second signal: stop now, runs keep their last checkpoints
        self.signum = signum
        write_text(self.folder / STOP, f"{int(signum)}\n")  # a full disk: EnvironmentFailure, exit 74
        print(f"sweep: {signal.Signals(signum).name}: stopping the running trials at their next step (their "
              "checkpoints are kept; run the same command again to continue); again to stop at once",
              file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# running


def trial_param(p: Planned, folder: Path, gpus: float, early_stop: str | None = None) -> dict:
    """What a Tune trial receives: its run folder and settings, the action planned, where paths are relative to,
    the sweep's folder (marker, stop request), GPUs per run, early stopping, the driver's niceness."""
    return {"path": str(p.trial.path), "settings": p.trial.settings, "action": p.action, "cwd": os.getcwd(),
            "sweep_dir": str(folder), "gpus": gpus, "early_stop": early_stop,
            "niceness": os.getpriority(os.PRIO_PROCESS, 0)}


def run_sweep(to_run: list[Planned], trainable, res: Resources, out: Path, callbacks=()) -> SweepResult:
    """Train the planned runs on Ray Tune (see the module docstring)."""
    import ray

    result = SweepResult()
    reaper = None
    try:
        start = Path(tempfile.mkdtemp(prefix="bitfit-sweep-"))  # the workers' (empty) working_dir; they chdir to ours
    except OSError as e:
        raise environment_failure(Path(tempfile.gettempdir()), e) from None
    try:
        write_text(start / "README", "where a bitfit sweep's Ray workers start; each trial works in the sweep's folder\n")
        connect(res, start)
        result.gpus = place(res)
        folder = sweep_dir(out)
        write_marker(folder)
        reaper = None if res.address else start_reaper()
        with Interrupts(folder) as interrupts:
            pending = list(to_run)
            for attempt in range(res.max_retries + 1):
                lost = _round(pending, trainable, res, folder, result, callbacks, attempt)
                pending = [p for p in pending if str(p.trial.path) in lost]
                if not pending or interrupts.signum is not None:
                    break
                for p in pending:
                    result.retried[str(p.trial.path)] = result.retried.get(str(p.trial.path), 0) + 1
            for p in pending:
                result.errors[str(p.trial.path)] = lost[str(p.trial.path)]
            result.signum = interrupts.signum
        return result
    finally:
        ray.shutdown()
        shutil.rmtree(start, ignore_errors=True)
        if reaper is not None:
            reaper.terminate()


def _round(pending, trainable, res: Resources, folder: Path, result: SweepResult, callbacks, attempt: int) -> dict:
    """One Tune run over ``pending``; records failed trials in ``result``; returns {run: why} for lost workers."""
    from ray import tune

    stopper = raycompat.StopWhenInterrupted(folder)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": res.cpus, "gpu": result.gpus}),
        param_space={"run": tune.grid_search([trial_param(p, folder, result.gpus, res.early_stop) for p in pending])},
        # reuse_actors: a worker trains trial after trial (no new process, no second import of torch per run);
        # each run resets its own peak-memory counter, cwd, interrupt request and log handler
        tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=res.max_concurrent or None,
                                    trial_dirname_creator=_trial_dirname, reuse_actors=True),
        run_config=tune.RunConfig(name=f"round{attempt}", storage_path=str(folder), verbose=0,
                                  stop=stopper,
                                  failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                                  callbacks=[*callbacks, stopper, raycompat.Silent()]))
    lost = {}
    for r in tuner.fit():
        if r.error is None:
            continue
        path = r.config["run"]["path"]
        if raycompat.lost_worker(r.error):
            lost[path] = f"its worker was lost ({_error_line(r.error)})"
        else:
            result.errors[path] = _error_line(r.error)
    return lost


def _trial_dirname(trial) -> str:
    """Tune's folder for a trial (in OUT/.tune/<sweep>/round<N>): its id and run folder's last three parts."""
    return "_".join([trial.trial_id, *Path(trial.config["run"]["path"]).parts[-3:]])


def _error_line(error) -> str:
    """The last meaningful line of a trial's error (Ray wraps it in a traceback)."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    wanted = [ln.partition("TrialFailed: ")[2] for ln in lines if "TrialFailed: " in ln]
    return (wanted or lines or ["unknown error"])[-1]


def start_reaper() -> subprocess.Popen:
    """A watchdog that ends this process's Ray (daemons, agents, workers) within a second or two if this
    process is killed outright (kill -9 leaves Ray's agents running for minutes otherwise)."""
    script = Path(__file__).with_name("reaper.py")
    return subprocess.Popen([sys.executable, str(script), str(os.getpid())], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


# ------------------------------------------------------------------------------------------------
# what became of each run


def _saved_task(folder: Path) -> tuple[str | None, dict | None]:
    """The task name and ``task_definition`` (None: a GLUE task) a run's config.json records; (None, None) if none."""
    try:
        saved = read_json_file(folder / "config.json")
    except (OSError, UnreadableFile):
        return None, None  # absent or unreadable: read_state says why such a run cannot be used
    if not isinstance(saved, dict):
        return None, None
    cfg = saved.get("config") if isinstance(saved.get("config"), dict) else {}
    name = cfg.get("task_name")
    return (name if isinstance(name, str) else None), saved.get("task_definition")


def run_task(folder: str | os.PathLike, name: str):
    """The task of the run in ``folder``: GLUE's ``name``, or a task of the user's (given as files) as the run's
    config.json ``task_definition`` records it (``tasks.task_of``: made known to ``get_task`` in this process, so the
    driver, the summary and ASHA never read the files themselves). UserError if neither names a task, or if the
    definition contradicts another already known here under that name."""
    from ..tasks import task_of

    return task_of(_saved_task(Path(folder))[1], name, where=str(Path(folder) / "config.json"))


def define_run_tasks(folders) -> dict[Path, str]:
    """Make every task of the user's that the runs in ``folders`` record known in this process (the summary and the
    report look tasks up by name); returns {folder: why} for runs whose config.json holds a task definition that is
    not one. Of runs that define one name differently, the first defines it here (the report decides between them)."""
    from ..tasks import get_task, task_of

    problems = {}
    for folder in map(Path, folders):
        name, definition = _saved_task(folder)
        if definition is None:
            continue
        try:
            task_of(definition, name or "?", where=str(folder / "config.json"))
        except UserError as e:
            try:
                known = get_task(name) if name else None
            except UserError:
                known = None
            if known is None or not known.custom:
                problems[folder] = str(e)
    return problems


def outcomes(planned: list[Planned], res: SweepResult) -> list[Outcome]:
    """What became of every planned run, read from its folder now."""
    result = []
    for p in planned:
        path = str(p.trial.path)
        st = read_state(p.trial.path)
        again = res.retried.get(path)
        note = f" (run again {again}x after its worker was lost)" if again else ""
        if st.running is not None:
            status, reason = "left alone", f"running in pid {st.running}"
        elif st.status == COMPLETE:
            status, reason = "done", st.reason + note
        elif st.status == STOPPED:
            status, reason = "stopped", st.reason
        elif st.status == DIVERGED or path in res.errors:
            status, reason = "failed", (res.errors.get(path) or st.reason) + note
        elif st.status == INTERRUPTED and res.signum is not None:
            status, reason = "not finished", (f"interrupted by {signal.Signals(res.signum).name} after epoch "
                                              f"{st.checkpoint_epoch}: run the same sweep again to continue it")
        else:
            status, reason = "not finished", f"{st.status}: {st.reason} (run the sweep again to continue it)"
        result.append(Outcome(p.trial.path, status, reason, again or 0))
    return result

