"""What a new user sees: each metric beside its trivial baseline, a warning when the model did not
beat it, and progress that reads well in a log file."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bitfit.metrics import baseline
from bitfit.tasks import get_task
from conftest import REPO
from test_cli import make_glue_dir


def test_baseline_is_the_majority_class_or_a_constant():
    rte = baseline(get_task("rte"), [0, 1, 1, 1])
    assert rte == {"answer": "not_entailment", "accuracy": 0.75}
    mrpc = baseline(get_task("mrpc"), [1, 1, 0])
    assert mrpc["answer"] == "1" and mrpc["accuracy"] == pytest.approx(2 / 3) and mrpc["f1"] == pytest.approx(0.8)
    cola = baseline(get_task("cola"), [1, 0, 1])
    assert cola["mcc"] == 0.0 and cola["accuracy"] == pytest.approx(2 / 3)
    assert baseline(get_task("stsb"), [0.5, 4.0]) == {"answer": "constant", "pearson": 0.0, "spearmanr": 0.0}


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory, tiny_bert_dir):
    """A run whose stderr is a file, as under nohup or a job scheduler."""
    tmp = tmp_path_factory.mktemp("first_hour")
    data = make_glue_dir(tmp / "glue")
    out, log = tmp / "run", tmp / "stderr.log"
    with open(log, "w") as err:
        proc = subprocess.run([sys.executable, str(REPO / "run_glue.py"), "-t", "rte", "-m", str(tiny_bert_dir),
                               "--data-dir", str(data), "-o", str(out), "-e", "2", "-l", "1e-6", "--predict-test"],
                              stderr=err, stdout=subprocess.PIPE, text=True, timeout=300)
    assert proc.returncode == 0, log.read_text()
    return out, log.read_text(), data


def test_each_epoch_line_shows_the_baseline_and_results_json_stores_it(logged_run):
    out, log, data = logged_run
    dev_labels = [line.split("\t")[-1] for line in (data / "RTE" / "dev.tsv").read_text().splitlines()[1:]]
    majority = max(("entailment", "not_entailment"), key=dev_labels.count)
    share = dev_labels.count(majority) / len(dev_labels)
    results = json.loads((out / "results.json").read_text())
    assert results["baseline"]["dev"] == {"answer": majority, "accuracy": pytest.approx(share)}
    assert results["beats_baseline"] == (results["best_main_metric"] > share)
    epoch_lines = [line for line in log.splitlines() if "INFO bitfit: epoch " in line and "train loss" in line]
    assert len(epoch_lines) == 2 and all(f"(always '{majority}': {share:.4f})" in line for line in epoch_lines)


def test_a_run_that_does_not_beat_the_baseline_ends_with_one_warning(logged_run):
    out, log, _ = logged_run
    results = json.loads((out / "results.json").read_text())
    warnings = [line for line in log.splitlines() if "WARNING" in line and "did not learn the task" in line]
    assert len(warnings) == (0 if results["beats_baseline"] else 1)
    if warnings:
        assert "more epochs (the paper's BitFit used up to 16)" in warnings[0]
        assert warnings[0] == log.strip().splitlines()[-1]  # the run's last word


def test_progress_in_a_log_file_is_plain_lines(logged_run):
    _, log, _ = logged_run
    assert "\r" not in log  # no carriage-return bar glued into one line
    for phase in ("epoch 1/2: ", "epoch 2/2: ", "evaluating dev: ", "predicting RTE.tsv: "):
        assert any(phase in line and "(100%)" in line for line in log.splitlines()), phase


def test_the_learning_curves_draw_the_baseline(tmp_path, monkeypatch):
    from bitfit import plots

    drawn = []
    import matplotlib.axes

    real = matplotlib.axes.Axes.axhline
    monkeypatch.setattr(matplotlib.axes.Axes, "axhline", lambda self, y, **kw: drawn.append((y, kw)) or real(self, y, **kw))
    history = [{"epoch": 1, "split": "train", "loss": 0.7}, {"epoch": 1, "split": "dev", "loss": 0.6, "accuracy": 0.5}]
    plots.plot_learning_curves(history, ("accuracy",), tmp_path / "c.png", "t",
                               baselines={"dev": {"answer": "entailment", "accuracy": 0.527}})
    assert [(y, kw["linestyle"]) for y, kw in drawn] == [(0.527, "--")]
    assert (tmp_path / "c.png").stat().st_size > 0
