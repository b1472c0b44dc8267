"""A task of the user's, given as files (bitfit/userdata.py): reading CSV / TSV / JSON Lines, what is inferred
(texts, classes or regression, ids), every bad input as one line, and GLUE tasks given as files in another layout
(SST-2 as a CSV with other column names and string labels, STS-B as JSON Lines) training exactly as the same
tasks given by name: the same tensors, the same metrics. Also resume and two gloo processes on such a task."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bitfit import checkpoint, run
from bitfit.config import RunConfig
from bitfit.errors import RunStopped, UserError
from bitfit.metrics import baseline
from bitfit.tasks import PREDICTIONS_FILE, get_task, task_definition
from bitfit.userdata import load_files, read_table
from conftest import GLUE_DIR, WORDS, needs_glue, two_processes_and_one
from test_cli import read_jsonl, run_cli


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def words(k: int, n: int = 6) -> str:
    return " ".join(WORDS[(k * 7 + i * 3) % len(WORDS)] for i in range(n))


def files_cfg(tmp_path: Path, train: Path, dev: Path, **kw) -> RunConfig:
    return RunConfig(**({"output_path": str(tmp_path / "out"), "task_name": "mine", "train_file": str(train),
                         "validation_file": str(dev), "epochs": 1, "verbose": False} | kw))


@pytest.fixture()
def reviews(tmp_path) -> tuple[Path, Path, Path]:
    """A small classification task: CSV with quoted commas and line breaks, string labels, an id column in test."""
    labels = ["positive", "negative", "neutral"]
    train = write_csv(tmp_path / "train.csv", ["id", "review", "stars"],
                      [[f"t{k}", words(k) + (', "quoted", and\na line break' if k == 3 else ""), labels[k % 3]]
                       for k in range(24)])
    dev = write_csv(tmp_path / "dev.csv", ["id", "review", "stars"],
                    [[f"d{k}", words(k + 50), labels[k % 3]] for k in range(9)])
    test = write_csv(tmp_path / "test.csv", ["id", "review"], [[f"x-{k}", words(k + 90)] for k in range(5)])
    return train, dev, test


# ----------------------------------------------------------------------------- reading and inference


def test_csv_quoting_line_numbers_and_inferred_classes(reviews, tmp_path):
    train, dev, test = reviews
    table = read_table(train)
    assert table.columns == ["id", "review", "stars"]
    assert [n for n, _ in table.rows][:5] == [2, 3, 4, 5, 7]  # row 3 (k=3) spans lines 5-6
    assert table.rows[3][1]["review"].endswith(', "quoted", and\na line break')
    cfg = files_cfg(tmp_path, train, dev, label_column="stars", test_file=str(test), predict_test=True)
    task, splits = load_files(cfg)
    assert task.labels == ("negative", "neutral", "positive") and task.hub_text_fields == ("review",)
    assert task.metrics == ("accuracy", "macro_f1", "mcc") and task.custom
    assert [e.label for e in splits["train"][:3]] == [2, 0, 1]
    assert [e.index for e in splits["test"]] == [f"x-{k}" for k in range(5)]  # the user's ids
    assert len(splits["dev"]) == 9 and splits["dev"][0].texts == (words(50),)


def test_integer_classes_sort_numerically_and_fractional_numbers_are_regression(tmp_path):
    rows = [[words(k), str([2, 10, 1][k % 3])] for k in range(9)]
    train = write_csv(tmp_path / "t.csv", ["text", "label"], rows)
    task, _ = load_files(files_cfg(tmp_path, train, train))
    assert task.labels == ("1", "2", "10")
    scores = [{"a": words(k), "b": words(k + 1), "label": [0.5, 3, 4.25][k % 3]} for k in range(9)]
    jl = write_jsonl(tmp_path / "s.jsonl", scores)
    task, splits = load_files(files_cfg(tmp_path, jl, jl))
    assert task.is_regression and task.metrics == ("pearson", "spearmanr", "mse")
    assert task.hub_text_fields == ("a", "b")  # the first two columns of text, as a pair
    assert [e.label for e in splits["train"][:3]] == [0.5, 3.0, 4.25]
    whole = write_csv(tmp_path / "w.csv", ["text", "label"], [[words(k), str(k % 5)] for k in range(10)])
    assert load_files(files_cfg(tmp_path, whole, whole))[0].labels == ("0", "1", "2", "3", "4")
    assert load_files(files_cfg(tmp_path, whole, whole, task_type="regression"))[0].is_regression


def test_text_columns_by_glue_name_then_given_then_first_text_columns(tmp_path):
    rows = [{"idx": k, "score": k % 2, "sentence2": words(k), "note": words(k + 3), "sentence1": words(k + 1),
             "label": ["a", "b"][k % 2]} for k in range(6)]
    jl = write_jsonl(tmp_path / "p.jsonl", rows)
    assert load_files(files_cfg(tmp_path, jl, jl))[0].hub_text_fields == ("sentence1", "sentence2")
    task, splits = load_files(files_cfg(tmp_path, jl, jl, text_columns=["note"]))
    assert task.hub_text_fields == ("note",) and splits["train"][0].texts == (words(3),)
    plain = write_jsonl(tmp_path / "q.jsonl", [{"idx": k, "n": k, "body": words(k), "label": ["a", "b"][k % 2]}
                                               for k in range(6)])
    assert load_files(files_cfg(tmp_path, plain, plain))[0].hub_text_fields == ("body",)  # not the id, not numbers


def test_metrics_and_baselines_of_a_task_given_as_files(tmp_path):
    from bitfit.metrics import compute_metrics
    from bitfit.tasks import user_task

    t = user_task("m", ("a", "b", "c"), ("text",), "macro_f1")
    assert t.metrics == ("macro_f1", "accuracy", "mcc") and t.main_metric == "macro_f1"
    base = baseline(t, [0, 0, 0, 1, 2])
    assert base["answer"] == "a" and base["accuracy"] == pytest.approx(0.6)
    assert base["macro_f1"] == pytest.approx((0.75 + 0 + 0) / 3) and base["mcc"] == 0.0
    r = user_task("r", None, ("a", "b"))
    base = baseline(r, [1.0, 2.0, 3.0, 6.0])
    assert base["pearson"] == 0.0 and base["mse"] == pytest.approx(3.5)  # the mean's MSE: the variance
    got = compute_metrics(r.metrics, [1.0, 2.0, 4.0], [1.0, 2.0, 3.0])
    assert got["mse"] == pytest.approx(1 / 3) and got["pearson"] == pytest.approx(0.9819805060619657)


# ----------------------------------------------------------------------------- bad input: one line


def _bad(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return p


GOOD = "text,label\nfine day,a\nbad day,b\n"
BAD_FILES = {
    "missing label column": ("t.csv", "text,stars\nfine,a\nbad,b\n", {}, "t.csv: no column 'label' (--label-column); its columns: text, stars"),
    "missing text column": ("t.csv", GOOD, {"text_columns": ["review"]}, "t.csv: no column 'review' (--text-columns); its columns: text, label"),
    "empty file": ("t.csv", "", {}, "t.csv is empty"),
    "header only": ("t.csv", "text,label\n", {}, "t.csv has no rows (only a header?)"),
    "single class": ("t.csv", "text,label\nfine,a\nbad,a\n", {}, "a single class ('a', 2 rows) in column 'label'"),
    "mixed label types": ("t.jsonl", '{"text": "x", "label": "a"}\n{"text": "y", "label": 2}\n', {},
                          "mixed label types in column 'label': a name at line 1, a number at line 2"),
    "empty label": ("t.csv", "text,label\nfine,a\nbad,\n", {}, "t.csv:3: empty label (column 'label')"),
    "csv that is tab-separated": ("t.csv", "text\tlabel\nfine\ta\n", {}, "the header is one column holding tabs: is it tab-separated? Name it .tsv"),
    "jsonl that is csv": ("t.jsonl", GOOD, {}, "t.jsonl:1: not JSON (Expecting value) (is it CSV? Name it .csv)"),
    "json array": ("t.json", '[{"text": "x", "label": "a"}]', {}, "a JSON array, not JSON Lines"),
    "csv that is jsonl": ("t.csv", '{"text": "x", "label": "a"}\n', {}, "its first line is a JSON object, not a CSV header: is it JSON Lines? Name it .jsonl"),
    "unknown extension": ("t.xlsx", GOOD, {}, "t.xlsx: unknown data file type '.xlsx'; accepted: a .csv, .tsv, .jsonl or .json"),
    "not utf-8": ("t.csv", b"text,label\nfine \xff,a\nbad,b\n", {}, "t.csv: not valid UTF-8 (invalid start byte at byte 16)"),
    "ragged row": ("t.csv", "text,label\nfine,a,extra\nbad,b\n", {}, "t.csv:2: 3 columns, but the header names 2 (text, label)"),
    "unterminated quote": ("t.csv", 'text,label\n"fine,a\nbad,b\n', {}, "t.csv:2: not valid CSV"),
    "duplicate header": ("t.csv", "text,text,label\na,b,c\nd,e,f\n", {}, "the header names 'text' twice"),
    "regression with a name": ("t.csv", "text,label\nfine,0.5\nbad,high\n", {"task_type": "regression"}, "t.csv:3: label 'high' is not a number"),
    "not an object": ("t.jsonl", '{"text": "x", "label": "a"}\n[1, 2]\n', {}, "t.jsonl:2: a JSON list, not an object"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_training_file_is_one_line_exit_2_nothing_written(case, tmp_path, tiny_bert_dir, capsys):
    name, text, extra, message = BAD_FILES[case]
    train = _bad(tmp_path, name, text)
    dev = _bad(tmp_path, "dev.csv", GOOD)
    flags = [x for k, v in extra.items() for x in (f"--{k.replace('_', '-')}", *(v if isinstance(v, list) else [v]))]
    out = tmp_path / "out"
    rc = run_cli("-t", "mine", "--train-file", train, "--validation-file", dev, *flags, "-m", tiny_bert_dir, "-e", "1",
                 "-o", out, "--no-verbose")
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


BAD_RUNS = {
    "dev label outside the training classes": (["--validation-file", "{dev_x}"], "dev_x.csv:3: label 'c' is not one of the training file's classes; accepted: a, b"),
    "GLUE's name": (["-t", "SST-2"], "task name 'SST-2' is GLUE's SST-2; with --train-file give your task a name of its own"),
    "a name that is no name": (["-t", "my task/1"], "task name 'my task/1' for your files is not a plain name"),
    "no validation file": (["--validation-file", None], "a task given as files needs --train-file and --validation-file; --validation-file is missing"),
    "test file without --predict-test": (["--test-file", "{train}"], "is read only with --predict-test"),
    "--predict-test without a test file": (["--predict-test", True], "--predict-test on a task given as files needs --test-file"),
    "--data-dir with files": (["--data-dir", "{tmp}"], "is GLUE's folder; a task given as files (--train-file) does not read it"),
    "mse as the main metric": (["--main-metric", "mse"], "main metric 'mse' cannot pick the best epoch (lower is better; it is reported beside the others); accepted: accuracy, macro_f1, mcc (classification), pearson, spearmanr (regression)"),
    "a metric of the other kind": (["--main-metric", "pearson"], "main metric 'pearson' is not a metric of a classification task; accepted: accuracy, macro_f1, mcc"),
    "an unknown metric": (["--main-metric", "auc"], "main metric 'auc' is unknown; accepted: accuracy, macro_f1, mcc (classification), pearson, spearmanr (regression)"),
    "file options without files": (["--train-file", None, "--validation-file", None, "-t", "rte", "--label-column", "x"], "--label-column is read only for a task given as files"),
    "test label outside the training classes": (["--test-file", "{test_x}", "--predict-test", True], "test_x.csv:4: label 'c' is not one of the training file's classes; accepted: a, b"),
    "missing training file": (["--train-file", "{tmp}/nope.csv"], "--train-file '{tmp}/nope.csv': not found"),
    "three text columns": (["--text-columns", "a", "b", "c"], "--text-columns a b c: 3 columns; accepted: one column, or two"),
    "unknown task type": (["--task-type", "ranking"], "argument --task-type: invalid choice: 'ranking' (choose from 'classification', 'regression')"),
}


@pytest.mark.parametrize("case", list(BAD_RUNS))
def test_bad_run_of_files_is_one_line_exit_2_nothing_written(case, tmp_path, tiny_bert_dir, capsys):
    extra, message = BAD_RUNS[case]
    train = _bad(tmp_path, "train.csv", GOOD)
    dev_x = _bad(tmp_path, "dev_x.csv", "text,label\nfine,a\nodd,c\n")
    test_x = _bad(tmp_path, "test_x.csv", "text,label\nfine,-1\nfair,\nodd,c\n")  # -1 and empty: no label
    fill = {"{tmp}": str(tmp_path), "{train}": str(train), "{dev_x}": str(dev_x), "{test_x}": str(test_x)}
    argv = {"-t": "mine", "--train-file": str(train), "--validation-file": str(train), "-m": str(tiny_bert_dir),
            "-e": "1"}
    tail = []
    k = 0
    while k < len(extra):
        flag, value = extra[k], extra[k + 1]
        if flag == "--text-columns":
            tail, k = ["--text-columns", *extra[k + 1:]], len(extra)
            continue
        if value is None:
            argv.pop(flag, None)
        elif value is True:
            tail.append(flag)
        else:
            for a, b in fill.items():
                value = value.replace(a, b)
            argv[flag] = value
        k += 2
    out = tmp_path / "out"
    rc = run_cli(*[x for kv in argv.items() for x in kv], *tail, "-o", out, "--no-verbose")
    err = capsys.readouterr().err.strip()
    for a, b in fill.items():
        message = message.replace(a, b)
    assert rc == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_a_4_mb_row_is_cut_before_tokenizing_and_the_run_completes(tmp_path, tiny_bert_dir, capfd):
    rows = [[words(k), "ab"[k % 2]] for k in range(8)] + [["word " * 800_000, "a"]]
    train = write_csv(tmp_path / "t.csv", ["text", "label"], rows)
    result = run(files_cfg(tmp_path, train, train, model_name=str(tiny_bert_dir), max_seq_length=32))
    assert result["status"] == "complete"
    err = capfd.readouterr().err  # the run's logging writes to stderr (setup_logging replaces the root's handlers)
    assert "t.csv: 1 of 9 rows have a text of over 2560 characters, cut to that before tokenizing" in err, err


# ----------------------------------------------------------------------------- GLUE tasks given as files


def _glue_rows(folder: str, split: str, n: int) -> list[list[str]]:
    lines = (GLUE_DIR / folder / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
    return [ln.split("\t") for ln in lines[1:n + 1]]


def _same_training(a: Path, b: Path, metrics: tuple[str, ...]) -> None:
    x, y = load_file(a / "delta.safetensors"), load_file(b / "delta.safetensors")
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), "the trained tensors differ"
    ra, rb = (read_jsonl(f / "metrics.jsonl") for f in (a, b))
    ra, rb = ([r for r in rows if r["split"] == "dev"] for rows in (ra, rb))
    assert ra and [(r["epoch"], r["loss"], *(r[m] for m in metrics)) for r in ra] == \
           [(r["epoch"], r["loss"], *(r[m] for m in metrics)) for r in rb]


@needs_glue("SST-2")
def test_sst2_as_a_csv_with_other_names_and_string_labels_trains_exactly_as_sst2_by_name(tmp_path, tiny_bert_dir):
    train, dev, test = _glue_rows("SST-2", "train", 64), _glue_rows("SST-2", "dev", 32), _glue_rows("SST-2", "test", 12)
    glue = tmp_path / "glue" / "SST-2"
    glue.mkdir(parents=True)
    for name, rows, head in (("train", train, "sentence\tlabel"), ("dev", dev, "sentence\tlabel"),
                             ("test", test, "index\tsentence")):
        (glue / f"{name}.tsv").write_text(head + "\n" + "".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    names = {"0": "negative", "1": "positive"}
    files = tmp_path / "files"
    files.mkdir()
    write_csv(files / "train.csv", ["opinion", "verdict"], [[s, names[y]] for s, y in train])
    write_csv(files / "dev.csv", ["opinion", "verdict"], [[s, names[y]] for s, y in dev])
    write_csv(files / "test.csv", ["idx", "opinion"], [[i, s] for i, s in test])
    common = dict(model_name=str(tiny_bert_dir), epochs=2, fine_tune_type="bitfit", learning_rate=1e-2, seed=3,
                  predict_test=True, verbose=False)
    run(RunConfig(output_path=str(tmp_path / "by_name"), task_name="sst2", data_dir=str(tmp_path / "glue"), **common))
    run(RunConfig(output_path=str(tmp_path / "as_files"), task_name="reviews", train_file=str(files / "train.csv"),
                  validation_file=str(files / "dev.csv"), test_file=str(files / "test.csv"),
                  text_columns=["opinion"], label_column="verdict", **common))
    _same_training(tmp_path / "by_name", tmp_path / "as_files", ("accuracy",))
    glue_preds = (tmp_path / "by_name" / "SST-2.tsv").read_text().splitlines()[1:]
    mine = (tmp_path / "as_files" / PREDICTIONS_FILE).read_text().splitlines()
    assert mine[0] == "index\tprediction"
    assert [ln.split("\t") for ln in mine[1:]] == [[i, names[p]] for i, p in (ln.split("\t") for ln in glue_preds)]
    saved = json.loads((tmp_path / "as_files" / "config.json").read_text())
    assert saved["task_definition"] == {"name": "reviews", "labels": ["negative", "positive"],
                                        "text_fields": ["opinion"], "metrics": ["accuracy", "macro_f1", "mcc"]}
    results = json.loads((tmp_path / "as_files" / "results.json").read_text())
    assert set(results["best_metrics"]["dev"]) == {"accuracy", "macro_f1", "mcc", "loss"}


@needs_glue("STS-B")
def test_stsb_as_json_lines_trains_exactly_as_stsb_by_name(tmp_path, tiny_bert_dir):
    train, dev = _glue_rows("STS-B", "train", 48), _glue_rows("STS-B", "dev", 24)
    glue = tmp_path / "glue" / "STS-B"
    glue.mkdir(parents=True)
    head = (GLUE_DIR / "STS-B" / "train.tsv").read_text(encoding="utf-8").splitlines()[0]
    for name, rows in (("train", train), ("dev", dev)):
        (glue / f"{name}.tsv").write_text(head + "\n" + "".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    for name, rows in (("train", train), ("dev", dev)):
        write_jsonl(tmp_path / f"{name}.jsonl", [{"first": r[7], "second": r[8], "similarity": float(r[-1])}
                                                 for r in rows])
    common = dict(model_name=str(tiny_bert_dir), epochs=2, fine_tune_type="bitfit", learning_rate=1e-2, verbose=False)
    run(RunConfig(output_path=str(tmp_path / "by_name"), task_name="stsb", data_dir=str(tmp_path / "glue"), **common))
    run(RunConfig(output_path=str(tmp_path / "as_files"), task_name="similar", train_file=str(tmp_path / "train.jsonl"),
                  validation_file=str(tmp_path / "dev.jsonl"), label_column="similarity", **common))
    _same_training(tmp_path / "by_name", tmp_path / "as_files", ("pearson", "spearmanr"))
    definition = json.loads((tmp_path / "as_files" / "config.json").read_text())["task_definition"]
    assert definition["labels"] is None and definition["text_fields"] == ["first", "second"]
    rows = read_jsonl(tmp_path / "as_files" / "metrics.jsonl")
    dev_rows = [r for r in rows if r["split"] == "dev"]
    assert all(r["mse"] >= 0 for r in dev_rows)


# ----------------------------------------------------------------------------- resume, several processes


def test_a_task_of_files_resumes_bit_for_bit_and_refuses_files_that_changed(reviews, tmp_path, tiny_bert_dir,
                                                                           monkeypatch):
    train, dev, _ = reviews
    kw = dict(model_name=str(tiny_bert_dir), label_column="stars", epochs=3, fine_tune_type="bitfit", batch_size=8)
    whole = run(files_cfg(tmp_path, train, dev, output_path=str(tmp_path / "whole"), **kw))
    calls = {"n": 0}

    def requested(self):
        calls["n"] += 1
        if calls["n"] == 5:  # 3 steps an epoch: in epoch 2
            self.signum = 2
        return self.signum is not None

    monkeypatch.setattr(checkpoint.Interrupt, "requested", requested)
    with pytest.raises(RunStopped):
        run(files_cfg(tmp_path, train, dev, output_path=str(tmp_path / "cut"), **kw))
    monkeypatch.undo()
    changed = write_csv(tmp_path / "changed.csv", ["id", "review", "stars"],
                        [[f"t{k}", words(k), ["positive", "negative", "neutral", "mixed"][k % 4]] for k in range(24)])
    backup = train.read_bytes()
    train.write_bytes(changed.read_bytes())
    with pytest.raises(UserError, match="--resume: the data files now define task 'mine' as"):
        run(files_cfg(tmp_path, train, dev, output_path=str(tmp_path / "cut"), resume=True, **kw))
    train.write_bytes(backup)
    resumed = run(files_cfg(tmp_path, train, dev, output_path=str(tmp_path / "cut"), resume=True, **kw))
    assert resumed["best_metrics"] == whole["best_metrics"]
    a, b = load_file(tmp_path / "whole" / "delta.safetensors"), load_file(tmp_path / "cut" / "delta.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.cluster
def test_two_gloo_processes_train_a_task_of_files_as_one_process_does(reviews, tmp_path, tiny_bert_dir):
    train, dev, test = reviews
    common = ["-t", "mine", "--train-file", str(train), "--validation-file", str(dev), "--test-file", str(test),
              "--predict-test", "--label-column", "stars", "-f", "full_ft", "-m", str(tiny_bert_dir), "-e", "2",
              "--no-group-by-length", "--no-verbose"]
    two_processes_and_one(common, tmp_path)
    assert json.loads((tmp_path / "two" / "config.json").read_text())["num_processes"] == 2
    a, b = read_jsonl(tmp_path / "one" / "metrics.jsonl"), read_jsonl(tmp_path / "two" / "metrics.jsonl")
    assert [(r["epoch"], r["split"], r.get("accuracy"), r.get("macro_f1")) for r in a] == \
           [(r["epoch"], r["split"], r.get("accuracy"), r.get("macro_f1")) for r in b]
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5, abs=1e-6)
    assert (tmp_path / "one" / PREDICTIONS_FILE).read_text() == (tmp_path / "two" / PREDICTIONS_FILE).read_text()
    assert [ln.split("\t")[0] for ln in (tmp_path / "two" / PREDICTIONS_FILE).read_text().splitlines()] == \
           ["index"] + [f"x-{k}" for k in range(5)]


def test_submit_refuses_a_task_of_files_naming_its_predictions(reviews, tmp_path, tiny_bert_dir, capsys):
    train, dev, test = reviews
    out = tmp_path / "run"
    assert run_cli("-t", "mine", "--train-file", train, "--validation-file", dev, "--test-file", test, "--predict-test",
                   "--label-column", "stars", "-m", tiny_bert_dir, "-e", "1", "-o", out, "--no-verbose") == 0
    from bitfit.cli import main

    rc = main(["submit", str(out), "-o", str(tmp_path / "s.zip")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "a task of your own given as files; a GLUE submission takes GLUE's tasks only" in err, err
    assert not (tmp_path / "s.zip").exists()
    assert task_definition(get_task("mine"))["labels"] == ["negative", "neutral", "positive"]


METHOD_FLAGS = {"full_ft": {}, "bitfit": {"bias_terms": ["query", "intermediate"]}, "layers": {"layers": ["1"]},
                "sparse_mask": {}, "rand_uniform": {"rand_budget": 500}, "rand_row_col": {}, "frozen": {}}


@pytest.mark.parametrize("method", list(METHOD_FLAGS))
def test_every_fine_tune_type_trains_a_three_class_task_of_files(method, reviews, tmp_path, tiny_bert_dir):
    from bitfit.delta import read

    train, dev, _ = reviews
    result = run(files_cfg(tmp_path, train, dev, model_name=str(tiny_bert_dir), label_column="stars",
                           fine_tune_type=method, **METHOD_FLAGS[method]))
    assert result["status"] == "complete" and result["main_metric"] == "accuracy"
    d = read(tmp_path / "out" / "delta.safetensors")
    assert d.task.labels == ("negative", "neutral", "positive") and d.meta["policy"] == method
    head = [t for name, t in d.tensors.items() if name.startswith("classifier") and name.endswith("weight")]
    assert len(head) == 1 and head[0].shape[0] == 3
