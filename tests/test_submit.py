"""GLUE submission: the exact file set, row counts and indices checked, missing tasks named."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest

from bitfit.__main__ import main
from bitfit.errors import UserError
from bitfit.submit import KNOWN_ROWS, collect, glue_files, submit
from bitfit.tasks import TASKS, get_task
from conftest import GLUE_DIR, needs_glue
from test_cli import make_glue_dir, run_cli

ROWS = 6  # rows of every synthetic test file


def make_test_files(root: Path, rows: int = ROWS) -> Path:
    """Every GLUE test file (and the diagnostic set) in its real column layout, ``rows`` rows each."""
    for name, (task, split) in glue_files().items():
        path = root / (split.folder or task.glue_name) / split.tsv
        path.parent.mkdir(parents=True, exist_ok=True)
        width = max(split.text_columns or task.test_text_columns) + 1
        header = "\t".join(["index"] + [f"c{i}" for i in range(1, width)])
        path.write_text(header + "\n" + "".join("\t".join([str(i)] + ["w"] * (width - 1)) + "\n" for i in range(rows)))
    return root


def fake_run(root: Path, task_name: str, rows: int = ROWS, status: str = "complete", **config) -> Path:
    """A finished run folder as run_glue.py --predict-test leaves it (predictions only, no model)."""
    task = get_task(task_name)
    run = root / task.name
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"status": status, "task": task.name, "best_epoch": 1, "best_main_metric": 0.5}))
    (run / "config.json").write_text(json.dumps({"config": {"task_name": task.name, "max_predict_samples": None} | config}))
    for i, split in enumerate(task.test_splits):
        label = lambda j: f"{(j * 0.7) % 5:.3f}" if task.is_regression else task.labels[(i + j) % len(task.labels)]  # noqa: E731
        (run / split.submission).write_text("index\tprediction\n" + "".join(f"{j}\t{label(j)}\n" for j in range(rows)))
    return run


@pytest.fixture
def test_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv("GLUE_DIR", raising=False)
    return make_test_files(tmp_path / "glue")


def all_runs(root: Path, **kw) -> list[Path]:
    return [fake_run(root, t, **kw) for t in TASKS]


def test_the_zip_holds_exactly_the_glue_file_set(tmp_path, test_dir, capsys):
    runs = all_runs(tmp_path / "runs")
    out = tmp_path / "glue_submission.zip"
    assert main(["submit", *map(str, runs), "-o", str(out), "--data-dir", str(test_dir)]) == 0
    with zipfile.ZipFile(out) as z:
        assert z.namelist() == ["CoLA.tsv", "SST-2.tsv", "MRPC.tsv", "STS-B.tsv", "QQP.tsv", "MNLI-m.tsv",
                                "MNLI-mm.tsv", "QNLI.tsv", "RTE.tsv", "WNLI.tsv", "AX.tsv"]
        assert z.read("AX.tsv") == (tmp_path / "runs" / "mnli" / "AX.tsv").read_bytes()
        assert z.read("STS-B.tsv").decode().splitlines()[:2] == ["index\tprediction", "0\t0.000"]
    printed = capsys.readouterr().out
    assert "wrote" in printed and "11 of 11 GLUE files" in printed and "MISSING" not in printed
    first = out.read_bytes()
    assert main(["submit", *map(str, runs), "-o", str(out), "--data-dir", str(test_dir), "--overwrite"]) == 0
    assert out.read_bytes() == first  # the same predictions make the same zip


def test_missing_tasks_are_named_and_a_partial_zip_needs_allow_missing(tmp_path, test_dir, capsys):
    runs = [fake_run(tmp_path / "runs", t) for t in ("rte", "stsb", "mnli")]
    out = tmp_path / "sub.zip"
    assert main(["submit", *map(str, runs), "-o", str(out), "--data-dir", str(test_dir)]) == 2
    err = capsys.readouterr().err
    assert "missing 6 of 11 GLUE files: CoLA.tsv, SST-2.tsv, MRPC.tsv, QQP.tsv, QNLI.tsv, WNLI.tsv" in err
    assert "--allow-missing" in err and not out.exists()
    assert main(["submit", *map(str, runs), "-o", str(out), "--data-dir", str(test_dir), "--allow-missing"]) == 0
    assert "MISSING CoLA.tsv, SST-2.tsv" in capsys.readouterr().out
    with zipfile.ZipFile(out) as z:
        assert z.namelist() == ["STS-B.tsv", "MNLI-m.tsv", "MNLI-mm.tsv", "RTE.tsv", "AX.tsv"]


def test_row_counts_follow_the_test_files_or_glues_known_counts(tmp_path, test_dir):
    run = fake_run(tmp_path / "runs", "rte")
    files, missing = collect([run], data_dir=str(test_dir))
    assert files["RTE.tsv"][1].rows == ROWS and files["RTE.tsv"][1].expected_from.endswith("RTE/test.tsv")
    assert len(missing) == 10
    with pytest.raises(UserError, match=r"6 predictions, but the test set has 3000 rows \(GLUE's known count and index order\)"):
        collect([run])  # no data dir anywhere: GLUE's own size
    short = fake_run(tmp_path / "short", "rte", rows=ROWS - 1)
    with pytest.raises(UserError, match="5 predictions, but the test set has 6 rows"):
        collect([short], data_dir=str(test_dir))


def test_the_runs_own_data_dir_is_used_when_none_is_given(tmp_path, test_dir):
    run = fake_run(tmp_path / "runs", "cola", data_dir=str(test_dir))
    files, _ = collect([run])
    assert files["CoLA.tsv"][1].expected_from == str(test_dir / "CoLA" / "test.tsv")


@pytest.mark.parametrize("change,message", [
    (lambda run: (run / "config.json").write_text(json.dumps({"config": {"max_predict_samples": 6}})),
     "predicted only the first 6 test rows"),
    (lambda run: (run / "results.json").write_text(json.dumps({"status": "interrupted", "task": "rte"})),
     "is not complete (no checkpoint to resume from"),
    (lambda run: (run / "results.json").unlink(), "is not complete (no checkpoint to resume from"),
    (lambda run: (run / "RTE.tsv").unlink(), "has no RTE.tsv: train it with --predict-test"),
    (lambda run: (run / "RTE.tsv").write_text("id\tlabel\n" + "0\tentailment\n" * ROWS), "first line is 'id\\tlabel'"),
    (lambda run: (run / "RTE.tsv").write_text("index\tprediction\n" + "".join(f"{i}\t1\n" for i in range(ROWS))),
     "prediction '1'; accepted: entailment, not_entailment"),
    (lambda run: (run / "RTE.tsv").write_text("index\tprediction\n" + "".join(f"{5 - i}\tentailment\n" for i in range(ROWS))),
     "index '5', but the test file has '0' there"),
])
def test_a_bad_run_is_refused_with_its_reason(tmp_path, test_dir, change, message):
    run = fake_run(tmp_path / "runs", "rte")
    change(run)
    with pytest.raises(UserError, match=re.escape(message)):
        submit([run], tmp_path / "sub.zip", data_dir=str(test_dir), allow_missing=True)
    assert not (tmp_path / "sub.zip").exists()


def test_scores_and_duplicates(tmp_path, test_dir):
    sts = fake_run(tmp_path / "a", "stsb")
    (sts / "STS-B.tsv").write_text("index\tprediction\n" + "".join(f"{i}\t5.100\n" for i in range(ROWS)))
    with pytest.raises(UserError, match="prediction '5.100'; accepted: a score from 0 to 5"):
        collect([sts], data_dir=str(test_dir))
    with pytest.raises(UserError, match="two runs for RTE"):
        collect([fake_run(tmp_path / "b", "rte"), fake_run(tmp_path / "c", "rte")], data_dir=str(test_dir))
    with pytest.raises(UserError, match="exists"):
        (tmp_path / "taken.zip").write_text("x")
        submit([fake_run(tmp_path / "d", "rte")], tmp_path / "taken.zip", data_dir=str(test_dir), allow_missing=True)


def test_an_mnli_run_without_the_diagnostic_set_leaves_ax_missing(tmp_path, test_dir):
    run = fake_run(tmp_path / "runs", "mnli")
    (run / "AX.tsv").unlink()
    files, missing = collect([run], data_dir=str(test_dir))
    assert list(files) == ["MNLI-m.tsv", "MNLI-mm.tsv"] and "AX.tsv" in missing


def test_a_real_run_folder_goes_into_the_zip(tmp_path, tiny_bert_dir):
    glue = make_glue_dir(tmp_path / "glue")
    assert run_cli("-t", "rte", "-m", tiny_bert_dir, "-o", tmp_path / "rte", "--data-dir", glue, "-e", 1,
                   "--predict-test", "--no-verbose") == 0
    files, missing = submit([tmp_path / "rte"], tmp_path / "sub.zip", allow_missing=True)  # the run's own data dir
    assert list(files) == ["RTE.tsv"] and files["RTE.tsv"][1].rows == 10
    with zipfile.ZipFile(tmp_path / "sub.zip") as z:
        assert z.read("RTE.tsv") == (tmp_path / "rte" / "RTE.tsv").read_bytes()


@needs_glue()
def test_known_counts_match_the_real_test_files():
    from bitfit.data import read_tsv

    checked = 0
    for name, (task, split) in glue_files().items():
        path = GLUE_DIR / (split.folder or task.glue_name) / split.tsv
        if path.is_file():
            indices = [e.index for e in read_tsv(path, task, test=True, text_columns=split.text_columns)]
            assert len(indices) == KNOWN_ROWS[name], name
            assert indices == [str(i) for i in range(len(indices))], name
            checked += 1
    assert checked >= 1
