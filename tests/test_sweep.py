"""python -m bitfit sweep: the grid, presets, YAML, planning from run states, and real sweeps through
embedded Ray whose run folders equal single run_glue.py runs; reruns train nothing; damaged runs are
resumed or restarted; a failing trial is reported while the others finish."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file
from test_cli import make_glue_dir, read_jsonl, run_cli

from bitfit.cli import main
from bitfit.errors import UserError
from bitfit.runstate import read_state
from bitfit.sweep.grid import Sweep, expand, lr_text, parse_method
from bitfit.sweep.presets import preset


def sweep(*argv) -> int:
    return main(["sweep", *map(str, argv)])


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under root: its bytes and mtime (ns)."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file() and ".tune" not in p.parts}


# ---------------------------------------------------------------------------------------------
# the grid, without Ray


def test_learning_rates_methods_and_the_run_folder_tree():
    assert [lr_text(x) for x in ("1e-3", 0.001, "0.0001", 2e-5, "7e-4", 1.5e-3)] == ["1e-3", "1e-3", "1e-4", "2e-5",
                                                                                    "7e-4", "1.5e-3"]
    assert parse_method("bitfit:query,intermediate").folder == "bitfit_query_intermediate"
    assert parse_method("full_ft").folder == "full_ft"
    for bad in ("bogus", "full_ft:query", "bitfit:nope"):
        with pytest.raises(UserError):
            parse_method(bad)
    trials = expand(Sweep.from_dict({"tasks": ["RTE"], "methods": ["bitfit", "bitfit:query"],
                                     "learning_rates": [1e-3], "seeds": [0, 1], "sizes": ["full", 100]}, out="o"))
    assert [str(t.path) for t in trials][:3] == ["o/minilm/full/rte/bitfit/lr1e-3_seed0",
                                                 "o/minilm/full/rte/bitfit_query/lr1e-3_seed0",
                                                 "o/minilm/n100/rte/bitfit/lr1e-3_seed0"]
    assert len(trials) == 8 and trials[-1].settings["max_train_samples"] == 100
    assert trials[1].config().bias_terms == ["query"]


def test_presets_hold_the_papers_grids():
    def count(name):
        return len(expand(Sweep.from_dict(preset(name), out="o")))

    assert (count("table2"), count("table3"), count("data-size"), count("bias-change")) == (192, 768, 216, 2)
    t2 = expand(Sweep.from_dict(preset("table2"), out="o"))
    full = [t for t in t2 if t.settings["fine_tune_type"] == "full_ft"]
    assert {t.settings["learning_rate"] for t in full} == {1e-5, 2e-5, 3e-5, 5e-5}
    assert {t.settings["epochs"] for t in full} == {3}
    assert {t.settings["epochs"] for t in t2 if t.settings["fine_tune_type"] == "bitfit"} == {16}
    assert {t.settings["batch_size"] for t in t2} == {8}


def _dry(capsys, *argv) -> list[list[str]]:
    capsys.readouterr()
    assert sweep(*argv, "--dry-run") == 0
    return [line.split("\t") for line in capsys.readouterr().out.splitlines()]


def test_yaml_file_then_flags_override_it(tmp_path, capsys):
    (tmp_path / "s.yaml").write_text(
        "tasks: [rte, stsb]\nseeds: [0, 1]\nlearning_rates: [1e-3]\nepochs: 5\n"
        "methods:\n  bitfit: {learning_rates: [1.0e-4, 1.0e-3]}\n  full_ft: {learning_rates: [2.0e-5], epochs: 3}\n"
        "settings: {batch_size: 4, max_seq_length: 64}\n")
    rows = _dry(capsys, "--config", tmp_path / "s.yaml", "-o", tmp_path / "out")
    assert rows[-1] == ["12 runs: 12 to start"]
    rows = _dry(capsys, "--config", tmp_path / "s.yaml", "-o", tmp_path / "out", "--tasks", "rte", "--seeds", "3",
                "--methods", "full_ft", "bitfit:query", "--method-learning-rates", "bitfit:query=1e-2", "-e", "2")
    assert [r[2] for r in rows[:-1]] == [f"{tmp_path}/out/minilm/full/rte/full_ft/lr2e-5_seed3",
                                         f"{tmp_path}/out/minilm/full/rte/bitfit_query/lr1e-2_seed3"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, words", [
    (["--tasks", "rte", "--methods", "bogus", "--learning-rates", "1e-3"], "unknown method 'bogus'"),
    (["--tasks", "nope", "--methods", "bitfit", "--learning-rates", "1e-3"], "nope"),
    (["--tasks", "rte", "--methods", "bitfit", "--learning-rates", "2"], "out of range"),
    (["--tasks", "rte", "--methods", "bitfit", "--learning-rates", "1e-3", "--sizes", "0"], "training-set size"),
    (["--tasks", "rte", "--methods", "bitfit"], "no learning rates"),
    (["--methods", "bitfit", "--learning-rates", "1e-3"], "needs tasks"),
    (["--preset", "table2", "--method-epochs", "bitfit:query=2"], "does not have"),
    (["--preset", "table2", "-b", "0"], "batch size"),
    (["--preset", "table2", "--gpus-per-run", "-1"], "--gpus-per-run"),
    (["--preset", "table2", "-l", "1e-3"], "unrecognized arguments"),
    (["--preset", "table9"], "invalid choice"),
    (["--config", "missing.yaml"], "cannot read sweep file"),
])
def test_bad_flags_are_one_line_exit_2_and_nothing_written(argv, words, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert sweep(*argv, "-o", "out") == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and words in err, err
    assert list(tmp_path.iterdir()) == []


def _fake_run(folder: Path, status: str, checkpoint: bool = False) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"config": {"epochs": 2, "task_name": "rte"}}))
    if status:
        (folder / "results.json").write_text(json.dumps({"status": status, "best_epoch": 1, "best_main_metric": 0.5,
                                                         "message": "non-finite loss (nan) at epoch 1"}))
    if checkpoint:
        (folder / "checkpoint").mkdir()
        (folder / "checkpoint" / "state.json").write_text(json.dumps({"epoch": 1}))


def test_dry_run_lists_every_run_its_state_and_action_and_writes_nothing(tmp_path, capsys):
    base = tmp_path / "out" / "minilm" / "full" / "rte" / "bitfit"
    _fake_run(base / "lr1e-4_seed0", "complete")
    _fake_run(base / "lr4e-4_seed0", "", checkpoint=True)
    _fake_run(base / "lr7e-4_seed0", "diverged")
    _fake_run(base / "lr1e-3_seed0", "")
    before = snapshot(tmp_path)
    args = ["--preset", "table2", "--tasks", "rte", "--seeds", "0", "-o", tmp_path / "out"]
    rows = _dry(capsys, *args)
    actions = {Path(r[2]).name: (r[0], r[1]) for r in rows[:-1] if "/bitfit/" in r[2]}
    assert actions == {"lr1e-4_seed0": ("skip", "complete"), "lr4e-4_seed0": ("resume", "interrupted"),
                       "lr7e-4_seed0": ("skip-diverged", "diverged"), "lr1e-3_seed0": ("overwrite", "broken")}
    assert "non-finite loss" in next(r[3] for r in rows if r[2].endswith("lr7e-4_seed0"))
    assert rows[-1] == ["8 runs: 1 complete (skipped), 1 diverged (skipped; --retry-diverged runs them again), "
                        "1 to resume, 1 to restart, 4 to start"]
    rows = _dry(capsys, *args, "--retry-diverged")
    assert next(r[0] for r in rows if r[2].endswith("lr7e-4_seed0")) == "overwrite"
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------------
# real sweeps through embedded Ray (tiny random model, CPU)


GRID = ["--tasks", "rte", "--methods", "bitfit", "full_ft", "--learning-rates", "1e-3", "1e-2", "-e", "2",
        "--max-concurrent", "2", "--no-verbose", "--keep-checkpoint"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory, tiny_bert_dir):
    root = tmp_path_factory.mktemp("sweep")
    glue = make_glue_dir(root / "glue")
    rc = sweep(*GRID, "-m", tiny_bert_dir, "--data-dir", glue, "-o", root / "out")
    return root, glue, rc


def _runs(root: Path, model: Path) -> dict[tuple[str, str], Path]:
    base = root / "out" / model.name / "full" / "rte"
    return {(m, lr): base / m / f"lr{lr}_seed0" for m in ("bitfit", "full_ft") for lr in ("1e-3", "1e-2")}


def _no_seconds(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if "second" not in k} for r in rows]


def test_a_2x2_sweep_writes_the_runs_run_glue_would(swept, tiny_bert_dir, tmp_path):
    root, glue, rc = swept
    assert rc == 0
    for (method, lr), folder in _runs(root, tiny_bert_dir).items():
        assert json.loads((folder / "results.json").read_text())["status"] == "complete"
        ref = tmp_path / f"{method}_{lr}"
        assert run_cli("-t", "rte", "-f", method, "-l", lr, "-e", 2, "-m", tiny_bert_dir, "--data-dir", glue,
                       "-o", ref, "--no-verbose") == 0
        assert _no_seconds(read_jsonl(folder / "metrics.jsonl")) == _no_seconds(read_jsonl(ref / "metrics.jsonl"))
        mine, theirs = load_file(folder / "delta.safetensors"), load_file(ref / "delta.safetensors")
        assert mine.keys() == theirs.keys() and all((mine[k] == theirs[k]).all() for k in mine)


def test_running_the_sweep_again_trains_nothing_and_touches_nothing(swept, tiny_bert_dir, capsys, monkeypatch):
    root, glue, _ = swept
    import bitfit.sweep.driver as driver

    monkeypatch.setattr(driver, "run_sweep", lambda *a, **k: pytest.fail("nothing to train, yet Ray was started"))
    before = snapshot(root / "out")
    capsys.readouterr()
    assert sweep(*GRID, "-m", tiny_bert_dir, "--data-dir", glue, "-o", root / "out") == 0
    out = capsys.readouterr()
    assert "4 runs: 4 complete (skipped)" in out.err and "sweep: 0 done, 4 skipped (complete before)" in out.out
    assert "bitfit on RTE" in out.out and "best learning rate" in out.out
    assert snapshot(root / "out") == before


def test_rerun_resumes_interrupted_restarts_broken_and_reports_a_failing_trial(swept, tiny_bert_dir, capsys):
    root, glue, _ = swept
    work = root / "rerun"
    shutil.copytree(root / "out", work)
    runs = _runs(root, tiny_bert_dir)
    moved = {k: work / v.relative_to(root / "out") for k, v in runs.items()}
    for name in ("results.json", "delta.safetensors"):  # interrupted after its last epoch's checkpoint
        (moved["bitfit", "1e-3"] / name).unlink()
    (moved["full_ft", "1e-2"] / "config.json").write_text("{not json")  # broken
    untouched = snapshot(moved["bitfit", "1e-2"])
    capsys.readouterr()
    rc = sweep(*GRID[:1], "rte", "mrpc", *GRID[2:], "-m", tiny_bert_dir, "--data-dir", glue, "-o", work)
    out = capsys.readouterr()
    assert rc == 1  # mrpc has no data in this folder: that trial fails, the others finish
    assert "1 to resume, 1 to restart, 4 to start" in out.err
    assert "failed: " in out.out and "MRPC" in out.out
    assert "sweep: 2 done, 4 failed, 2 skipped (complete before)" in out.out
    for key in (("bitfit", "1e-3"), ("full_ft", "1e-2")):
        assert json.loads((moved[key] / "results.json").read_text())["status"] == "complete"
        assert _no_seconds(read_jsonl(moved[key] / "metrics.jsonl")) == _no_seconds(read_jsonl(runs[key] / "metrics.jsonl"))
    assert snapshot(moved["bitfit", "1e-2"]) == untouched


def test_asha_stops_hopeless_runs_which_the_report_marks_and_never_counts(tiny_bert_dir, tmp_path, capsys):
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
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO

    glue = make_glue_dir(tmp_path / "glue")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "bitfit", "sweep", "--tasks", "rte", "--methods", "bitfit", "full_ft",
           "--learning-rates", "1e-3", "1e-2", "-e", "20", "-m", str(tiny_bert_dir), "--data-dir", str(glue),
           "-o", str(out), "--no-verbose"]
    env = os.environ | {"PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not list(out.glob("*/full/rte/*/*/checkpoint/state.json")) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    printed = proc.communicate(timeout=120)[0]
    assert proc.returncode in (0, 1), printed
    folders = sorted(out.glob("*/full/rte/*/*"))
    states = {f: read_state(f).status for f in folders}
    assert set(states.values()) <= {"complete", "interrupted", "broken"}, states
    assert all(read_state(f).running is None for f in folders)
    done = {f: snapshot(f) for f, s in states.items() if s == "complete"}
    rc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert rc.returncode == 0, rc.stdout + rc.stderr
    assert len(list(out.glob("*/full/rte/*/*"))) == 4
    assert all(read_state(f).status == "complete" for f in out.glob("*/full/rte/*/*"))
    assert all(snapshot(f) == before for f, before in done.items())
