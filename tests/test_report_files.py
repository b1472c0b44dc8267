"""The report on runs of tasks given as files (run_glue.py -t NAME --train-file ...): their rows beside GLUE's, their
own metrics and baselines, MSE as it is, the GLUE average without them, and runs that define a name differently."""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from bitfit.report import write_report
from bitfit.report.runs import collect
from conftest import REPO, WORDS
from test_cli import make_glue_dir, run_cli

DEV_STARS = ["pos"] * 6 + ["neg"] * 4 + ["meh"] * 2  # majority 'pos': accuracy 0.5, macro-F1 (1/3 of 2/3), MCC 0
DEV_SCORES = [0.5, 1.25, 2.0, 2.75, 3.5, 4.25, 4.5, 0.75, 1.5, 3.0]


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice([w for w in WORDS if w.isalpha()]) for _ in range(n))  # plain CSV cells: no ',' '"'


def _write_files(folder: Path) -> dict[str, Path]:
    """A 3-class CSV task, the same name's 2-class files, and a sentence-pair regression task in JSON Lines."""
    rng = random.Random(0)
    folder.mkdir(parents=True)
    files = {}
    for name, labels in {"train": ["pos", "neg", "meh"] * 8, "dev": DEV_STARS, "train2": ["pos", "neg"] * 12,
                         "dev2": ["pos", "neg"] * 4}.items():
        files[name] = folder / f"{name}.csv"
        files[name].write_text("review,stars\n" + "".join(f"{_sentence(rng, 5)},{y}\n" for y in labels))
    for name, scores in {"train": [round(rng.uniform(0, 5), 2) for _ in range(24)], "dev": DEV_SCORES}.items():
        files[f"{name}_jsonl"] = folder / f"{name}.jsonl"
        files[f"{name}_jsonl"].write_text("".join(json.dumps({"first": _sentence(rng, 4), "second": _sentence(rng, 3),
                                                              "score": y}) + "\n" for y in scores))
    return files


@pytest.fixture(scope="module")
def root(tmp_path_factory, tiny_bert_dir) -> Path:
    """runs/: RTE (GLUE), 'reviews' (classification from CSV, seeds 0 and 1), 'scores' (regression from JSON Lines),
    and a run of 'reviews' from a file with two classes only: another task under the same name."""
    root = tmp_path_factory.mktemp("report_files")
    files = _write_files(root / "data")
    runs = root / "runs"
    common = ("-m", tiny_bert_dir, "-e", 1, "--no-verbose", "-f", "bitfit")
    assert run_cli("-t", "rte", "--data-dir", make_glue_dir(root / "glue"), "--max-eval-samples", 8,
                   "-o", runs / "rte" / "s0", "-l", "1e-2", *common) == 0
    for seed in (0, 1):
        assert run_cli("-t", "reviews", "--train-file", files["train"], "--validation-file", files["dev"],
                       "--label-column", "stars", "-l", "1e-2", "-s", seed, "-o", runs / "reviews" / f"s{seed}",
                       *common) == 0
    assert run_cli("-t", "scores", "--train-file", files["train_jsonl"], "--validation-file", files["dev_jsonl"],
                   "--text-columns", "first", "second", "--label-column", "score", "-l", "1e-2",
                   "-o", runs / "scores" / "s0", *common) == 0
    assert run_cli("-t", "reviews", "--train-file", files["train2"], "--validation-file", files["dev2"],
                   "--label-column", "stars", "-l", "1e-2", "-s", 2, "-o", runs / "reviews_two", *common) == 0
    return root


def results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def table(text: str) -> dict[str, list[str]]:
    """The first results table of a README: first cell -> the row's cells (the header's under "method")."""
    lines = text.split("\n| method | % params |", 1)[1].split("\n\n", 1)[0].splitlines()
    rows = [("| method | % params |" + lines[0]).split(" | ")] + [line.split(" | ") for line in lines[2:]]
    return {r[0].lstrip("| "): [c.rstrip(" |") for c in r[1:]] for r in rows}


def skipped_reasons(text: str) -> dict[str, str]:
    rows = text.split("## Skipped runs", 1)[1].strip().splitlines()[2:]
    return dict(line.removeprefix("| ").removesuffix(" |").split(" | ", 1) for line in rows)


def x100(v: float) -> str:
    return f"{100 * v:.1f}"


def test_python_m_bitfit_report_shows_tasks_given_as_files_beside_glue(root, tmp_path):
    """A fresh process, which knows the tasks only from the runs' config.json (the report used to skip them)."""
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "bitfit", "report", "runs", "-o", str(tmp_path / "out"), "--no-verbose"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=root)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "out" / "README.md").read_text()
    rows = table(text)

    # GLUE's tasks first, then the tasks given as files by name, with their own metrics; the average is GLUE's only
    assert rows["method"] == ["% params", "% in layers", "RTE (acc)", "reviews (acc / macro-F1 / MCC)",
                              "scores (Pearson / Spearman / MSE)", "GLUE avg"]
    assert list(rows)[1:] == ["bitfit", "trivial baseline (majority class; STS-B, scores: a constant)"]
    rte, s0, s1 = (results(root / "runs" / r)["best_metrics"]["dev"] for r in ("rte/s0", "reviews/s0", "reviews/s1"))
    scores = results(root / "runs" / "scores" / "s0")["best_metrics"]["dev"]
    bitfit = rows["bitfit"]
    assert bitfit[2] == f"{x100(rte['accuracy'])} (1 seed)"  # 'reviews' has two
    assert bitfit[3] == " / ".join(f"{x100(statistics.mean([s0[m], s1[m]]))} ± {x100(statistics.stdev([s0[m], s1[m]]))}"
                                   for m in ("accuracy", "macro_f1", "mcc"))
    # MSE as it is, 4 significant digits: never ×100
    assert bitfit[4] == f"{x100(scores['pearson'])} / {x100(scores['spearmanr'])} / {scores['mse']:.4g} (1 seed)"
    assert scores["mse"] > 1 and x100(scores["mse"]) not in bitfit[4]
    assert bitfit[5] == x100(rte["accuracy"])  # the tasks given as files are not in the GLUE average

    # the baselines: the majority class of the dev file, a constant (its MSE: the dev labels' variance)
    base = rows["trivial baseline (majority class; STS-B, scores: a constant)"]
    recorded = results(root / "runs" / "reviews" / "s0")["baseline"]["dev"]
    assert recorded["answer"] == "pos" and base[3] == "50.0 / 22.2 / 0.0" == " / ".join(
        x100(recorded[m]) for m in ("accuracy", "macro_f1", "mcc"))
    assert base[4] == f"0.0 / 0.0 / {statistics.pvariance(DEV_SCORES):.4g}"
    assert base[5] == base[2] == x100(results(root / "runs" / "rte" / "s0")["baseline"]["dev"]["accuracy"])
    assert "GLUE avg: mean of the GLUE columns' first metric, as the paper's Avg; the tasks given as files " \
           "(reviews, scores) are not in it." in text
    assert "Tasks given as files (run_glue.py --train-file: reviews, scores) follow GLUE's, by name" in text
    assert "MSE (tasks given as files): mean squared error on the labels' own scale, shown as it is" in text

    # the same order in every table and section; the learning curves and BitFit's bias change drawn for each
    assert "| method | RTE | reviews | scores |\n| --- | --- | --- | --- |\n| bitfit | 0.01 (1 seed of 1 rate) " \
           "| 0.01 (2 seeds of 1 rate) | 0.01 (1 seed of 1 rate) |" in text
    grid = (tmp_path / "out" / "grid.md").read_text()
    sections = [line.split(" (")[0] for line in grid.splitlines() if line.startswith("## ")]
    assert sections == ["## bitfit on RTE", "## bitfit on reviews", "## bitfit on scores"]
    assert "| learning rate | dev pearson | seeds | run folders |" in grid  # MSE never picks the rate
    figures = {p.name for p in (tmp_path / "out" / "figures").iterdir()}
    model = Path(results(root / "runs" / "rte" / "s0")["model_name"]).name
    for task in ("rte", "reviews", "scores"):
        assert {f"curves_{model}_full_{task}_bitfit.png", f"bias_change_{model}_full_{task}_bitfit.png"} <= figures
    assert text.index("### bitfit on RTE") < text.index("### bitfit on reviews") < text.index("### bitfit on scores")

    # the run that gives 'reviews' other classes is not mixed in: skipped, with both definitions
    assert skipped_reasons(text) == {"runs/reviews_two": (
        "task 'reviews' defined differently: labels ['neg', 'pos'] here, where the other 2 run(s) of 'reviews' "
        "(e.g. runs/reviews/s0) have labels ['meh', 'neg', 'pos']; not mixed (give different tasks different "
        "names: -t)")}


def test_a_tie_between_definitions_keeps_the_first_runs_by_folder(root, monkeypatch):
    monkeypatch.chdir(root)
    runs, skipped = collect(["runs/reviews_two", "runs/reviews/s1"])  # one run each: the first by folder wins
    assert [r.label for r in runs] == ["runs/reviews/s1"] and runs[0].task.labels == ("meh", "neg", "pos")
    assert [s.label for s in skipped] == ["runs/reviews_two"]
    assert skipped[0].reason.startswith("task 'reviews' defined differently: labels ['neg', 'pos'] here, where the "
                                        "other 1 run(s) of 'reviews' (e.g. runs/reviews/s1) have labels ['meh'")


def test_a_table_of_tasks_given_as_files_only_has_no_average(root, tmp_path):
    text = write_report([root / "runs" / "scores", root / "runs" / "reviews"], tmp_path / "out", deltas=False).read_text()
    rows = table(text)
    assert rows["method"] == ["% params", "% in layers", "reviews (acc / macro-F1 / MCC)",
                              "scores (Pearson / Spearman / MSE)"]
    assert len(rows["bitfit"]) == len(rows["trivial baseline (majority class; STS-B, scores: a constant)"]) == 4
    assert "GLUE avg" not in text and "| Avg |" not in text


def _edited(root: Path, tmp: Path, name: str, edit) -> Path:
    """A copy of the run runs/reviews/s0 whose config.json ``edit`` changed."""
    folder = tmp / "runs" / name
    shutil.copytree(root / "runs" / "reviews" / "s0", folder)
    saved = json.loads((folder / "config.json").read_text())
    edit(saved)
    (folder / "config.json").write_text(json.dumps(saved))
    return folder


def test_a_run_whose_task_cannot_be_known_is_skipped_with_one_line(root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _edited(root, tmp_path, "one_class", lambda s: s["task_definition"].update(labels=["pos"]))
    _edited(root, tmp_path, "mse_first", lambda s: s["task_definition"].update(metrics=["mse", "accuracy"]))
    _edited(root, tmp_path, "renamed", lambda s: s["config"].update(task_name="other"))
    _edited(root, tmp_path, "no_definition", lambda s: s.update(task_definition=None))  # 'reviews' is known here
    runs, skipped = collect(["runs"])
    assert runs == []
    reasons = {s.label: s.reason for s in skipped}
    assert all("\n" not in r and r.startswith("unknown task: ") for r in reasons.values())
    assert reasons["runs/one_class"].startswith("unknown task: config.json's task_definition is unusable: the task "
                                                "definition {'name': 'reviews', 'labels': ['pos']")
    assert "accepted: name, labels (two or more class names" in reasons["runs/one_class"]
    assert reasons["runs/mse_first"].startswith("unknown task: config.json's task_definition is unusable: main metric "
                                                "'mse' cannot")
    assert reasons["runs/renamed"] == ("unknown task: config.json's task_definition names 'reviews' but its task_name "
                                       "is 'other'; accepted: the config.json run_glue.py wrote")
    assert reasons["runs/no_definition"].startswith("unknown task: 'reviews' is not a GLUE task and config.json "
                                                    "records no task_definition")


def test_runs_of_one_task_from_files_elsewhere_are_compared(root, tmp_path, monkeypatch):
    """The files' paths are not a setting that splits a group (as --data-dir is not): seeds trained from a copy of the
    files in another folder are averaged together; other labels under the name would not be (above)."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(root / "runs" / "reviews" / "s0", tmp_path / "runs" / "s0")
    _edited(root, tmp_path, "s1", lambda s: s["config"].update(seed=1, train_file="/elsewhere/train.csv",
                                                             validation_file="/elsewhere/dev.csv"))
    text = write_report(["runs"], tmp_path / "out", deltas=False).read_text()
    assert "None: every run folder found was used." in text and "(2 seeds of 1 rate)" in text
