"""--report-to: TensorBoard event files that tensorboard's own reader reads back as metrics.jsonl says;
a missing tracker package is a one-line error before anything is written; a tracker failing mid-run
never ends the run."""

from __future__ import annotations

import json

import pytest
from test_cli import make_glue_dir, read_jsonl, run_cli

from bitfit import trackers
from bitfit.config import RunConfig
from bitfit.errors import UserError


@pytest.fixture(scope="module")
def glue(tmp_path_factory):
    return make_glue_dir(tmp_path_factory.mktemp("glue"))


def test_tensorboard_events_hold_every_epochs_metrics(tmp_path, glue, tiny_bert_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert run_cli("-t", "rte", "-e", 3, "-m", tiny_bert_dir, "--data-dir", glue, "-o", out, "--no-verbose",
                   "--report-to", "tensorboard") == 0
    assert json.loads((out / "config.json").read_text())["config"]["report_to"] == "tensorboard"
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    rows = read_jsonl(out / "metrics.jsonl")
    expected = {f"{r['split']}/{k}": [] for r in rows for k in r if k not in ("epoch", "split")}
    for r in rows:
        for k, v in r.items():
            if k not in ("epoch", "split"):
                expected[f"{r['split']}/{k}"].append((r["epoch"], v))
    assert {"train/loss", "train/lr", "dev/accuracy", "dev/loss"} <= set(expected)
    assert set(events.Tags()["scalars"]) >= set(expected)
    for tag, points in expected.items():
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in got] == [1, 2, 3]
        assert [v for _, v in got] == pytest.approx([v for _, v in points], rel=1e-6)  # stored as float32


def test_no_tracker_by_default_writes_no_tracking_files(tmp_path, glue, tiny_bert_dir):
    out = tmp_path / "run"
    assert run_cli("-t", "rte", "-e", 1, "-m", tiny_bert_dir, "--data-dir", glue, "-o", out, "--no-verbose") == 0
    assert not (out / "tensorboard").exists() and not (tmp_path / "mlruns").exists()


def test_a_tracker_whose_package_is_missing_is_one_line_before_anything_is_written(tmp_path, monkeypatch):
    real = trackers.importlib.util.find_spec
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    with pytest.raises(UserError) as e:
        RunConfig(output_path=str(tmp_path / "run"), task_name="rte", report_to="wandb")
    assert str(e.value) == ("--report-to wandb needs the wandb package, which is not installed; pip install wandb, "
                            "or --report-to none")
    with pytest.raises(UserError, match="unknown report to 'comet'; accepted: none, tensorboard, wandb, mlflow"):
        RunConfig(output_path=str(tmp_path / "run"), task_name="rte", report_to="comet")
    assert not (tmp_path / "run").exists()


def test_a_tracker_failing_mid_run_is_dropped_and_the_run_completes(tmp_path, glue, tiny_bert_dir, monkeypatch, capfd):
    from accelerate.tracking import TensorBoardTracker

    def broken(self, values, step=None, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(TensorBoardTracker, "log", broken)
    out = tmp_path / "run"
    assert run_cli("-t", "rte", "-e", 2, "-m", tiny_bert_dir, "--data-dir", glue, "-o", out, "--no-verbose",
                   "--report-to", "tensorboard") == 0
    assert json.loads((out / "results.json").read_text())["status"] == "complete"
    warned = [line for line in capfd.readouterr().err.splitlines() if "--report-to tensorboard failed" in line]
    assert len(warned) == 1 and "No space left on device" in warned[0]  # dropped after the first failure


def test_epoch_values_are_split_slash_metric():
    rows = [{"epoch": 2, "split": "train", "loss": 0.5, "lr": 1e-3, "seconds": 1.5},
            {"epoch": 2, "split": "dev_matched", "accuracy": 0.75, "loss": 0.6}]
    assert trackers.epoch_values(rows) == {"train/loss": 0.5, "train/lr": 1e-3, "train/seconds": 1.5,
                                           "dev_matched/accuracy": 0.75, "dev_matched/loss": 0.6}
