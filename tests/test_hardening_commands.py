"""Issue 26: predict, merge and train check what they take from a delta, a flag or a file as run_glue.py
does (one shared check), say one line for each bad case, and an interrupted run is told what to do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bitfit.__main__ import main
from bitfit.config import RunConfig, check_settings
from bitfit.errors import UserError
from test_delta import synthetic_delta
from test_hardening import tampered


@pytest.fixture(scope="module")
def good_delta(tmp_path_factory, tiny_bert_dir) -> Path:
    return synthetic_delta(tiny_bert_dir, tmp_path_factory.mktemp("delta") / "delta.safetensors")


def command(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def pairs(tmp_path) -> Path:
    f = tmp_path / "pairs.tsv"
    f.write_text("sentence1\tsentence2\nthe dog sat\ta dog\nshe ran\the walked\n")
    return f


def with_config(src: Path, dst: Path, **changes) -> Path:
    def edit(meta):
        meta["config"] = json.dumps(json.loads(meta["config"]) | changes)

    return tampered(src, dst, edit_meta=edit)  # re-signed: only the value checks can catch it


@pytest.mark.parametrize("changes,message", [
    ({"eval_batch_size": 0}, "eval batch size 0 is out of range; accepted: an integer from 1 to"),
    ({"max_seq_length": 4}, "max seq length 4 is out of range; accepted: an integer from 8 to"),
    ({"max_seq_length": 100000}, "the max seq length of rte's run 100000 is above what model"),
    ({"precision": "fp8"}, "unknown precision 'fp8'; accepted: fp32, bf16, fp16"),
])
def test_predict_checks_the_delta_config_as_run_glue_checks_flags(capsys, tmp_path, good_delta, pairs, changes, message):
    bad = with_config(good_delta, tmp_path / "bad.safetensors", **changes)
    rc, out, err = command(capsys, "predict", "--delta", bad, "--input", pairs, "--no-verbose")
    assert rc == 2 and message in one_line(err) and out == ""


def test_merge_refuses_a_delta_whose_config_is_out_of_range(capsys, tmp_path, good_delta):
    bad = with_config(good_delta, tmp_path / "bad.safetensors", eval_batch_size=-3)
    rc, _, err = command(capsys, "merge", bad, "-o", tmp_path / "merged", "--no-verbose")
    assert rc == 2 and "(its config): eval batch size -3 is out of range" in one_line(err)
    assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize("flags,message", [
    (["--batch-size", "0"], "--batch-size 0 is out of range; accepted: an integer from 1 to"),
    (["--max-seq-length", "2"], "--max-seq-length 2 is out of range; accepted: an integer from 8 to"),
    (["--max-seq-length", "100000"], "--max-seq-length 100000 is above what model"),
])
def test_predict_flags_are_checked_like_run_glue_flags(capsys, tmp_path, good_delta, flags, message):
    long_input = tmp_path / "long.tsv"
    long_input.write_text("sentence1\tsentence2\n" + " ".join(["dog"] * 3000) + "\tcat\n")
    rc, out, err = command(capsys, "predict", "--delta", good_delta, "--input", long_input, *flags, "--no-verbose")
    assert rc == 2 and message in one_line(err) and out == ""


def test_the_length_limit_is_the_models_own(tiny_bert_dir):
    """The tiny model takes 128 positions (the same check refuses run_glue.py's --max-seq-length 100000)."""
    from bitfit.models import load_model, load_tokenizer, positions
    from bitfit.tasks import get_task

    model, _ = load_model(str(tiny_bert_dir), get_task("rte"))
    assert positions(model, load_tokenizer(str(tiny_bert_dir))) == 128


@pytest.mark.parametrize("text", ["", "sentence1\tsentence2\n", "\n\n", '{"sentence1": "a"}\n'])
def test_predict_on_an_input_without_examples_is_one_line(capsys, tmp_path, good_delta, text):
    f = tmp_path / ("in.jsonl" if text.startswith("{") else "in.tsv")
    f.write_text(text)
    rc, out, err = command(capsys, "predict", "--delta", good_delta, "--input", f, "--no-verbose")
    assert rc == 2 and out == ""
    assert str(f) in one_line(err)


def test_an_output_under_a_file_is_one_line_for_predict_merge_and_submit(capsys, tmp_path, good_delta, pairs):
    blocker = tmp_path / "file"
    blocker.write_text("mine\n")
    rc, _, err = command(capsys, "predict", "--delta", good_delta, "--input", pairs, "-o", blocker / "x" / "p.tsv",
                         "--no-verbose")
    assert rc == 2 and "is under" in one_line(err) and "which is a file" in err
    assert blocker.read_text() == "mine\n"
    rc, _, err = command(capsys, "merge", good_delta, "-o", blocker / "merged", "--no-verbose")
    assert rc == 2 and "which is a file" in one_line(err)
    rc, _, err = command(capsys, "submit", good_delta.parent, "-o", blocker / "glue.zip")
    assert rc == 2 and "which is a file" in one_line(err)
    assert blocker.read_text() == "mine\n"


def test_check_settings_is_the_run_configs_own_check():
    """The same value is refused with the same words by RunConfig and by check_settings."""
    with pytest.raises(UserError) as from_flags:
        RunConfig(output_path="x", task_name="rte", eval_batch_size=0)
    with pytest.raises(UserError) as from_delta:
        check_settings({"eval_batch_size": 0, "not_a_setting": object()})
    assert str(from_flags.value) == str(from_delta.value)
    check_settings({"eval_batch_size": 64, "max_seq_length": 128, "precision": None})  # good values pass


def test_an_interrupt_in_the_first_epoch_says_the_run_starts_over_and_prints_that_command(
        capsys, tmp_path, tiny_bert_dir, monkeypatch):
    """Nothing is kept before the first checkpoint: the printed command restarts the run (with --overwrite), and
    running it completes the run; --resume would be refused ("nothing to resume")."""
    import shlex

    import run_glue
    from test_cli import make_glue_dir
    from test_reliability import interrupt_at

    data = make_glue_dir(tmp_path / "glue")
    out = tmp_path / "run"
    argv = ["-t", "rte", "-m", str(tiny_bert_dir), "--data-dir", str(data), "-o", str(out), "-e", "2", "--no-verbose"]
    monkeypatch.setattr("sys.argv", ["run_glue.py", *argv])
    interrupt_at(monkeypatch, step=2)
    assert run_glue.main(argv) == 130
    err = capsys.readouterr().err
    assert "SIGINT during epoch 1: stopped before any epoch was complete, so nothing is kept" in err
    command = shlex.split(err.strip().splitlines()[-1])
    assert command[:2] == ["python", "run_glue.py"] and command[-1] == "--overwrite" and "--resume" not in command
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "interrupted" and results["completed_epochs"] == 0
    assert results["restart_command"] == shlex.join(command) and "resume_command" not in results
    monkeypatch.undo()
    assert run_glue.main(command[2:]) == 0
    assert json.loads((out / "results.json").read_text())["status"] == "complete"


def test_a_folder_holding_an_interrupted_run_suggests_resume_not_overwrite(capsys, tmp_path, tiny_bert_dir, monkeypatch):
    import run_glue
    from test_cli import make_glue_dir
    from test_reliability import interrupt_at

    data = make_glue_dir(tmp_path / "glue")
    out = tmp_path / "run"
    argv = ["-t", "rte", "-m", str(tiny_bert_dir), "--data-dir", str(data), "-o", str(out), "-e", "3", "--no-verbose"]
    interrupt_at(monkeypatch, step=8)  # in epoch 2: epoch 1's checkpoint is kept
    assert run_glue.main(argv) == 130
    capsys.readouterr()
    before = {f: f.read_bytes() for f in out.rglob("*") if f.is_file()}
    monkeypatch.undo()
    assert run_glue.main(argv) == 2
    line = one_line(capsys.readouterr().err)
    assert "holds a run that can be continued (interrupted after epoch 1 of 3" in line and "pass --resume" in line
    assert {f: f.read_bytes() for f in out.rglob("*") if f.is_file()} == before


def test_a_recomputed_digest_is_not_authenticity(tmp_path, good_delta):
    """What docs/DELTAS.md says the digests prove, and no more: an edit that recomputes them is not caught by
    them (a moved head bias loads), one that does not recompute them is; the docs never call them a signature."""
    from bitfit import delta

    def shift(tensors):
        tensors["classifier.bias"] += 5.0

    moved = delta.read(tampered(good_delta, tmp_path / "moved.safetensors", edit_tensors=shift))
    assert not torch_equal(moved.tensors["classifier.bias"], delta.read(good_delta).tensors["classifier.bias"])
    with pytest.raises(UserError, match="tensors do not match the digest"):
        delta.read(tampered(good_delta, tmp_path / "careless.safetensors", edit_tensors=shift, resign=False))
    from conftest import REPO

    text = " ".join((REPO / f).read_text() for f in ("README.md", "docs/DELTAS.md", "docs/RELIABILITY.md"))
    assert "integrity checks, not signatures" in text
    assert not any(w in text.lower() for w in ("re-sign", "tamper-proof", "signed by"))


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


@pytest.mark.parametrize("case, words", [
    ("data_dir", "data dir '{tmp}/glue_typo' is not a folder"),
    ("task_files", "has no RTE/dev.tsv for task RTE"),
    ("model", "model folder '{tmp}/no_model' does not exist"),
    ("under_file", "which is a file; accepted: a path in a folder"),
])
def test_bad_paths_fail_before_torch_is_imported_and_before_any_folder_is_made(case, words, tmp_path, tiny_bert_dir):
    import subprocess
    import sys

    from conftest import REPO
    from test_cli import make_glue_dir

    data = make_glue_dir(tmp_path / "glue")
    if case == "task_files":
        (data / "RTE" / "dev.tsv").unlink()
    (tmp_path / "afile").write_text("x")
    out = tmp_path / ("afile/sub/run" if case == "under_file" else "deep/er/run")
    argv = ["-t", "rte", "-m", str(tmp_path / "no_model") if case == "model" else str(tiny_bert_dir),
            "--data-dir", str(tmp_path / "glue_typo") if case == "data_dir" else str(data), "-o", str(out), "-e", "1"]
    before = sorted(tmp_path.rglob("*"))
    code = "import sys, run_glue; rc = run_glue.main(sys.argv[1:]); print('torch' in sys.modules); sys.exit(rc)"
    proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout.strip() == "False", (proc.stdout, proc.stderr)
    assert words.format(tmp=tmp_path) in one_line(proc.stderr)
    assert sorted(tmp_path.rglob("*")) == before  # not even the parents of -o


def test_a_json_lines_input_with_a_lone_surrogate_names_its_line(capsys, tmp_path, good_delta):
    f = tmp_path / "in.jsonl"
    f.write_text('{"sentence1": "fine", "sentence2": "ok"}\n{"sentence1": "bad \\ud800 half", "sentence2": "ok"}\n')
    rc, out, err = command(capsys, "predict", "--delta", good_delta, "--input", f, "--no-verbose")
    assert rc == 2 and out == "" and f"{f}:2: a text holds a lone UTF-16 surrogate" in one_line(err)
