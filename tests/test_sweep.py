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
    t1 = expand(Sweep.from_dict(preset("table1"), out="o"))
    assert len(t1) == 8 * (4 + 2 + 3 + 4 + 2) * 3
    grids = {}
    for t in t1:
        grids.setdefault(t.settings["fine_tune_type"], set()).add((t.settings["learning_rate"], t.settings["epochs"]))
    assert grids == {"full_ft": {(r, 3) for r in (1e-5, 2e-5, 3e-5, 5e-5)}, "adapters": {(r, 20) for r in (3e-5, 3e-4, 3e-3)},
                     "diff_prune": {(1e-5, 6), (5e-5, 6)},
                     "bitfit": {(r, 16) for r in (1e-4, 4e-4, 7e-4, 1e-3)}, "lora": {(4e-4, 30), (5e-4, 30)}}
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


def _epoch_rows(folder: Path, metric: str, values: list[float]) -> None:
    """A run folder's metrics.jsonl with the dev ``metric`` of epochs 1, 2, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"epoch": e, "split": "dev", "loss": 0.5, metric: v} for e, v in enumerate(values, 1)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_asha_ranks_a_run_only_against_its_own_task_and_method(tmp_path):
    from types import SimpleNamespace

    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    from bitfit.sweep.asha import decide, rungs

    assert (rungs(4), rungs(5), rungs(16), rungs(1)) == ([1, 2], [1, 2, 4], [1, 2, 4, 8], [])
    base = tmp_path / "out" / "m" / "full"
    # epoch 1, in this order: MRPC's F1 near 0.8, CoLA's MCC near 0.1; within each task one run is clearly worse
    arrivals = [("mrpc", "f1", "lr1e-3_seed0", 0.82), ("mrpc", "f1", "lr1e-4_seed0", 0.70),
                ("cola", "mcc", "lr1e-3_seed0", 0.15), ("cola", "mcc", "lr1e-4_seed0", 0.05)]
    grouped = {}
    for task, metric, name, value in arrivals:
        run = base / task / "bitfit" / name
        grouped[task, name] = decide(run, task, 1, value, epochs=4)
        _epoch_rows(run, metric, [value])  # what the run writes after the decision
    assert grouped["mrpc", "lr1e-3_seed0"] is None and grouped["cola", "lr1e-3_seed0"] is None  # first: never cut
    assert "below the median 0.8200 of the 1 other run" in grouped["mrpc", "lr1e-4_seed0"]
    assert "below the median 0.1500" in grouped["cola", "lr1e-4_seed0"]
    assert decide(base / "cola" / "bitfit" / "lr7e-4_seed0", "cola", 1, 0.15, 4) is None  # a tie is never cut
    assert decide(base / "cola" / "bitfit" / "lr7e-4_seed0", "cola", 3, 0.0, 4) is None  # epoch 3: no rung
    # one ASHA over the whole sweep (what Tune does unasked) would cut CoLA's best run for MRPC's scale
    flat = ASHAScheduler(metric="main", mode="max", time_attr="epoch", grace_period=1, reduction_factor=2, max_t=4)
    decisions = {}
    for task, _, name, value in arrivals:
        t = SimpleNamespace(trial_id=task + name, config={})
        flat.on_trial_add(None, t)
        decisions[task, name] = flat.on_trial_result(None, t, {"epoch": 1, "main": value})
    assert decisions["cola", "lr1e-3_seed0"] == TrialScheduler.STOP


def test_asha_ranks_a_resumed_run_against_the_whole_group_on_disk(tmp_path):
    from bitfit.sweep.asha import decide

    group = tmp_path / "m" / "full" / "stsb" / "bitfit"
    for name, values in {"lr1e-4_seed0": [0.2, 0.3, 0.4, 0.5], "lr1e-3_seed0": [0.6, 0.7, 0.8, 0.85]}.items():
        _epoch_rows(group / name, "pearson", values)  # complete runs of an earlier invocation
    (group / "lr1e-2_seed0").mkdir()
    (group / "lr1e-2_seed0" / "metrics.jsonl").write_text('{"epoch": 2, "split": "dev", "pears')  # being written
    resumed = group / "lr7e-4_seed0"
    # at epoch 2 the group recorded 0.3 and 0.7 (median 0.5); the half-written file counts for nothing
    assert "below the median 0.5000 of the 2 other runs" in decide(resumed, "stsb", 2, 0.45, epochs=4)
    assert decide(resumed, "stsb", 2, 0.55, epochs=4) is None


def test_progress_counts_trials_and_estimates_time_left_from_epochs():
    import io
    from types import SimpleNamespace

    from bitfit.sweep.progress import Progress, duration

    now = [0.0]
    out = io.StringIO()
    p = Progress({"a": 4, "b": 4, "c": 2}, stream=out, clock=lambda: now[0], bar=False)
    a, b, c = (SimpleNamespace(config={"run": {"path": k}}) for k in "abc")
    p.on_trial_start(0, [], a)
    p.on_trial_start(0, [], b)
    assert out.getvalue().splitlines()[-1] == "sweep: 0/3 finished, 2 running, 1 waiting; 0s elapsed"
    now[0] = 60.0
    p.on_trial_result(0, [], a, {"epoch": 1})
    p.on_trial_result(0, [], b, {"epoch": 1})  # 2 epochs in 60 s; 8 left (3 + 3 + c's 2)
    assert p.left_s() == pytest.approx(240.0)
    now[0] = 90.0
    p.on_trial_result(0, [], a, {"epoch": 2})
    p.on_trial_complete(0, [], a)  # cut by ASHA after 2 of 4: its last 2 epochs leave the count
    p.on_trial_error(0, [], b)
    p.on_trial_start(0, [], c)
    assert p.left_s() == pytest.approx(2 * 90.0 / 3)
    assert out.getvalue().splitlines()[-1] == "sweep: 2/3 finished (1 failed), 1 running, 0 waiting; 1m30s elapsed, " \
                                              "about 1m00s left"
    assert [duration(s) for s in (42, 312, 7500)] == ["42s", "5m12s", "2h05m"]


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


@pytest.mark.cluster  # a minute of Ray sweeps run again: with the other sweep emulations (python -m pytest -m cluster)
def test_rerun_resumes_interrupted_restarts_broken_and_reports_a_failing_trial(swept, tiny_bert_dir, capsys):
    root, glue, _ = swept
    work = root / "rerun"
    shutil.copytree(root / "out", work)
    (glue / "MRPC").mkdir(exist_ok=True)  # a training file and no dev file: passes the sweep's check, fails in its trial
    (glue / "MRPC" / "train.tsv").write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n")
    runs = _runs(root, tiny_bert_dir)
    moved = {k: work / v.relative_to(root / "out") for k, v in runs.items()}
    for name in ("results.json", "delta.safetensors"):  # interrupted after its last epoch's checkpoint
        (moved["bitfit", "1e-3"] / name).unlink()
    (moved["full_ft", "1e-2"] / "config.json").write_text("{not json")  # broken
    untouched = snapshot(moved["bitfit", "1e-2"])
    capsys.readouterr()
    rc = sweep(*GRID[:1], "rte", "mrpc", *GRID[2:], "-m", tiny_bert_dir, "--data-dir", glue, "-o", work)
    out = capsys.readouterr()
    assert rc == 1  # mrpc has no dev file: those trials fail, the others finish
    assert "1 to resume, 1 to restart, 4 to start" in out.err
    assert "has no MRPC/dev.tsv for task MRPC" in out.out and "run again" not in out.out  # its own error: not retried
    assert "Traceback" not in out.err  # the reason is one line in the summary; Tune's traceback is in .tune/
    assert "sweep: 2 done, 4 failed, 2 skipped (complete before)" in out.out
    for key in (("bitfit", "1e-3"), ("full_ft", "1e-2")):
        assert json.loads((moved[key] / "results.json").read_text())["status"] == "complete"
        assert _no_seconds(read_jsonl(moved[key] / "metrics.jsonl")) == _no_seconds(read_jsonl(runs[key] / "metrics.jsonl"))
    assert snapshot(moved["bitfit", "1e-2"]) == untouched
