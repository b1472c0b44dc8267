"""The one reader of a run folder's state, and python -m bitfit state."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bitfit.runstate import BROKEN, COMPLETE, DIVERGED, INTERRUPTED, NEW, read_state
from conftest import REPO


def folder(tmp_path, config=True, results=None, checkpoint_epoch=None):
    run = tmp_path / "run"
    run.mkdir()
    if config:
        (run / "config.json").write_text(json.dumps({"config": {"task_name": "rte", "epochs": 3}}))
    if results is not None:
        (run / "results.json").write_text(results if isinstance(results, str) else json.dumps(results))
    if checkpoint_epoch is not None:
        (run / "checkpoint").mkdir()
        (run / "checkpoint" / "state.json").write_text(json.dumps({"epoch": checkpoint_epoch}))
    return run


@pytest.mark.parametrize("kw,status,reason", [
    ({"results": {"status": "complete", "best_epoch": 2, "best_main_metric": 0.6}}, COMPLETE, "best epoch 2"),
    ({"results": {"best_epoch": 1, "best_main_metric": 0.6}}, COMPLETE, "best epoch 1"),  # before "status" existed
    ({"results": {"status": "complete", "best_epoch": 2, "best_main_metric": float("nan")}}, BROKEN, "no finite"),
    ({"results": {"status": "diverged", "message": "non-finite loss (nan) at epoch 2"}, "checkpoint_epoch": 1},
     DIVERGED, "non-finite loss (nan) at epoch 2"),
    ({"results": {"status": "interrupted"}, "checkpoint_epoch": 1}, INTERRUPTED, "after epoch 1 of 3"),
    ({"checkpoint_epoch": 2}, INTERRUPTED, "after epoch 2 of 3"),  # killed: no results.json
    ({"results": {"status": "interrupted"}}, BROKEN, "no checkpoint to resume from (results.json says interrupted)"),
    ({}, BROKEN, "no checkpoint to resume from"),
    ({"results": "{not json"}, BROKEN, "results.json is unreadable"),
    ({"results": {"status": "weird"}}, BROKEN, "status 'weird'"),
    ({"config": False, "results": {"status": "complete", "best_epoch": 1, "best_main_metric": 0.5}}, BROKEN,
     "no usable config.json (missing)"),
])
def test_each_state_with_its_reason(tmp_path, kw, status, reason):
    st = read_state(folder(tmp_path, **kw))
    assert st.status == status and reason in st.reason, st
    assert st.resumable == (status == INTERRUPTED)


def test_missing_or_empty_folder_is_new(tmp_path):
    assert read_state(tmp_path / "nothing").status == NEW
    (tmp_path / "empty").mkdir()
    assert read_state(tmp_path / "empty").status == NEW
    (tmp_path / "file").write_text("x")
    assert read_state(tmp_path / "file").status == BROKEN


def test_state_command_prints_one_line_per_folder(tmp_path):
    run = folder(tmp_path, checkpoint_epoch=1)
    proc = subprocess.run([sys.executable, "-m", "bitfit", "state", str(run), str(tmp_path / "none")],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"interrupted\t{run}\tinterrupted after epoch 1 of 3")
    assert lines[1].startswith(f"new\t{tmp_path / 'none'}\t")
    quiet = subprocess.run([sys.executable, "-m", "bitfit", "state", "--status-only", str(run)], capture_output=True,
                           text=True, cwd=REPO, timeout=60)
    assert quiet.stdout == "interrupted\n"
