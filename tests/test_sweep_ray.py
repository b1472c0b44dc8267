"""What the sweep leans on in Ray beyond its plain public calls (bitfit/sweep/raycompat.py), checked
against the installed Ray so that an upgrade that changed any of it fails here; and the sweep's own
printing: the honest best-rate summary, the progress heartbeat, warnings carried to the summary."""

from __future__ import annotations

import inspect
import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from bitfit.sweep import raycompat


def test_the_ray_settings_the_sweep_uses_still_exist_in_the_installed_ray():
    import ray
    import ray.exceptions as rex
    from ray._private import ray_constants
    from ray.tune import tune as tune_module
    from ray.tune.experimental import output
    from ray.tune.utils import callback

    ray_root = Path(ray.__file__).parent
    assert ray_constants.RAY_WORKER_NICENESS == raycompat.NICENESS_ENV  # the raylet's worker niceness entry
    assert "TUNE_DISABLE_SIGINT_HANDLER" in inspect.getsource(tune_module._setup_signal_catching)
    assert '"RAY_AIR_NEW_OUTPUT", "1") == "0"' in inspect.getsource(output.get_air_verbosity)
    source = inspect.getsource(callback._create_default_callbacks)
    assert "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS" in source and "has_trial_progress_callback" in source
    for name in raycompat.NOISY_LOGGERS:  # the loggers silenced exist under these names
        assert (ray_root.parent / (name.replace(".", "/") + ".py")).is_file(), name
    # a worker killed or a node lost is not a RayTaskError; what the trainable raised is
    assert not issubclass(rex.ActorDiedError, rex.RayTaskError) and not issubclass(rex.NodeDiedError, rex.RayTaskError)
    assert raycompat.lost_worker(rex.ActorDiedError()) and raycompat.lost_worker(rex.WorkerCrashedError())
    wrapped = rex.RayTaskError("trial", "Traceback ...", RuntimeError("bad data"))
    assert not raycompat.lost_worker(wrapped)


def test_the_stopper_ends_the_run_only_once_interrupted_and_no_trial_is_running(tmp_path):
    stopper = raycompat.StopWhenInterrupted(tmp_path)
    t = SimpleNamespace(trial_id="a")
    stopper.on_trial_start(0, [], t)
    assert not stopper.stop_all()
    (tmp_path / "stop").write_text("15\n")
    assert not stopper.stop_all()  # a trial is still stopping its run
    stopper.on_trial_complete(0, [], t)
    assert stopper.stop_all() and stopper(t.trial_id, {}) is False


def _run_folder(root: Path, lr: str, seed: int, main: float, base: float = 0.5, task: str = "rte") -> Path:
    folder = root / "out" / "m" / "full" / task / "bitfit" / f"lr{lr}_seed{seed}"
    folder.mkdir(parents=True)
    metric = "accuracy"
    cfg = {"task_name": task, "fine_tune_type": "bitfit", "learning_rate": float(lr), "seed": seed, "epochs": 1,
           "model_name": "m", "output_path": str(folder)}
    (folder / "config.json").write_text(json.dumps({"config": cfg}))
    (folder / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "split": "dev", "loss": 0.6, metric: main}) + "\n")
    (folder / "results.json").write_text(json.dumps({
        "status": "complete", "best_epoch": 1, "best_main_metric": main, "best_dev": {"dev": {metric: main}},
        "baseline": {"dev": {"answer": "entailment", metric: base}}, "beats_baseline": main > base}))
    return folder


def test_the_best_rate_is_chosen_among_rates_that_beat_the_baseline_and_ties_are_named(tmp_path, monkeypatch):
    from bitfit.sweep.summary import best_rate_lines

    monkeypatch.chdir(tmp_path)
    paths = [_run_folder(tmp_path, "1e-4", 0, 0.50), _run_folder(tmp_path, "1e-3", 0, 0.45)]
    lines = best_rate_lines(paths)
    assert lines[1] == ("  bitfit on RTE (m, full training set): no learning rate beat the trivial baseline; best lr "
                        "0.0001 -> accuracy 0.5000 (always 'entailment': 0.5000)")
    paths += [_run_folder(tmp_path, "1e-2", 0, 0.60), _run_folder(tmp_path, "1e-1", 0, 0.60)]
    assert best_rate_lines(paths)[1] == ("  bitfit on RTE (m, full training set): lr 0.01 -> accuracy 0.6000 (1 seed) "
                                         "(always 'entailment': 0.5000); tied with lr 0.1 (the smaller is named)")


def test_progress_prints_epochs_warnings_and_a_heartbeat_with_the_best_metric_so_far():
    from bitfit.sweep.progress import HEARTBEAT_S, Progress

    now = [0.0]
    out = io.StringIO()
    paths = {"o/m/full/rte/bitfit/lr1e-3_seed0": 3, "o/m/full/rte/bitfit/lr1e-2_seed0": 3}
    p = Progress(paths, stream=out, clock=lambda: now[0], bar=False)
    a, b = (SimpleNamespace(config={"run": {"path": k}}) for k in paths)
    p.on_trial_start(0, [], a)
    p.on_trial_start(0, [], b)
    now[0] = 10.0
    p.on_trial_result(0, [], a, {"epoch": 1, "main": 0.61, "metric": "accuracy"})
    p.on_trial_result(0, [], b, {"epoch": 1, "main": 0.55, "metric": "accuracy"})
    assert out.getvalue().splitlines()[-1] == "epoch 1/3 full/rte/bitfit/lr1e-2_seed0: accuracy 0.5500"
    lines = len(out.getvalue().splitlines())
    now[0] = 10.0 + HEARTBEAT_S - 1
    p.on_step_end(0, [])
    assert len(out.getvalue().splitlines()) == lines  # nothing new within the interval
    now[0] = 10.0 + HEARTBEAT_S
    p.on_step_end(0, [])
    assert out.getvalue().splitlines()[-1].endswith("; best: full/rte/bitfit accuracy 0.6100")
    p.on_trial_result(0, [], a, {"warnings": ["best dev accuracy 0.6100 is not above ..."]})
    assert p.warning_lines() == ["warning: o/m/full/rte/bitfit/lr1e-3_seed0: best dev accuracy 0.6100 is not above ..."]
    assert out.getvalue().splitlines()[-1] == p.warning_lines()[0]
    p.best = {f"full/t{i}/bitfit": (0.5, "accuracy") for i in range(9)}  # a grid of many groups: the line stays short
    assert p.best_text().endswith("full/t5/bitfit accuracy 0.5000 (+3 more)")


def test_a_second_run_in_one_process_reports_its_own_cpu_peak_memory():
    """A reused Ray worker trains several runs in one process: each run's peak_memory_mb must be its own."""
    import numpy as np
    import torch

    from bitfit.devices import peak_memory_mb, reset_peak_memory

    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak resident size")
    cpu = torch.device("cpu")
    big = np.ones(400 * 2**20 // 8)  # 400 MB, touched
    big[:] = 2.0
    del big
    high = peak_memory_mb(cpu)
    reset_peak_memory(cpu)
    assert peak_memory_mb(cpu) < high - 300  # the earlier "run"'s 400 MB is not this one's peak
