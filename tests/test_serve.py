"""Serving: one backbone, task switching in place, prediction from deltas (API and CLI), end to end."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import torch

from bitfit import delta
from bitfit.__main__ import main
from bitfit.config import RunConfig
from bitfit.data import Example, encode
from bitfit.errors import UserError
from bitfit.models import load_model
from bitfit.serve import Backbone, parse_inputs
from bitfit.tasks import get_task
from bitfit import run
from bitfit.data import collator, sorted_loader
from conftest import GLUE_DIR, make_tiny_model_dir, needs_glue
from test_cli import make_glue_dir, run_cli
from test_delta import synthetic_delta

SENTENCES = ["the dog sat on the film", "a good movie", "she was not bad", "what a boring cat !", "i ran"]
PAIRS = [(a, b) for a, b in zip(SENTENCES, SENTENCES[1:] + SENTENCES[:1])]

# four tasks, four kinds of delta: whole biases, learned masks, random entries, one row/column per matrix
CASES = {"A": ("rte", "bitfit", {}), "B": ("stsb", "sparse_mask", {"mask_sparsity": 0.2}),
         "C": ("mnli", "rand_uniform", {}), "D": ("mrpc", "rand_row_col", {})}


@pytest.fixture(scope="module")
def bert_deltas(tiny_bert_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("deltas")
    return {k: synthetic_delta(tiny_bert_dir, root / k / "delta.safetensors", task, policy, seed=i, **kw)
            for i, (k, (task, policy, kw)) in enumerate(CASES.items())}


def fresh_logits(path: Path, texts) -> torch.Tensor:
    """Base + delta loaded from scratch, predicted in one batch ordered as the backbone orders it."""
    model, tokenizer = delta.load(path)
    d = delta.read(path)
    enc = encode([Example(t, None, str(i)) for i, t in enumerate(texts)], tokenizer, 128, d.task.is_regression)
    data = sorted_loader(enc, len(texts), collator(tokenizer))
    with torch.no_grad():
        logits = torch.cat([model(**batch).logits for batch in data.loader])
    return torch.from_numpy(data.restore(logits.numpy()))


def served_logits(bb: Backbone, name: str, texts) -> torch.Tensor:
    return bb.logits(name, [Example(t, None, str(i)) for i, t in enumerate(texts)], batch_size=len(texts))


def test_switching_a_b_a_equals_fresh_loads_and_changes_the_model_in_place(tiny_bert_dir, bert_deltas):
    bb = Backbone(str(tiny_bert_dir))
    base = {n: p.detach().clone() for n, p in bb.model.named_parameters() if not n.startswith("classifier")}
    storage = {n: p.data_ptr() for n, p in bb.model.named_parameters() if not n.startswith("classifier")}
    for name, path in bert_deltas.items():
        bb.add(name, path)
    fresh = {name: fresh_logits(path, PAIRS) for name, path in bert_deltas.items()}
    for name in ["A", "B", "A", "C", "B", "D", "A", "D", "C"]:
        got = served_logits(bb, name, PAIRS)
        assert got.shape == (len(PAIRS), get_task(CASES[name][0]).num_labels)
        assert torch.equal(got, fresh[name]), name
    assert {n: p.data_ptr() for n, p in bb.model.named_parameters() if n in storage} == storage  # in place
    bb.activate(None)
    for n, p in bb.model.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), n  # every entry any task changed is restored
    assert len(bb.switches) == 10 and all(s < 1.0 for _, _, s in bb.switches)
    memory = bb.memory()
    assert memory["task:A"] < memory["task:B"] and memory["backbone"] > sum(v for k, v in memory.items() if k.startswith("task:"))


def test_roberta_heads_of_different_shapes_swap(tiny_roberta_dir, tmp_path):
    paths = {t: synthetic_delta(tiny_roberta_dir, tmp_path / t / "delta.safetensors", t, "bitfit", seed=i)
             for i, t in enumerate(["rte", "stsb", "mnli"])}
    bb = Backbone.for_deltas(paths.values())
    assert list(bb.tasks) == ["rte", "stsb", "mnli"]
    for name in ["stsb", "rte", "mnli", "stsb", "rte"]:
        assert torch.equal(served_logits(bb, name, PAIRS), fresh_logits(paths[name], PAIRS)), name


def test_python_api_predicts_label_names_probabilities_and_scores(tiny_bert_dir, bert_deltas):
    bb = Backbone(str(tiny_bert_dir))
    bb.add("rte", bert_deltas["A"])
    bb.add("sts", bert_deltas["B"])
    out = bb.predict("rte", PAIRS[:2])
    assert [p.label in ("entailment", "not_entailment") for p in out] == [True, True]
    assert abs(sum(out[0].probs.values()) - 1) < 1e-6 and max(out[0].probs, key=out[0].probs.get) == out[0].label
    sts = bb.predict("sts", PAIRS[:2])
    assert sts[0].probs is None and sts[0].label == f"{min(5.0, max(0.0, sts[0].score)):.3f}"
    with pytest.raises(UserError, match="takes 2 text"):
        bb.predict("rte", SENTENCES[:2])
    with pytest.raises(UserError, match="unknown task 'cola'"):
        bb.predict("cola", SENTENCES[:2])
    with pytest.raises(UserError, match="already taken"):
        bb.add("rte", bert_deltas["A"])


def test_a_delta_from_another_base_is_refused(tmp_path, bert_deltas):
    other = make_tiny_model_dir(tmp_path / "other", "bert", seed=3)
    bb = Backbone(str(other))
    with pytest.raises(UserError, match="refusing to apply it to other weights"):
        bb.add("rte", bert_deltas["A"])
    assert bb.tasks == {}


# ---------------------------------------------------------------------------------------------- inputs


def test_inputs_follow_the_tasks_text_columns():
    rte, sst, mnli = get_task("rte"), get_task("sst2"), get_task("mnli")
    glue_rte = "index\tsentence1\tsentence2\n7\ta b\tc d\n8\te\tf\n"
    assert [(e.index, e.texts) for e in parse_inputs("x.tsv", glue_rte, rte)] == [("7", ("a b", "c d")), ("8", ("e", "f"))]
    assert [e.texts for e in parse_inputs("x.tsv", "id\tsentence\n1\tgood\n", sst)] == [("good",)]
    mnli_test = "index\tpromptID\tpairID\tgenre\tp1\tp2\tp3\tp4\tsentence1\tsentence2\n0\t1\t2\tg\t.\t.\t.\t.\tprem\thyp\n"
    assert [e.texts for e in parse_inputs("test_matched.tsv", mnli_test, mnli)] == [("prem", "hyp")]
    jsonl = '{"premise": "p", "hypothesis": "h", "idx": 4}\n\n{"premise": "q", "hypothesis": "i"}\n'
    assert [(e.index, e.texts) for e in parse_inputs("-", jsonl, mnli)] == [("4", ("p", "h")), ("1", ("q", "i"))]
    with pytest.raises(UserError, match="no text columns for RTE"):
        parse_inputs("x.tsv", "a\tb\n1\t2\n", rte)
    with pytest.raises(UserError, match=r"x.jsonl:2: not JSON"):
        parse_inputs("x.jsonl", '{"sentence": "a"}\n{oops\n', sst)
    with pytest.raises(UserError, match="no text fields for SST-2"):
        parse_inputs("x.jsonl", '{"text": "a"}\n', sst)


# ---------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def tiny_runs(tiny_bert_dir, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("runs")
    glue = make_glue_dir(root / "glue")
    for task, policy in (("rte", "bitfit"), ("stsb", "sparse_mask")):
        assert run_cli("-t", task, "-f", policy, "-m", tiny_bert_dir, "-o", root / task, "--data-dir", glue, "-e", 1,
                       "--predict-test", "--no-verbose", "-l", "1e-2") == 0
    return root, glue


def test_cli_predictions_from_the_delta_equal_the_runs_own(tiny_runs, tmp_path, capsys):
    root, glue = tiny_runs
    out = tmp_path / "preds"
    assert main(["predict", "--delta", str(root / "rte"), str(root / "stsb"), "--input", str(glue / "RTE" / "test.tsv"),
                 str(glue / "STS-B" / "test.tsv"), "-o", str(out)]) == 0
    assert (out / "rte.tsv").read_text() == (root / "rte" / "RTE.tsv").read_text()
    assert (out / "stsb.tsv").read_text() == (root / "stsb" / "STS-B.tsv").read_text()
    err = capsys.readouterr().err  # the log
    assert "loaded once" in err and "task switches: 1, median" in err


def test_cli_probs_jsonl_and_stdin(tiny_runs, tmp_path, capsys, monkeypatch):
    root, glue = tiny_runs
    assert main(["predict", "--delta", str(root / "rte" / "delta.safetensors"), "--input",
                 str(glue / "RTE" / "test.tsv"), "--probs", "--no-verbose"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "index\tprediction\tprob_entailment\tprob_not_entailment" and len(lines) == 11
    index, label, p0, p1 = lines[1].split("\t")
    assert index == "0" and label in ("entailment", "not_entailment") and abs(float(p0) + float(p1) - 1) < 1e-5

    monkeypatch.setattr(sys, "stdin", io.StringIO('{"sentence1": "the dog", "sentence2": "a cat", "idx": "x1"}\n'))
    assert main(["predict", "--delta", str(root / "rte"), str(root / "stsb"), "--input", "-", "--format", "jsonl",
                 "--probs", "--no-verbose"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["task"], r["index"]) for r in rows] == [("rte", "x1"), ("stsb", "x1")]
    assert set(rows[0]["probs"]) == {"entailment", "not_entailment"} and "probs" not in rows[1]
    assert 0.0 <= float(rows[1]["prediction"]) <= 5.0


@pytest.mark.parametrize("argv,message", [
    (["--input", "IN", "-o", "-"], "several deltas write one table each"),
    (["--input", "IN", "IN", "IN"], "3 inputs for 2 deltas"),
    (["--input", "nowhere.tsv", "-o", "OUT"], "input 'nowhere.tsv' not found"),
])
def test_cli_bad_input_is_one_line(tiny_runs, tmp_path, capsys, argv, message):
    root, glue = tiny_runs
    argv = [str(glue / "RTE" / "test.tsv") if a == "IN" else str(tmp_path / "o") if a == "OUT" else a for a in argv]
    assert main(["predict", "--delta", str(root / "rte"), str(root / "stsb"), *argv, "--no-verbose"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m bitfit predict: error: ") and message in err and err.count("\n") == 1


@pytest.mark.parametrize("argv,message", [
    (["-o", "DIR"], "is a folder; with one delta accepted: a file path"),
    (["--device", "tpu:3"], "device 'tpu:3' is not available here"),
    (["--batch-size", "0"], "--batch-size 0 is out of range"),
])
def test_cli_bad_flags_for_one_delta(tiny_runs, tmp_path, capsys, argv, message):
    root, glue = tiny_runs
    argv = [str(tmp_path) if a == "DIR" else a for a in argv]
    assert main(["predict", "--delta", str(root / "rte"), "--input", str(glue / "RTE" / "test.tsv"), *argv]) == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- MiniLM, real GLUE


@pytest.mark.slow
@needs_glue("RTE")
@needs_glue("STS-B")
def test_minilm_on_real_rte_and_stsb_predicts_from_the_delta_what_the_run_wrote(tmp_path):
    """Train MiniLM briefly on real RTE and STS-B, then predict the same test rows from the two deltas
    on one backbone (switching between them): every prediction equals the one the run wrote."""
    inputs, n = {}, 40
    for task in ("rte", "stsb"):
        glue_name = get_task(task).glue_name
        run(RunConfig(output_path=str(tmp_path / task), task_name=task, data_dir=str(GLUE_DIR), epochs=1,
                      max_train_samples=64, max_eval_samples=32, max_predict_samples=n, predict_test=True,
                      fine_tune_type="bitfit" if task == "rte" else "sparse_mask", verbose=False))
        lines = (GLUE_DIR / glue_name / "test.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
        inputs[task] = tmp_path / f"{glue_name}-head.tsv"
        inputs[task].write_text("".join(lines[:n + 1]), encoding="utf-8")
    out = tmp_path / "preds"
    assert main(["predict", "--delta", str(tmp_path / "rte"), str(tmp_path / "stsb"), str(tmp_path / "rte"),
                 "--input", str(inputs["rte"]), str(inputs["stsb"]), str(inputs["rte"]), "-o", str(out),
                 "--no-verbose"]) == 0
    rte = (tmp_path / "rte" / "RTE.tsv").read_text()
    assert len(rte.splitlines()) == n + 1
    assert (out / "rte@rte.tsv").read_text() == rte == (out / "rte@rte-2.tsv").read_text()  # A -> B -> A
    assert (out / "stsb.tsv").read_text() == (tmp_path / "stsb" / "STS-B.tsv").read_text()
    fingerprint = delta.read(tmp_path / "rte").fingerprint
    assert fingerprint == delta.fingerprint(*load_model("minilm", get_task("rte")))


def test_predicting_labelled_examples_ignores_their_labels(tiny_bert_dir, bert_deltas):
    """Examples read from a training or dev file carry gold labels; prediction must not feed them to the model."""
    bb = Backbone(str(tiny_bert_dir))
    bb.add("A", bert_deltas["A"])
    plain = [Example(t, None, str(i)) for i, t in enumerate(PAIRS)]
    labelled = [Example(t, 0, str(i)) for i, t in enumerate(PAIRS)]
    assert torch.equal(bb.logits("A", labelled), bb.logits("A", plain))
