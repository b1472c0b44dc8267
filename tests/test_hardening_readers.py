"""The remaining readers and writers of issue 26: the report, ASHA, the sweep's stop request and marker, a delta,
predict's JSON-lines input and the sweep file are read bounded (a FIFO never hangs them, a deep or huge file is a
reason, never a RecursionError); the run folder, the report's figures and the sweep's own files on a full disk are
one line and exit 74."""

from __future__ import annotations

import errno
import json
import os
import signal
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from bitfit import io
from bitfit.cli import main as bitfit_main
from bitfit.cli.sweep import YAML_LIMIT
from bitfit.errors import EnvironmentFailure, UserError
from bitfit.runlock import LOCK_FILE
from bitfit.tasks import get_task
from test_cli import make_glue_dir
from test_hardening_files import DEEP, base_args, cli, one_line, unblock, within
from test_report import fake_run

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory) -> Path:
    return make_glue_dir(tmp_path_factory.mktemp("glue"))


def huge(path: Path, size: int) -> None:
    """A sparse file of ``size`` bytes (no disk used): over a limit by its size alone."""
    path.write_bytes(b"")
    os.truncate(path, size)


def bad_metrics(folder: Path, kind: str) -> None:
    """Replace ``folder``'s metrics.jsonl by a FIFO, a line nested 100,000 deep or a file over io.JSONL_LIMIT."""
    path = folder / "metrics.jsonl"
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "deep":
        path.write_text('{"epoch": 1, "split": "dev"}\n' + DEEP + "\n")
    else:
        huge(path, io.JSONL_LIMIT + 1)


BAD = {"fifo": "a FIFO, not a regular file", "deep": "JSON nested too deeply",
       "huge": f"larger than {io.JSONL_LIMIT:,} bytes"}


# ---------------------------------------------------------------------------------------------
# 1. The report


def test_the_report_skips_a_run_whose_metrics_jsonl_is_a_fifo_deep_or_huge_with_the_reason(tmp_path, monkeypatch):
    from bitfit.report.runs import collect

    monkeypatch.chdir(tmp_path)
    fake_run(tmp_path / "runs", "good", seed=0)
    for seed, kind in enumerate(BAD, 1):
        bad_metrics(fake_run(tmp_path / "runs", kind, seed=seed), kind)  # complete: results.json is fine
        bad_metrics(fake_run(tmp_path / "runs", f"{kind}_running", seed=seed + 10, results=False), kind)
    try:
        runs, skipped = within(60, collect, ["runs"])
    finally:
        unblock(tmp_path / "runs" / "fifo" / "metrics.jsonl")
        unblock(tmp_path / "runs" / "fifo_running" / "metrics.jsonl")
    assert [r.label for r in runs] == ["runs/good"]
    reasons = {s.label: s.reason for s in skipped}
    for kind, why in BAD.items():
        assert reasons[f"runs/{kind}"] == f"failed: metrics.jsonl is unreadable ({why})"
        assert reasons[f"runs/{kind}_running"].startswith(f"failed: no results.json, metrics.jsonl is unreadable ({why}); ")
    assert all("\n" not in r for r in reasons.values())


# ---------------------------------------------------------------------------------------------
# 2. ASHA


def test_asha_counts_a_fifo_deep_or_huge_metrics_jsonl_for_nothing(tmp_path):
    from bitfit.sweep.asha import decide, recorded

    group = tmp_path / "m" / "full" / "rte" / "bitfit"
    for name, value in (("lr1e-4_seed0", 0.4), ("lr1e-3_seed0", 0.6)):
        (group / name).mkdir(parents=True)
        (group / name / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "split": "dev", "accuracy": value}) + "\n")
    for kind in BAD:
        (group / kind).mkdir()
        bad_metrics(group / kind, kind)
    try:
        assert within(60, recorded, group / "lr7e-4_seed0", "rte", 1) == {group / "lr1e-3_seed0": 0.6,
                                                                           group / "lr1e-4_seed0": 0.4}
        assert "below the median 0.5000 of the 2 other runs" in within(60, decide, group / "lr7e-4_seed0", "rte", 1,
                                                                        0.45, 4)
    finally:
        unblock(group / "fifo" / "metrics.jsonl")


# ---------------------------------------------------------------------------------------------
# 3. The sweep's stop request and marker


def test_the_stop_request_and_marker_are_read_bounded(tmp_path):
    from bitfit.sweep.control import LIMIT, MARKER, STOP, read_marker, stop_requested

    good = tmp_path / "good"
    good.mkdir()
    (good / STOP).write_text("15\n")
    (good / MARKER).write_text(json.dumps({"sweep": "x"}))
    assert stop_requested(good) == 15 and read_marker(good) == {"sweep": "x"}
    makers = {"fifo": os.mkfifo, "deep": lambda p: p.write_text(DEEP), "huge": lambda p: huge(p, LIMIT + 1),
              "symlink": lambda p: p.symlink_to(good / p.name)}
    for kind, make in makers.items():
        folder = tmp_path / kind
        folder.mkdir()
        make(folder / STOP)
        make(folder / MARKER)
        try:
            assert within(20, stop_requested, folder) is None, kind
            assert within(20, read_marker, folder) is None, kind
        finally:
            unblock(folder / STOP)
            unblock(folder / MARKER)


# ---------------------------------------------------------------------------------------------
# 4. A delta


def test_a_delta_that_is_a_fifo_is_one_line_and_never_waited_on(tmp_path, capsys):
    from bitfit import delta

    fifo = tmp_path / "delta.safetensors"
    os.mkfifo(fifo)
    (tmp_path / "in.jsonl").write_text('{"sentence1": "a", "sentence2": "b"}\n')
    try:
        for given in (fifo, tmp_path):  # the file, and the run folder holding it
            with pytest.raises(UserError) as e:
                within(20, delta.read, given)
            assert str(e.value) == (f"delta {str(fifo)!r} is a FIFO, not a regular file; accepted: a delta.safetensors "
                                    "file or a run folder holding one")
        rc = within(60, bitfit_main, ["predict", "--delta", str(tmp_path), "--input", str(tmp_path / "in.jsonl"),
                                      "--device", "cpu"])
        assert rc == 2 and "is a FIFO, not a regular file" in one_line(capsys.readouterr().err)
    finally:
        unblock(fifo)
    with pytest.raises(UserError, match="not found"):
        delta.read(tmp_path / "nowhere")


def test_delta_metadata_nested_too_deeply_is_one_line(tmp_path):
    from bitfit import delta

    path = tmp_path / "delta.safetensors"
    meta = {"format": delta.FORMAT, "base_model": "x", "task": "rte", "model_type": "bert", "policy": "bitfit"}
    for key in ("config", "labels"):
        save_file({"x": torch.zeros(2)}, path, metadata=meta | {"config": "{}", key: DEEP})
        with pytest.raises(UserError) as e:
            delta.read(path, allow_unverified=True)
        assert f"metadata {key!r} is not a JSON" in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------
# 5. predict's JSON-lines input


def test_a_json_lines_input_nested_too_deeply_or_with_a_huge_integer_names_its_line():
    from bitfit.serve import parse_inputs

    first = '{"sentence1": "a", "sentence2": "b"}\n'
    with pytest.raises(UserError) as e:
        parse_inputs("in.jsonl", first + DEEP + "\n", get_task("rte"))
    assert str(e.value) == "in.jsonl:2: JSON nested too deeply; accepted: one JSON object per line"
    with pytest.raises(UserError, match=r"^in\.jsonl:2: not JSON this tool reads \(Exceeds the limit"):
        parse_inputs("in.jsonl", first + '{"idx": ' + "1" * 5000 + "}\n", get_task("rte"))


# ---------------------------------------------------------------------------------------------
# 6. The sweep file


GRID = "tasks: [rte]\nmethods: [bitfit]\nlearning_rates: [1e-3]\n"


def test_a_sweep_file_that_is_a_fifo_deep_or_huge_is_one_line_and_a_symlink_to_one_is_read(tmp_path, capsys,
                                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.mkfifo("fifo.yaml")
    Path("deep.yaml").write_text("tasks: " + DEEP)
    huge(Path("huge.yaml"), YAML_LIMIT + 1)
    cases = {"fifo.yaml": "cannot read sweep file 'fifo.yaml': a FIFO, not a regular file; accepted: a YAML file of at "
                          "most 1 MiB",
             "deep.yaml": "sweep file 'deep.yaml' is nested too deeply to read",
             "huge.yaml": "cannot read sweep file 'huge.yaml': larger than 1,048,576 bytes"}
    try:
        for name, words in cases.items():
            assert within(60, bitfit_main, ["sweep", "--config", name, "-o", "out", "--dry-run"]) == 2
            assert words in one_line(capsys.readouterr().err)
    finally:
        unblock(tmp_path / "fifo.yaml")
    Path("grid.yaml").write_text(GRID)
    Path("link.yaml").symlink_to("grid.yaml")  # the user's own link to their file: followed
    assert bitfit_main(["sweep", "--config", "link.yaml", "-o", "out", "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines()[0].split("\t")[2] == "out/minilm/full/rte/bitfit/lr1e-3_seed0"
    assert not Path("out").exists()


# ---------------------------------------------------------------------------------------------
# 7. A full disk at the remaining writes: one line, exit 74


def no_space_at(monkeypatch, method: str, when) -> None:
    """``Path.<method>`` raises ENOSPC where ``when(path)`` is true; elsewhere it works."""
    real = getattr(Path, method)

    def full(self, *a, **k):
        if when(self):
            raise ENOSPC
        return real(self, *a, **k)

    monkeypatch.setattr(Path, method, full)


def test_a_full_disk_when_the_run_opens_its_folder_is_exit_74(tmp_path, capsys, monkeypatch, tiny_bert_dir, glue_dir):
    run = tmp_path / "run"
    # the lock made the folder; the run's own mkdir after it (open_run_folder) finds the disk full
    no_space_at(monkeypatch, "mkdir", lambda p: p.resolve() == run.resolve() and (p / LOCK_FILE).exists())
    rc, err = cli(capsys, *base_args(tiny_bert_dir, glue_dir, run))
    assert rc == 74 and one_line(err) == (f"run_glue.py: error: cannot write {run}: No space left on device (it is "
                                          "left as it was; free space or write to another disk)")
    assert not (run / "config.json").exists() and not (run / LOCK_FILE).exists()


def test_a_full_disk_when_the_report_makes_its_figures_folder_is_exit_74(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fake_run(tmp_path / "runs", "ok")
    no_space_at(monkeypatch, "mkdir", lambda p: p.name == "figures")
    rc = bitfit_main(["report", "runs", "-o", "out", "--no-deltas", "--no-verbose"])
    line = one_line(capsys.readouterr().err)
    assert rc == 74 and line.startswith("python -m bitfit report: error: cannot write out/figures: No space left")


def test_a_full_disk_at_the_sweeps_marker_or_stop_request_is_environment_failure(tmp_path, monkeypatch):
    import ray

    from bitfit.sweep import driver

    class Context:
        def get_node_id(self):
            return "node"

    monkeypatch.setattr(ray, "get_runtime_context", Context)
    folder = tmp_path / "out" / ".tune" / "s"
    no_space_at(monkeypatch, "mkdir", lambda p: p == folder)
    with pytest.raises(EnvironmentFailure, match=f"cannot write {folder / 'sweep.json'}: No space left on device"):
        driver.write_marker(folder)
    monkeypatch.undo()
    folder.mkdir(parents=True)
    no_space_at(monkeypatch, "write_text", lambda p: p.name == "stop" or p.name.startswith(".stop."))
    interrupts = driver.Interrupts(folder)
    with pytest.raises(EnvironmentFailure, match="No space left on device") as e:
        interrupts._handle(signal.SIGINT, None)  # what the driver runs on Ctrl-C (exit 74 through the command)
    assert "\n" not in str(e.value) and sorted(p.name for p in folder.iterdir()) == []


def test_a_full_disk_for_the_sweeps_worker_folder_is_one_line_exit_74(tmp_path, capsys, monkeypatch, tiny_bert_dir,
                                                                       glue_dir):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    argv = ["sweep", "--tasks", "rte", "--methods", "bitfit", "--learning-rates", "1e-3", "-e", "1", "-m",
            str(tiny_bert_dir), "--data-dir", str(glue_dir), "-o", "out"]
    no_space_at(monkeypatch, "write_text", lambda p: "README" in p.name)
    assert bitfit_main(argv) == 74
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(  # after the plan's one summary line
        f"python -m bitfit sweep: error: cannot write {tmp_path / 'tmp'}/bitfit-sweep-")
    assert "No space left on device" in err and list((tmp_path / "tmp").iterdir()) == []  # its temp folder removed

    def full(*a, **k):
        raise ENOSPC

    monkeypatch.setattr(tempfile, "mkdtemp", full)
    assert bitfit_main(argv) == 74
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"python -m bitfit sweep: error: cannot write {tmp_path / 'tmp'}: No space left on device (it is left as it "
        "was; free space or write to another disk)")
