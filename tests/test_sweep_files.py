"""python -m bitfit sweep on tasks given as files: a tasks: entry of the sweep file may be a mapping (name, train_file,
validation_file, ...) beside GLUE names. Its runs go to OUT/<model>/<size>/<name>/..., are the runs run_glue.py would
write, and the driver, the summary and ASHA know the task from each run's config.json (task_definition), never from
the files; a bad entry is one line and exit status 2 before Ray starts, with nothing written."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import WORDS
from test_cli import make_glue_dir, read_jsonl, run_cli
from test_sweep import snapshot, sweep

from bitfit import tasks
from bitfit.runstate import read_state
from bitfit.sweep.grid import Sweep, expand


def write_csv(folder: Path, seed: int = 0, n_train: int = 24, n_dev: int = 12, labels=("1", "2", "3")) -> Path:
    """train.csv and dev.csv with columns id, review, stars (classes ``labels``), from the tiny model's vocabulary."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = [f'{i},"{" ".join(rng.choice(WORDS[:30]) for _ in range(rng.randint(3, 9)))}",{labels[i % len(labels)]}'
                for i in range(n)]
        (folder / f"{split}.csv").write_text("id,review,stars\n" + "\n".join(rows) + "\n")
    return folder


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _no_seconds(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if "second" not in k} for r in rows]


# ---------------------------------------------------------------------------------------------
# the grid, without Ray


def test_a_task_given_as_files_becomes_per_trial_settings_and_a_folder_of_its_name():
    entry = {"name": "reviews", "train_file": "data/train.csv", "validation_file": "data/dev.csv",
             "text_columns": "review", "label_column": "stars", "main_metric": "macro_f1"}
    sweep_ = Sweep.from_dict({"tasks": ["RTE", entry, "rte"], "methods": ["bitfit"], "learning_rates": [1e-3],
                              "settings": {"data_dir": "glue", "predict_test": True}}, out="o")
    assert sweep_.tasks == ["rte", "reviews"]
    rte, reviews = expand(sweep_)
    assert str(reviews.path) == "o/minilm/full/reviews/bitfit/lr1e-3_seed0"
    cfg = reviews.config()
    assert (cfg.task_name, cfg.train_file, cfg.validation_file, cfg.text_columns, cfg.label_column, cfg.main_metric) \
        == ("reviews", "data/train.csv", "data/dev.csv", ["review"], "stars", "macro_f1")
    # GLUE's folder and --predict-test are the GLUE task's; a task of one's own predicts only a test file it has
    assert (cfg.data_dir, cfg.predict_test, cfg.test_file) == (None, False, None)
    assert (rte.config().data_dir, rte.config().predict_test, rte.config().train_file) == ("glue", True, None)
    with_test = dict(entry, test_file="data/test.csv")
    (trial,) = expand(Sweep.from_dict({"tasks": [with_test], "methods": ["bitfit"], "learning_rates": [1e-3]}, out="o"))
    assert (trial.config().test_file, trial.config().predict_test) == ("data/test.csv", True)


def test_dry_run_lists_the_runs_of_a_task_given_as_files(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_yaml(tmp_path / "s.yaml", "tasks:\n  - rte\n  - {name: reviews, train_file: data/train.csv, "
               "validation_file: data/dev.csv}\nmethods: [bitfit]\nlearning_rates: [1e-3]\nseeds: [0, 1]\n")
    capsys.readouterr()
    assert sweep("--config", "s.yaml", "-o", "out", "--dry-run") == 0
    printed = capsys.readouterr()
    rows = [line.split("\t") for line in printed.out.splitlines()]
    assert [r[2] for r in rows[:-1]] == ["out/minilm/full/rte/bitfit/lr1e-3_seed0",
                                         "out/minilm/full/reviews/bitfit/lr1e-3_seed0",
                                         "out/minilm/full/rte/bitfit/lr1e-3_seed1",
                                         "out/minilm/full/reviews/bitfit/lr1e-3_seed1"]
    assert rows[-1] == ["4 runs: 4 to start"]
    # the files are not there yet: a real sweep would stop, and the dry run says why, naming the task
    assert "task 'reviews' of the sweep: train_file 'data/train.csv': not found" in printed.err
    assert not (tmp_path / "out").exists()


def test_a_sweep_of_tasks_given_as_files_only_demands_no_glue_data_dir(tmp_path, capsys, monkeypatch, tiny_bert_dir):
    import bitfit.sweep.driver as driver

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GLUE_DIR", str(tmp_path / "no_such_glue"))  # GLUE's folder, absent: not this sweep's concern
    write_csv(tmp_path / "data")
    write_yaml(tmp_path / "s.yaml", "tasks: [{name: reviews, train_file: data/train.csv, validation_file: "
               "data/dev.csv}]\nmethods: [bitfit]\nlearning_rates: [1e-3]\n")
    started = []
    monkeypatch.setattr(driver, "run_sweep", lambda to_run, *a, **k: started.append(to_run) or driver.SweepResult())
    capsys.readouterr()
    sweep("--config", "s.yaml", "-o", "out", "-m", tiny_bert_dir)
    assert "data dir" not in capsys.readouterr().err
    assert [p.trial.settings["task_name"] for p in started[0]] == ["reviews"]
    assert started[0][0].trial.config().data_dir is None


CSV_TASK = "{name: reviews, train_file: data/train.csv, validation_file: data/dev.csv"


@pytest.mark.parametrize("tasks_yaml, words", [
    (CSV_TASK + ", label: stars}]", "has a task with unknown key 'label'; accepted: name, train_file, validation_file, "
                                    "test_file, text_columns, label_column, id_column, task_type, main_metric"),
    ("{train_file: data/train.csv, validation_file: data/dev.csv}]", "has a task without a name"),
    ("{name: reviews, validation_file: data/dev.csv}]", "task 'reviews' in the sweep's tasks has no train_file"),
    ("{name: reviews, train_file: data/train.csv}]", "task 'reviews' in the sweep's tasks has no validation_file"),
    ("{name: RTE, train_file: data/train.csv, validation_file: data/dev.csv}]", "'RTE' is GLUE's RTE; accepted: the "
                                                                                "name alone (- rte)"),
    ("{name: my reviews, train_file: data/train.csv, validation_file: data/dev.csv}]", "'my reviews' for your files "
                                                                                       "is not a plain name"),
    ("{name: [a], train_file: data/train.csv, validation_file: data/dev.csv}]", "has a task named ['a']"),
    (CSV_TASK + ", text_columns: [a, b, c]}]", "has text_columns ['a', 'b', 'c']; accepted: one column name, or a list of two"),
    (CSV_TASK + ", label_column: 3}]", "has label_column 3; accepted: a column name (text)"),
    (CSV_TASK + ", main_metric: mse}]", "has main_metric 'mse'; accepted: accuracy, macro_f1 or mcc (classification), "
                                        "pearson or spearmanr (regression)"),
    (CSV_TASK + ", task_type: ordinal}]", "has task_type 'ordinal'; accepted: classification or regression"),
    ("rte, 3]", "sweep key 'tasks' has 3; accepted: GLUE task names, or a task of your own as a mapping"),
    ("[rte]]", "sweep key 'tasks' has ['rte']; accepted: GLUE task names"),
    ("reviews]", "task 'reviews' is not a GLUE task; accepted: cola, sst2"),
    (CSV_TASK + "}, " + CSV_TASK + ", label_column: stars}]", "has two tasks named 'reviews'; accepted: one entry per name"),
    ("{name: reviews, train_file: data/missing.csv, validation_file: data/dev.csv}]",
     "task 'reviews' of the sweep: train_file 'data/missing.csv': not found"),
    ("{name: reviews, train_file: data/train.csv, validation_file: data/folder.csv}]",
     "task 'reviews' of the sweep: validation_file 'data/folder.csv': a folder"),
    ("{name: reviews, train_file: data/train.txt, validation_file: data/dev.csv}]", "data/train.txt"),
])
def test_a_bad_task_entry_is_one_line_exit_2_and_nothing_written(tasks_yaml, words, tmp_path, capsys, monkeypatch,
                                                                 tiny_bert_dir):
    import bitfit.sweep.driver as driver

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(driver, "run_sweep", lambda *a, **k: pytest.fail("a bad task entry, yet Ray was started"))
    write_csv(tmp_path / "data")
    (tmp_path / "data" / "train.txt").write_text("review,stars\na,1\n")
    (tmp_path / "data" / "folder.csv").mkdir()
    write_yaml(tmp_path / "s.yaml", f"tasks: [{tasks_yaml}\nmethods: [bitfit]\nlearning_rates: [1e-3]\n")
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert sweep("--config", "s.yaml", "-o", "out", "-m", tiny_bert_dir) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and words in err, err
    assert snapshot(tmp_path) == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, words", [
    (["--tasks", "reviews"], "task 'reviews' is not a GLUE task; accepted: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli (GLUE spellings "
                             "such as SST-2, STS-B also work); a task of your own given as files goes in the sweep "
                             "file's tasks: as a mapping"),
    (["--tasks", "rte", "--train-file", "data/train.csv"], "setting 'train_file' (--train-file) belongs to one task of "
                                                           "the sweep; accepted: a task of your own as a mapping in the "
                                                           "sweep file's tasks:"),
    (["--tasks", "rte", "--label-column", "stars"], "setting 'label_column' (--label-column) belongs to one task"),
])
def test_tasks_given_as_files_go_in_the_sweep_file_not_on_the_command_line(argv, words, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert sweep(*argv, "--methods", "bitfit", "--learning-rates", "1e-3", "-o", "out") == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and words in err and "tasks:" in err, err
    assert list(tmp_path.iterdir()) == []


def test_file_settings_in_the_sweep_files_settings_are_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_yaml(tmp_path / "s.yaml", "tasks: [rte]\nmethods: [bitfit]\nlearning_rates: [1e-3]\n"
               "settings: {validation_file: dev.csv}\n")
    capsys.readouterr()
    assert sweep("--config", "s.yaml", "-o", "out") == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "setting 'validation_file' (--validation-file) belongs to one task" in err


def test_asha_knows_a_task_given_as_files_from_the_runs_config_not_from_this_process(tmp_path, monkeypatch):
    from bitfit.errors import UserError
    from bitfit.sweep.asha import decide

    monkeypatch.setattr(tasks, "_DEFINED", {})
    group = tmp_path / "m" / "full" / "tickets" / "bitfit"
    for name, value in (("lr1e-4_seed0", 0.3), ("lr1e-3_seed0", 0.7)):  # accuracy alike, macro_f1 apart
        (group / name).mkdir(parents=True)
        row = {"epoch": 1, "split": "dev", "accuracy": 0.9, "macro_f1": value}
        (group / name / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    run = group / "lr7e-4_seed0"
    run.mkdir()
    definition = {"name": "tickets", "labels": ["neg", "pos"], "text_fields": ["review"],
                  "metrics": ["macro_f1", "accuracy", "mcc"]}
    (run / "config.json").write_text(json.dumps({"config": {"task_name": "tickets"}, "task_definition": definition}))
    assert "dev macro_f1 0.4500 is below the median 0.5000 of the 2 other runs" in decide(run, "tickets", 1, 0.45, 4)
    assert decide(run, "tickets", 1, 0.55, 4) is None
    monkeypatch.setattr(tasks, "_DEFINED", {})
    with pytest.raises(UserError, match="unknown task 'tickets'"):  # no config.json, and no GLUE task of that name
        decide(group / "lr1e-2_seed0", "tickets", 1, 0.4, 4)


# ---------------------------------------------------------------------------------------------
# real sweeps through embedded Ray (tiny random model, CPU)


MIXED = ("tasks:\n  - rte\n  - {name: reviews, train_file: data/train.csv, validation_file: data/dev.csv, "
         "text_columns: [review], label_column: stars, main_metric: macro_f1}\n"
         "methods: [bitfit]\nlearning_rates: [1e-2]\nsettings: {data_dir: glue}\n")
FLAGS = ["-e", "2", "--no-verbose", "--max-concurrent", "2"]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, tiny_bert_dir):
    """One sweep over GLUE's RTE (a data dir) and a CSV task (paths relative to where the sweep starts)."""
    import os

    root = tmp_path_factory.mktemp("sweep_files")
    make_glue_dir(root / "glue")
    write_csv(root / "data")
    write_yaml(root / "s.yaml", MIXED)
    here = os.getcwd()
    os.chdir(root)
    try:
        rc = sweep("--config", "s.yaml", "-o", "out", "-m", tiny_bert_dir, *FLAGS)
    finally:
        os.chdir(here)
    return root, rc


def test_a_sweep_trains_a_glue_task_and_a_task_given_as_files_as_run_glue_would(mixed, tiny_bert_dir, tmp_path,
                                                                                monkeypatch):
    root, rc = mixed
    assert rc == 0
    base = root / "out" / tiny_bert_dir.name / "full"
    rte, reviews = base / "rte" / "bitfit" / "lr1e-2_seed0", base / "reviews" / "bitfit" / "lr1e-2_seed0"
    assert read_state(rte).status == "complete" and read_state(reviews).status == "complete"
    saved = json.loads((reviews / "config.json").read_text())
    assert saved["task_definition"] == {"name": "reviews", "labels": ["1", "2", "3"], "text_fields": ["review"],
                                        "metrics": ["macro_f1", "accuracy", "mcc"]}
    assert (saved["config"]["train_file"], saved["config"]["data_dir"]) == ("data/train.csv", None)
    rte_saved = json.loads((rte / "config.json").read_text())
    assert rte_saved["task_definition"] is None and rte_saved["config"]["data_dir"] == "glue"
    dev = [r for r in read_jsonl(reviews / "metrics.jsonl") if r["split"] == "dev"]
    assert [r["epoch"] for r in dev] == [1, 2] and all({"macro_f1", "accuracy", "mcc"} <= set(r) for r in dev)
    # the same run through run_glue.py writes the same epochs
    monkeypatch.chdir(root)
    ref = tmp_path / "ref"
    assert run_cli("-t", "reviews", "--train-file", "data/train.csv", "--validation-file", "data/dev.csv",
                   "--text-columns", "review", "--label-column", "stars", "--main-metric", "macro_f1", "-l", "1e-2",
                   "-e", 2, "-m", tiny_bert_dir, "-o", ref, "--no-verbose") == 0
    assert _no_seconds(read_jsonl(reviews / "metrics.jsonl")) == _no_seconds(read_jsonl(ref / "metrics.jsonl"))


def test_the_summary_knows_a_task_given_as_files_from_its_runs_config(mixed, tiny_bert_dir, capsys, monkeypatch):
    import bitfit.sweep.driver as driver

    root, _ = mixed
    monkeypatch.chdir(root)
    monkeypatch.setattr(tasks, "_DEFINED", {})  # a fresh driver: it never read the files, nor ran the task
    monkeypatch.setattr(driver, "run_sweep", lambda *a, **k: pytest.fail("nothing to train, yet Ray was started"))
    before = snapshot(root / "out")
    capsys.readouterr()
    assert sweep("--config", "s.yaml", "-o", "out", "-m", tiny_bert_dir, *FLAGS, "--dry-run") == 0
    assert capsys.readouterr().out.splitlines()[-1] == "2 runs: 2 complete (skipped)"
    assert sweep("--config", "s.yaml", "-o", "out", "-m", tiny_bert_dir, *FLAGS) == 0
    out = capsys.readouterr().out
    assert "sweep: 0 done, 2 skipped (complete before)" in out
    line = next(ln for ln in out.splitlines() if "bitfit on reviews" in ln)
    results = json.loads((root / "out" / tiny_bert_dir.name / "full" / "reviews" / "bitfit" / "lr1e-2_seed0"
                          / "results.json").read_text())
    base = results["baseline"]["dev"]
    assert f"-> macro_f1 {results['best_main_metric']:.4f}" in line or "no learning rate beat" in line, line
    assert f"(always {base['answer']!r}: {base['macro_f1']:.4f})" in line, line
    assert "bitfit on RTE" in out and "left out" not in out
    assert snapshot(root / "out") == before


@pytest.mark.cluster  # a minute of ASHA sweeps: with the other sweep emulations (python -m pytest -m cluster)
def test_asha_cuts_runs_of_a_task_given_as_files_on_its_main_metric_and_a_plain_rerun_completes_them(
        tmp_path, tiny_bert_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_csv(tmp_path / "data", seed=1, labels=("neg", "pos"))
    write_yaml(tmp_path / "s.yaml", "tasks: [{name: tickets, train_file: data/train.csv, validation_file: data/dev.csv, "
               "text_columns: review, label_column: stars}]\nmethods: [bitfit]\nlearning_rates: [1e-3, 1e-2]\n")
    group = tmp_path / "out" / tiny_bert_dir.name / "full" / "tickets" / "bitfit"
    for name in ("lr5e-1_seed7", "lr6e-1_seed7"):  # two runs of the group recorded before, far ahead at epoch 1
        (group / name).mkdir(parents=True)
        (group / name / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "split": "dev", "accuracy": 1.0}) + "\n")
    argv = ["--config", "s.yaml", "-o", "out", "-m", tiny_bert_dir, "-e", "3", "--no-verbose", "--max-concurrent", "1"]
    capsys.readouterr()
    assert sweep(*argv, "--early-stop", "asha") == 0
    printed = capsys.readouterr().out
    runs = [group / "lr1e-3_seed0", group / "lr1e-2_seed0"]
    for run in runs:
        state = read_state(run)
        assert state.status == "stopped" and "stopped early after epoch 1 of 3: ASHA cut it at epoch 1: dev accuracy" \
            in state.reason and "below the median 1.0000 of the" in state.reason, state.reason
        assert f"stopped: {run.relative_to(tmp_path)}: stopped early after epoch 1 of 3" in printed
    assert "0 done, 2 stopped" in printed
    # run again without --early-stop (a driver that does not know the task yet): the cut runs are trained to the end
    monkeypatch.setattr(tasks, "_DEFINED", {})
    capsys.readouterr()
    assert sweep(*argv) == 0
    printed = capsys.readouterr()
    assert "2 to resume" in printed.err and "sweep: 2 done" in printed.out
    assert all(read_state(run).status == "complete" for run in runs)
    assert [r["epoch"] for r in read_jsonl(runs[0] / "metrics.jsonl") if r["split"] == "dev"] == [1, 2, 3]
    assert "bitfit on tickets" in printed.out and "accuracy" in printed.out
