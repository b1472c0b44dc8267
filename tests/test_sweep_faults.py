"""python -m bitfit sweep under faults and at scale, each a real sweep through Ray: the driver stopped
with SIGTERM, a trial's worker killed with SIGKILL, a diverging trial, ASHA cutting hopeless runs, and
one sweep over two Ray nodes through --address. Marked ``cluster`` (python -m pytest -m cluster), as
the other emulations of GPU boxes and clusters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import make_glue_dir, read_jsonl
from test_sweep import snapshot, sweep

from bitfit.runstate import read_state

pytestmark = pytest.mark.cluster  # minutes of real Ray sweeps under faults: CI runs them after the default suite


def test_asha_stops_hopeless_runs_which_the_report_marks_and_never_counts(tiny_bert_dir, tmp_path, capsys,
                                                                          monkeypatch):
    # without --address the sweep starts a Ray of its own: a RAY_ADDRESS left in the environment (here one where
    # nothing listens) is not joined, as plain ray.init() would try to
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
    glue = make_glue_dir(tmp_path / "glue")
    out = tmp_path / "out"
    rc = sweep("--tasks", "stsb", "--methods", "bitfit", "--learning-rates", "1e-4", "1e-3", "1e-2", "1e-1", "-e", "4",
               "-m", tiny_bert_dir, "--data-dir", glue, "-o", out, "--no-verbose", "--early-stop", "asha",
               "--report-dir", tmp_path / "report")
    printed = capsys.readouterr().out
    assert rc == 0
    states = {p.name: read_state(p) for p in (out / tiny_bert_dir.name / "full" / "stsb" / "bitfit").iterdir()}
    stopped = {n: s for n, s in states.items() if s.status == "stopped"}
    assert stopped and len(stopped) < 4 and {s.status for s in states.values()} <= {"stopped", "complete"}
    for name, s in stopped.items():
        epoch = s.results["completed_epochs"]
        assert 1 <= epoch < 4 and f"stopped early after epoch {epoch} of 4" in s.reason
        assert f"stopped: {out / tiny_bert_dir.name / 'full' / 'stsb' / 'bitfit' / name}" in printed
    assert f"{4 - len(stopped)} done, {len(stopped)} stopped" in printed
    report = (tmp_path / "report" / "README.md").read_text()
    for name in stopped:
        line = next(ln for ln in report.splitlines() if name in ln)
        assert "stopped early after epoch" in line


def test_sigterm_to_the_driver_stops_cleanly_and_the_rerun_finishes_only_what_is_left(tiny_bert_dir, tmp_path):
    import signal
    import time

    glue = make_glue_dir(tmp_path / "glue")
    out = tmp_path / "out"
    argv = ["--tasks", "rte", "--methods", "bitfit", "full_ft", "--learning-rates", "1e-3", "1e-2", "-e", "20",
            "-m", tiny_bert_dir, "--data-dir", glue, "-o", out, "--no-verbose"]
    proc = _sweep_process(argv, tmp_path)
    deadline = time.time() + 120
    while not list(out.glob("*/full/rte/*/*/checkpoint/state.json")) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    printed = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, printed  # 128 + SIGTERM, as a run stopped by it
    assert "Tuner.restore" not in printed and "Traceback" not in printed
    folders = sorted(out.glob("*/full/rte/*/*"))
    states = {f: read_state(f).status for f in folders}
    assert set(states.values()) <= {"complete", "interrupted", "broken"} and "interrupted" in states.values(), states
    for f, status in states.items():  # each running trial stopped through the run's own interrupt path
        assert read_state(f).running is None and not (f / ".bitfit.lock").exists()
        if status != "complete":
            results = json.loads((f / "results.json").read_text())
            assert results["status"] == "interrupted" and results["message"].startswith("SIGTERM during epoch")
    done = {f: snapshot(f) for f, s in states.items() if s == "complete"}
    rerun = _sweep_process(argv, tmp_path)
    printed = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, printed
    assert len(list(out.glob("*/full/rte/*/*"))) == 4
    assert all(read_state(f).status == "complete" for f in out.glob("*/full/rte/*/*"))
    assert all(snapshot(f) == before for f, before in done.items())


def test_a_diverging_trial_is_reported_with_its_reason_while_the_other_finishes_and_reports_to_tensorboard(
        tiny_bert_dir, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    glue = make_glue_dir(tmp_path / "glue")
    out = tmp_path / "out"
    # decoupled weight decay 1e5 multiplies the trained weights by (1 - lr * 1e5) each step: by -999 at lr 1e-2
    rc = sweep("--tasks", "rte", "--methods", "bitfit", "--learning-rates", "1e-6", "1e-2", "-e", "3",
               "--weight-decay", "1e5", "--report-to", "tensorboard", "-m", tiny_bert_dir, "--data-dir", glue,
               "-o", out, "--no-verbose")
    printed = capsys.readouterr()
    assert rc == 1
    base = out / tiny_bert_dir.name / "full" / "rte" / "bitfit"
    assert read_state(base / "lr1e-2_seed0").status == "diverged"
    assert f"failed: {base / 'lr1e-2_seed0'}: non-finite loss (nan) at epoch" in printed.out
    assert "lower --learning-rate (or --weight-decay, now 100000)" in printed.out
    assert "sweep: 1 done, 1 failed" in printed.out
    assert "sweep: 2/2 finished (1 failed), 0 running, 0 waiting" in printed.err  # the progress lines
    done = base / "lr1e-6_seed0"
    assert read_state(done).status == "complete"
    events = EventAccumulator(str(done / "tensorboard"))
    events.Reload()
    accuracy = [r["accuracy"] for r in read_jsonl(done / "metrics.jsonl") if r["split"] == "dev"]
    assert [e.value for e in events.Scalars("dev/accuracy")] == pytest.approx(accuracy)


def _sweep_process(argv: list, cwd: Path):
    import os
    import subprocess
    import sys

    from conftest import REPO

    env = os.environ | {"PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "bitfit", "sweep", *map(str, argv)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_trial_whose_worker_is_killed_is_run_again_and_resumes_from_its_folder(tiny_bert_dir, tmp_path):
    import os
    import signal
    import time

    glue = make_glue_dir(tmp_path / "glue")
    out = tmp_path / "out"
    argv = ["--tasks", "rte", "--methods", "bitfit", "--learning-rates", "1e-3", "1e-2", "-e", "12",
            "--max-concurrent", "1", "-m", tiny_bert_dir, "--data-dir", glue, "-o", out, "--no-verbose"]
    proc = _sweep_process(argv, tmp_path)
    base = out / tiny_bert_dir.name / "full" / "rte" / "bitfit"
    deadline, victim = time.time() + 180, None
    while victim is None and time.time() < deadline and proc.poll() is None:
        for folder in base.glob("*") if base.is_dir() else []:
            st = read_state(folder)
            if st.running and (folder / "checkpoint" / "state.json").exists():
                victim, pid, epoch = folder, int(st.running), st.checkpoint_epoch
                break
        time.sleep(0.1)
    assert victim is not None, "no trial reached a checkpoint"
    os.kill(pid, signal.SIGKILL)  # the Ray worker running the trial: no handler, no clean-up
    printed = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, printed
    assert all(read_state(f).status == "complete" for f in base.iterdir())
    assert f"{victim.name}: complete: best epoch" in printed and "(run again 1x after its worker was lost)" in printed
    rows = [r for r in read_jsonl(victim / "metrics.jsonl") if r["split"] == "dev"]
    assert [r["epoch"] for r in rows] == list(range(1, 13))  # resumed after its checkpoint, not started over
    assert "2 done" in printed
    untouched = {f: snapshot(f) for f in base.iterdir()}
    rerun = _sweep_process(argv, tmp_path)
    printed = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, printed
    assert "2 runs: 2 complete (skipped)" in printed
    assert all(snapshot(f) == before for f, before in untouched.items())


@pytest.fixture()
def two_ray_nodes():
    """A Ray head and a second node on this machine, 1 CPU each (Ray's own cluster test utility, which
    stops only the processes it started); the sweep joins them through --address."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        cluster.shutdown()


def test_one_sweep_runs_on_two_ray_nodes_through_address(two_ray_nodes, tiny_bert_dir, tmp_path, capsys):
    glue = make_glue_dir(tmp_path / "glue")
    out = tmp_path / "out"
    rc = sweep("--tasks", "rte", "--methods", "bitfit", "--learning-rates", "1e-3", "1e-2", "-e", "2",
               "--address", two_ray_nodes, "-m", tiny_bert_dir, "--data-dir", glue, "-o", out, "--no-verbose")
    assert rc == 0, capsys.readouterr()
    folders = list((out / tiny_bert_dir.name / "full" / "rte" / "bitfit").iterdir())
    assert len(folders) == 2 and all(read_state(f).status == "complete" for f in folders)
    saved = [json.loads((f / "config.json").read_text()) for f in folders]
    nodes = {s["ray"]["node_id"] for s in saved}
    from conftest import REPO

    for s in saved:  # the trials imported the copy of bitfit Ray shipped (runtime_env py_modules), not this checkout
        assert "runtime_resources" in s["environment"]["code"] and not s["environment"]["code"].startswith(str(REPO))
        assert s["environment"]["git_commit"]  # the driver's commit, passed along with the code
    assert len(nodes) == 2  # each node has 1 CPU and each trial takes 1: both ran at once, one per node
