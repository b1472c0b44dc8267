"""Serving, predict and merge on deltas of tasks given as files (issue 27): the delta carries its task definition,
so a classification task with its own class names and a regression task with a pair of named text columns switch on
one backbone beside a GLUE task, predict writes their class names and raw scores, reads CSV as training does, and
merge writes the user's labels into a plain Hugging Face model."""

from __future__ import annotations

import io
import json
import random
import re
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from bitfit import delta, tasks
from bitfit.__main__ import main
from bitfit.errors import UserError
from bitfit.serve import Backbone, parse_inputs
from conftest import WORDS
from test_cli import run_cli
from test_delta import batch, logits, realign, synthetic_delta
from test_serve import fresh_logits, served_logits
from test_userdata import write_csv, write_jsonl

# task names of this file only: a process knows one definition per name (tasks.define), and other test files
# define tasks of their own
CLS, REG = "serve_reviews", "serve_similarity"
SENTENCES = ["the dog sat on the film", "a good movie", "she was not bad", "what a boring cat !", "i ran"]
SINGLES = [(s,) for s in SENTENCES]
PAIRS = [(a, b) for a, b in zip(SENTENCES, SENTENCES[1:] + SENTENCES[:1])]


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


@pytest.fixture(scope="module")
def runs(tiny_bert_dir, tmp_path_factory) -> dict[str, Path]:
    """Two tiny runs on files (1 epoch): reviews (CSV, class names 'neg'/'pos', one text column 'review') and
    similarity (JSON Lines, fractional scores, a pair 'left'/'right'); and a synthetic GLUE MNLI delta (3 labels)."""
    root = tmp_path_factory.mktemp("file_runs")
    rng = random.Random(0)
    data = root / "data"
    data.mkdir()
    for split, n in (("train", 16), ("dev", 6)):
        write_csv(data / f"reviews_{split}.csv", ["review", "stars"],
                  [[_sentence(rng, rng.randint(3, 9)), rng.choice(["neg", "pos"])] for _ in range(n)])
        write_jsonl(data / f"similarity_{split}.jsonl",
                    [{"left": _sentence(rng, 5), "right": _sentence(rng, 4), "score": round(rng.uniform(0, 9), 2) + 0.25}
                     for _ in range(n)])
    common = ["-m", tiny_bert_dir, "-e", 1, "-b", 4, "-l", "1e-2", "--no-verbose"]
    assert run_cli("-t", CLS, "--train-file", data / "reviews_train.csv", "--validation-file",
                   data / "reviews_dev.csv", "--label-column", "stars", "-f", "bitfit", "-o", root / "reviews",
                   *common) == 0
    assert run_cli("-t", REG, "--train-file", data / "similarity_train.jsonl", "--validation-file",
                   data / "similarity_dev.jsonl", "--label-column", "score", "--text-columns", "left", "right",
                   "-f", "sparse_mask", "-o", root / "similarity", *common) == 0
    return {"reviews": root / "reviews", "similarity": root / "similarity",
            "mnli": synthetic_delta(tiny_bert_dir, root / "mnli" / "delta.safetensors", "mnli", "rand_uniform", seed=2)}


def rewrite(src: Path, dst: Path, meta: dict | None = None, tensors: dict | None = None, digest: bool = True,
            drop: tuple[str, ...] = ()) -> Path:
    """A copy of delta ``src`` with metadata entries and tensors replaced (``drop``: entries removed); its digests
    recomputed if ``digest``, else left as they were (an edit a reader must notice)."""
    with safe_open(str(delta.delta_path(src)), "pt") as f:
        old_meta, old = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    new_meta = {k: v for k, v in (old_meta | (meta or {})).items() if k not in drop}
    new = old | (tensors or {})
    if digest:
        new_meta["tensors_sha256"] = delta.tensors_digest(new)
        new_meta["digest"] = delta.delta_digest(new_meta)
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file(new, str(dst), metadata=new_meta)
    return dst


@pytest.fixture
def isolated_tasks(monkeypatch):
    """The tasks this process knows, without this file's (as a fresh command starts), restored after the test (an
    edited delta defines its name, differently)."""
    monkeypatch.setattr(tasks, "_DEFINED", {k: v for k, v in tasks._DEFINED.items() if k not in (CLS, REG)})


def run_main(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# ---------------------------------------------------------------------------------------------- one backbone


def test_user_deltas_switch_beside_a_glue_delta_bit_identically(tiny_bert_dir, runs):
    bb = Backbone.for_deltas([runs["reviews"], runs["similarity"], runs["mnli"]])
    assert list(bb.tasks) == [CLS, REG, "mnli"]  # keyed by the delta's task name
    reviews, similarity = bb.tasks[CLS].task, bb.tasks[REG].task
    assert reviews.custom and reviews.labels == ("neg", "pos") and reviews.text_names[0] == ("review",)
    assert similarity.custom and similarity.is_regression and similarity.text_names[0] == ("left", "right")
    texts = {CLS: SINGLES, REG: PAIRS, "mnli": PAIRS}
    paths = {CLS: runs["reviews"] / "delta.safetensors", REG: runs["similarity"] / "delta.safetensors",
             "mnli": runs["mnli"]}
    fresh = {k: fresh_logits(p, texts[k]) for k, p in paths.items()}  # each delta alone, base loaded afresh
    assert {k: tuple(t.shape) for k, t in fresh.items()} == {CLS: (5, 2), REG: (5, 1), "mnli": (5, 3)}
    for name in [CLS, REG, CLS, "mnli", REG, "mnli", CLS, REG]:
        assert torch.equal(served_logits(bb, name, texts[name]), fresh[name]), name
    base = Backbone(str(tiny_bert_dir))
    bb.activate(None)
    for (n, p), (_, q) in zip(bb.model.named_parameters(), base.model.named_parameters()):
        if not n.startswith("classifier"):
            assert torch.equal(p, q), n  # leaving the last task restored every entry the three changed
    with pytest.raises(UserError, match=f"task {CLS} takes 1 text"):
        bb.predict(CLS, PAIRS)


# ---------------------------------------------------------------------------------------------- predict


def test_predict_writes_the_users_class_names_and_probabilities(runs, tmp_path, capsys):
    inp = write_jsonl(tmp_path / "in.jsonl", [{"review": s, "id": f"r{i}"} for i, s in enumerate(SENTENCES)])
    rc, out, err = run_main(capsys, "predict", "--delta", runs["reviews"], "-i", inp, "--probs", "--no-verbose")
    assert rc == 0, err
    lines = [line.split("\t") for line in out.splitlines()]
    assert lines[0] == ["index", "prediction", "prob_neg", "prob_pos"]
    probs = torch.softmax(fresh_logits(runs["reviews"] / "delta.safetensors", SINGLES), -1)
    for i, (index, label, neg, pos) in enumerate(lines[1:]):
        assert index == f"r{i}" and label == ("neg", "pos")[int(probs[i].argmax())]
        assert (float(neg), float(pos)) == pytest.approx(probs[i].tolist(), abs=1e-6)
    assert len(lines) == 1 + len(SENTENCES)


def test_predict_writes_raw_regression_scores_not_clipped_as_stsb(runs, tmp_path, capsys):
    """A regression task of the user's is written as predicted (six significant digits), not as STS-B's score
    clipped to [0, 5]: a delta whose head bias is moved by +10 predicts above 5, and it is written so."""
    src = runs["similarity"] / "delta.safetensors"
    with safe_open(str(src), "pt") as f:
        bias = f.get_tensor("classifier.bias")
    shifted = rewrite(src, tmp_path / "shifted" / "delta.safetensors", tensors={"classifier.bias": bias + 10})
    inp = write_jsonl(tmp_path / "pairs.jsonl", [{"left": a, "right": b} for a, b in PAIRS])
    for path in (src, shifted):
        rc, out, err = run_main(capsys, "predict", "--delta", path, "-i", inp, "--format", "jsonl", "--probs",
                                "--no-verbose")
        assert rc == 0, err
        rows = [json.loads(line) for line in out.splitlines()]
        scores = fresh_logits(path, PAIRS).squeeze(-1).tolist()
        assert [r["prediction"] for r in rows] == [f"{s:.6g}" for s in scores]
        assert [r["index"] for r in rows] == ["0", "1", "2", "3", "4"] and not any("probs" in r for r in rows)
    assert all(float(r["prediction"]) > 5 for r in rows)  # the shifted delta's: unclipped


def test_csv_input_with_quoted_commas_newlines_and_ids(runs, tmp_path, capsys, monkeypatch):
    texts = ["the film , it was good", "a bad\nmovie", 'she said "fun", and ran', "i ran"]
    ids = ["r-1", "r 2", "r,3", "4"]
    inp = write_csv(tmp_path / "in.csv", ["note", "id", "review"], [["x", i, t] for i, t in zip(ids, texts)])
    assert inp.read_text().count("\n") == 6  # the quoted line break spans two lines
    task = delta.read(runs["reviews"]).task
    examples = parse_inputs(str(inp), inp.read_text(), task)
    assert [(e.index, e.texts) for e in examples] == [(i, (t,)) for i, t in zip(ids, texts)]

    rc, out, err = run_main(capsys, "predict", "--delta", runs["reviews"], "-i", inp, "--probs", "--no-verbose")
    assert rc == 0, err
    rows = [line.split("\t") for line in out.splitlines()[1:]]
    assert [r[0] for r in rows] == ids
    probs = torch.softmax(fresh_logits(runs["reviews"] / "delta.safetensors", [(t,) for t in texts]), -1)
    assert [float(p) for r in rows for p in r[2:]] == pytest.approx(probs.flatten().tolist(), abs=1e-6)

    # standard input: CSV by its header (commas, no tab); no id column: rows numbered from 0
    monkeypatch.setattr(sys, "stdin", io.StringIO('review,stars\n"a, good\nmovie",pos\nbad,neg\n'))
    rc, out, err = run_main(capsys, "predict", "--delta", runs["reviews"], "-i", "-", "--no-verbose")
    assert rc == 0, err
    assert [line.split("\t")[0] for line in out.splitlines()] == ["index", "0", "1"]


@pytest.mark.parametrize("text,message", [
    # a record's first line, counted as training counts it (the quoted line break is line 3)
    ('id,review\na,"one\ntwo"\nb,x,y\n', r"in.csv:4: 3 columns, but the header names 2 \(id, review\)"),
    ('id,text\na,good\n', r"in.csv:1: no text columns for serve_reviews in header \['id', 'text'\]; accepted: a "
                          r"header naming review \(the column task serve_reviews was trained on\) or sentence"),
    ('id,review\na,"open\n', r"in.csv:2: not valid CSV"),
    ('id,review\n,good\n', r"in.csv:2: id '' \(column 'id'\) is empty"),
    ('id,review\n', r"in.csv: no examples to predict"),
    ('id\treview\na\tgood\n', r"in.csv:1: the header is one column holding tabs"),
])
def test_bad_csv_input_is_one_line(runs, tmp_path, capsys, text, message):
    inp = tmp_path / "in.csv"
    inp.write_text(text, encoding="utf-8")
    rc, out, err = run_main(capsys, "predict", "--delta", runs["reviews"], "-i", inp, "--no-verbose")
    assert rc == 2 and out == ""
    assert err.startswith("python -m bitfit predict: error: ") and err.count("\n") == 1, err
    assert re.search(message, err), err


def test_user_tasks_tsv_and_jsonl_inputs_take_their_own_column_names(runs):
    reviews, similarity = delta.read(runs["reviews"]).task, delta.read(runs["similarity"]).task
    got = parse_inputs("x.tsv", "id\tstars\treview\nq1\t?\tgood film\n\nq2\t?\tbad\n", reviews)
    assert [(e.index, e.texts) for e in got] == [("q1", ("good film",)), ("q2", ("bad",))]
    got = parse_inputs("x.jsonl", '{"right": "b", "left": "a", "idx": 7}\n', similarity)
    assert [(e.index, e.texts) for e in got] == [("7", ("a", "b"))]
    # no GLUE test-file layout for a task of the user's: a header without its columns is refused, named
    with pytest.raises(UserError, match=r"x.tsv:1: no text columns for serve_similarity in header \['id', 'a', 'b'\]; "
                                        r"accepted: a header naming left\+right \(the columns task serve_similarity "
                                        r"was trained on\) or sentence1\+sentence2$"):
        parse_inputs("x.tsv", "id\ta\tb\n1\tx\ty\n", similarity)
    with pytest.raises(UserError, match=r"x.jsonl:1: no text fields for serve_similarity in \['left', 'score'\]"):
        parse_inputs("x.jsonl", '{"left": "a", "score": 1}\n', similarity)
    with pytest.raises(UserError, match=r"x.csv:2: 1 columns, but the header names 2"):  # CSV text, not a file
        parse_inputs("x.csv", "left,right\nonly\n", similarity)


# ---------------------------------------------------------------------------------------------- merge


@pytest.mark.parametrize("which", ["reviews", "similarity"])
def test_merged_user_delta_predicts_as_the_delta_and_carries_its_labels(runs, tmp_path, capsys, which):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "merged"
    rc, stdout, err = run_main(capsys, "merge", runs[which], "-o", out, "--no-verbose")
    assert rc == 0 and stdout.strip() == str(out), err
    merged = AutoModelForSequenceClassification.from_pretrained(out)  # plain transformers, no bitfit
    applied, _ = delta.load(runs[which])
    inputs = batch(applied)
    assert torch.allclose(logits(merged, inputs), logits(applied, inputs), rtol=0, atol=1e-5)
    realign(applied), realign(merged)
    assert torch.equal(logits(merged, inputs), logits(applied, inputs))
    note = json.loads((out / delta.MERGE_NOTE).read_text())
    definition = json.loads(note["task_definition"])
    if which == "reviews":
        assert merged.config.id2label == {0: "neg", 1: "pos"} and merged.config.label2id == {"neg": 0, "pos": 1}
        assert merged.config.problem_type == "single_label_classification"
        assert definition["labels"] == ["neg", "pos"] and definition["text_fields"] == ["review"]
    else:
        assert merged.config.num_labels == 1 and merged.config.problem_type == "regression"
        assert definition["labels"] is None and definition["text_fields"] == ["left", "right"]


# ---------------------------------------------------------------------------------------------- edited deltas


def test_an_edited_task_definition_is_refused_by_the_digest(runs, tmp_path, capsys, isolated_tasks):
    src = runs["reviews"] / "delta.safetensors"
    with safe_open(str(src), "pt") as f:
        definition = json.loads(f.metadata()["task_definition"])
    edited = rewrite(src, tmp_path / "edited" / "delta.safetensors", digest=False,
                     meta={"task_definition": json.dumps(definition | {"labels": ["bad", "good"]})})
    pairs = write_jsonl(tmp_path / "in.jsonl", [{"review": "a good movie"}])
    for argv in (["predict", "--delta", edited, "-i", pairs], ["merge", edited, "-o", tmp_path / "merged"]):
        rc, out, err = run_main(capsys, *argv, "--no-verbose")
        assert rc == 2 and out == "" and err.count("\n") == 1, err
        assert "its metadata does not match the digest recorded when it was written" in err
    assert not (tmp_path / "merged").exists()


def test_a_refused_edited_delta_leaves_the_genuine_one_loadable(runs, tmp_path, isolated_tasks):
    src = runs["reviews"] / "delta.safetensors"
    with safe_open(str(src), "pt") as f:
        definition = json.loads(f.metadata()["task_definition"])
    edited = rewrite(src, tmp_path / "edited" / "delta.safetensors", digest=False,
                     meta={"task_definition": json.dumps(definition | {"labels": ["bad", "good"]})})
    with pytest.raises(UserError, match="does not match the digest"):
        delta.read(edited)
    assert delta.read(src).task.labels == ("neg", "pos")


def test_two_deltas_naming_different_tasks_alike_predict_side_by_side(runs, tmp_path, isolated_tasks, capsys):
    """A delta's task is its own (not made known to get_task by reading it): two users' 'serve_reviews' with other
    class names are served on one backbone, each with its own labels."""
    src = runs["reviews"] / "delta.safetensors"
    with safe_open(str(src), "pt") as f:
        definition = json.loads(f.metadata()["task_definition"])
    other = rewrite(src, tmp_path / "other" / "delta.safetensors",
                    meta={"task_definition": json.dumps(definition | {"labels": ["bad", "good"]})})
    inp = write_jsonl(tmp_path / "in.jsonl", [{"review": s} for s in SENTENCES])
    rc, out, err = run_main(capsys, "predict", "--delta", src, other, "-i", inp, "-o", tmp_path / "preds")
    assert rc == 0, err
    files = sorted((tmp_path / "preds").iterdir())
    assert len(files) == 2
    got = [{ln.split("\t")[1] for ln in f.read_text().splitlines()[1:]} for f in files]
    assert all(g <= {"neg", "pos"} or g <= {"bad", "good"} for g in got)
    assert any(g <= {"bad", "good"} for g in got) and any(g <= {"neg", "pos"} for g in got)


def _definitions(definition: dict) -> list[tuple[str, str]]:
    """(task_definition, what the one line says) for malformed definitions of the reviews delta."""
    return [
        ("{not json", "metadata 'task_definition' is not a JSON object"),
        (json.dumps([definition]), "metadata 'task_definition' is not a JSON object"),
        (json.dumps({"name": CLS}), "is not one; accepted: name, labels"),
        (json.dumps(definition | {"labels": ["pos"]}), "is not one; accepted: name, labels"),
        (json.dumps(definition | {"labels": "neg,pos"}), "is not one; accepted: name, labels"),
        (json.dumps(definition | {"text_fields": ["a", "b", "c"]}), "3 text columns; accepted: one, or a pair"),
        (json.dumps(definition | {"metrics": ["pearson"]}), "main metric 'pearson'"),
        (json.dumps(definition | {"name": "other_name"}), "its task_definition's name 'other_name' differ"),
        (json.dumps(definition | {"name": "bad name!"}), "its task_definition's name 'bad name!' differ"),
        (json.dumps(definition | {"labels": ["a", "b", "c"]}), "has shape (2,"),  # the head has two outputs
    ]


@pytest.mark.parametrize("case", range(10))
def test_with_allow_unverified_a_malformed_task_definition_is_one_line(runs, tmp_path, capsys, isolated_tasks, case):
    src = runs["reviews"] / "delta.safetensors"
    with safe_open(str(src), "pt") as f:
        value, message = _definitions(json.loads(f.metadata()["task_definition"]))[case]
    bad = rewrite(src, tmp_path / "bad" / "delta.safetensors", meta={"task_definition": value}, digest=False,
                  drop=("digest",))
    inp = write_jsonl(tmp_path / "in.jsonl", [{"review": "a good movie"}])
    for argv in (["predict", "--delta", bad, "-i", inp], ["merge", bad, "-o", tmp_path / "merged"]):
        rc, out, err = run_main(capsys, *argv, "--allow-unverified", "--no-verbose")
        assert rc == 2 and out == "", err
        assert message in err and "Traceback" not in err, err
        assert [line for line in err.splitlines() if "WARNING" not in line] == [err.splitlines()[-1]], err
        assert err.splitlines()[-1].startswith(f"python -m bitfit {argv[0]}: error: "), err
    assert not (tmp_path / "merged").exists()

