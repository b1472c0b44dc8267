"""End to end: run_glue.py writes a complete, truthful run folder; bad input writes nothing."""

from __future__ import annotations

import json
import re
import pickle
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import run_glue
from bitfit import hub
from conftest import GLUE_DIR, REPO, WORDS, needs_glue

EXPECTED = {"config.json", "metrics.jsonl", "results.json", "delta.safetensors", "learning_curves.png"}


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS[:30]) for _ in range(n))


def make_glue_dir(root: Path, seed: int = 0, n_train: int = 48, n_dev: int = 16, n_test: int = 10) -> Path:
    """A small folder in the GLUE TSV layout for RTE and STS-B, written from the tiny vocabulary."""
    rng = random.Random(seed)
    (root / "RTE").mkdir(parents=True)
    (root / "STS-B").mkdir(parents=True)
    head = "index\tsentence1\tsentence2\tlabel\n"
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = [f"{i}\t{_sentence(rng, rng.randint(3, 12))}\t{_sentence(rng, 4)}\t{rng.choice(['entailment', 'not_entailment'])}"
                for i in range(n)]
        (root / "RTE" / f"{split}.tsv").write_text(head + "\n".join(rows) + "\n")
        sts_head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
        rows = [f"{i}\tg\tf\ty\t{i:04d}\tnone\tnone\t{_sentence(rng, 5)}\t{_sentence(rng, 6)}\t{rng.uniform(0, 5):.3f}"
                for i in range(n)]
        (root / "STS-B" / f"{split}.tsv").write_text(sts_head + "\n".join(rows) + "\n")
    (root / "RTE" / "test.tsv").write_text("index\tsentence1\tsentence2\n" + "\n".join(
        f"{i}\t{_sentence(rng, 6)}\t{_sentence(rng, 3)}" for i in range(n_test)) + "\n")
    (root / "STS-B" / "test.tsv").write_text(
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\n" + "\n".join(
            f"{i}\tg\tf\ty\t{i:04d}\tnone\tnone\t{_sentence(rng, 5)}\t{_sentence(rng, 5)}" for i in range(n_test)) + "\n")
    return root


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory) -> Path:
    return make_glue_dir(tmp_path_factory.mktemp("glue"))


def run_cli(*argv) -> int:
    return run_glue.main([str(a) for a in argv])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_full_ft_run_folder_has_every_file_with_what_it_claims(tmp_path, glue_dir, tiny_bert_dir):
    out = tmp_path / "run"
    rc = run_cli("-t", "RTE", "-f", "full_ft", "-m", tiny_bert_dir, "-o", out, "--data-dir", glue_dir, "-e", 2,
                 "-l", "1e-3", "-b", 8, "--predict-test", "--save-evaluator", "--no-verbose")
    assert rc == 0
    assert {p.name for p in out.iterdir()} == EXPECTED | {"RTE.tsv", "evaluator.pkl"}

    config = json.loads((out / "config.json").read_text())
    assert config["config"]["task_name"] == "rte" and config["config"]["learning_rate"] == 1e-3
    assert config["environment"]["torch"] == torch.__version__ and "git_commit" in config["environment"]

    metrics = read_jsonl(out / "metrics.jsonl")
    assert [(m["epoch"], m["split"]) for m in metrics] == [(1, "train"), (1, "dev"), (2, "train"), (2, "dev")]
    dev = [m for m in metrics if m["split"] == "dev"]
    assert all(0.0 <= m["accuracy"] <= 1.0 for m in dev)

    results = json.loads((out / "results.json").read_text())
    best = max(dev, key=lambda m: m["accuracy"])  # earliest best epoch wins ties
    assert results["best_epoch"] == best["epoch"]
    assert results["best_metrics"]["dev"]["accuracy"] == best["accuracy"]
    assert results["trainable_params"] == results["total_params"] > 0
    assert results["train_samples"] == 2 * 48 and results["train_samples_per_second"] > 0
    assert results["peak_memory_mb"] > 0

    delta = load_file(out / "delta.safetensors")
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
    assert set(delta) == {n for n, _ in model.named_parameters()}
    with safe_open(out / "delta.safetensors", "pt") as f:
        meta = f.metadata()
    assert meta["task"] == "rte" and json.loads(meta["labels"]) == ["entailment", "not_entailment"]
    assert meta["policy"] == "full_ft" and meta["best_epoch"] == str(results["best_epoch"])

    assert (out / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (out / "RTE.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 11
    assert [l.split("\t")[0] for l in lines[1:]] == [str(i) for i in range(10)]
    assert {l.split("\t")[1] for l in lines[1:]} <= {"entailment", "not_entailment"}

    with open(out / "evaluator.pkl", "rb") as f:
        evaluator = pickle.load(f)
    assert evaluator["history"] == metrics and not any(isinstance(v, torch.nn.Module) for v in evaluator.values())


def test_frozen_regression_run_trains_only_the_head(tmp_path, glue_dir, tiny_bert_dir):
    out = tmp_path / "run"
    assert run_cli("-t", "stsb", "-f", "frozen", "-m", tiny_bert_dir, "-o", out, "--data-dir", glue_dir, "-e", 1,
                   "--predict-test", "--no-verbose") == 0
    delta = load_file(out / "delta.safetensors")
    assert set(delta) == {"classifier.weight", "classifier.bias"} and delta["classifier.weight"].shape == (1, 32)
    results = json.loads((out / "results.json").read_text())
    assert results["trainable_params"] == 33 and set(results["best_metrics"]["dev"]) == {"pearson", "spearmanr", "loss"}
    preds = [float(l.split("\t")[1]) for l in (out / "STS-B.tsv").read_text().splitlines()[1:]]
    assert len(preds) == 10 and all(0.0 <= p <= 5.0 for p in preds)


def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path, glue_dir, tiny_bert_dir):
    def metrics(seed, name):
        out = tmp_path / name
        assert run_cli("-t", "rte", "-f", "bitfit", "-m", tiny_bert_dir, "-o", out, "--data-dir", glue_dir, "-e", 2,
                       "-s", seed, "--no-verbose") == 0
        return [{k: v for k, v in m.items() if k != "seconds"} for m in read_jsonl(out / "metrics.jsonl")]

    first, again, other = metrics(1, "a"), metrics(1, "b"), metrics(2, "c")
    assert first == again
    assert first != other


def test_overwrite_is_required_for_a_non_empty_folder(tmp_path, glue_dir, tiny_bert_dir, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    argv = ["-t", "rte", "-m", tiny_bert_dir, "-o", out, "--data-dir", glue_dir, "-e", 1, "--no-verbose"]
    assert run_cli(*argv) == 2
    assert "is not empty; pass --overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert run_cli(*argv, "--overwrite") == 0
    assert (out / "keep.txt").read_text() == "mine" and (out / "results.json").exists()


def _bad_tsv(root: Path, body: str) -> Path:
    (root / "RTE").mkdir(parents=True)
    (root / "RTE" / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n" + body)
    (root / "RTE" / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n")
    return root


BAD_INPUTS = {
    "unknown task": (["-t", "imdb"], "unknown task 'imdb'; accepted: cola, sst2"),
    "unknown fine-tune type": (["-f", "qlora"], "invalid choice: 'qlora'"),
    "unknown bias term": (["--bias-terms", "query", "attn"], "unknown bias term 'attn'; accepted: query, key, value"),
    "learning rate": (["-l", "5"], "learning rate 5.0 is out of range; accepted: 0 < lr <= 1"),
    "zero learning rate": (["-l", "0"], "learning rate 0.0 is out of range"),
    "epochs": (["-e", "0"], "epochs 0 is out of range; accepted: an integer from 1"),
    "model folder": (["-m", "./no/such/model"], "model folder './no/such/model' does not exist"),
    "data folder": (["--data-dir", "{tmp}"], "has no RTE/train.tsv for task RTE"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_one_line_exit_2_nothing_written(case, tmp_path, glue_dir, tiny_bert_dir, capsys):
    extra, message = BAD_INPUTS[case]
    extra = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    argv = {"-t": "rte", "-m": str(tiny_bert_dir), "--data-dir": str(glue_dir), "-e": "1"}
    for flag, value in zip(extra[::2], extra[1::2]):
        argv[flag] = value
    args = [x for kv in argv.items() for x in kv]
    if "--bias-terms" in extra:
        args += extra[extra.index("--bias-terms"):]
    out = tmp_path / "out"
    rc = run_cli(*args, "-o", out, "--no-verbose")
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


@pytest.mark.parametrize("body,message", [
    ("0\ta\tb\tentailment\n1\tonly one column\n", "train.tsv:3: expected at least 3 tab-separated columns, found 2"),
    ("0\ta\tb\tmaybe\n", "train.tsv:2: unknown label 'maybe'; accepted: entailment, not_entailment"),
    ("", "the training set of RTE is empty"),
])
def test_bad_tsv_one_line_exit_2_nothing_written(body, message, tmp_path, tiny_bert_dir, capsys):
    root = _bad_tsv(tmp_path / "glue", body)
    out = tmp_path / "out"
    assert run_cli("-t", "rte", "-m", tiny_bert_dir, "--data-dir", root, "-o", out, "--no-verbose") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_unreachable_hub_model_and_data_fail_fast(tmp_path, glue_dir, monkeypatch, capsys):
    """The reachability check decides, before any download is tried (one never starts: it would hang offline)."""
    import datasets
    import huggingface_hub

    checks = []  # models and data both ask bitfit.hub
    monkeypatch.setattr(hub, "reachable", lambda timeout=3.0: checks.append(timeout) or False)

    def no_download(*a, **k):
        raise AssertionError("a download was tried although the hub is unreachable")

    monkeypatch.setattr(datasets, "load_dataset", no_download)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    monkeypatch.delenv("GLUE_DIR", raising=False)
    assert run_cli("-t", "rte", "-m", "no-such-org/no-such-model", "--data-dir", glue_dir, "-o", tmp_path / "a") == 2
    assert "model 'no-such-org/no-such-model' is not a local folder, not in the Hugging Face cache, and the hub cannot be reached" in capsys.readouterr().err
    assert run_cli("-t", "rte", "-o", tmp_path / "b") == 2
    assert "cannot reach the Hugging Face hub to download GLUE RTE; pass --data-dir" in capsys.readouterr().err
    assert len(checks) == 2  # one reachability check each (a TCP connect with its own timeout), nothing else
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_help_lists_every_setting_from_its_declaration():
    """Every RunConfig field is a flag (with its short form), its help text and its default shown once."""
    import dataclasses

    from bitfit.config import RunConfig

    proc = subprocess.run([sys.executable, str(REPO / "run_glue.py"), "-h"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())  # argparse wraps lines
    fields = dataclasses.fields(RunConfig)
    assert len(fields) >= 40
    for f in fields:
        flag = "--" + f.name.replace("_", "-")
        assert flag in text, flag
        if f.metadata["short"]:
            assert re.search(rf"(^| ){f.metadata['short']} \S+, {flag} ", text), flag
        assert " ".join(f.metadata["help"].split())[:40] in text, flag
        if f.default is True:
            assert f"--no-{flag[2:]}" in text, flag
        if f.default is not None and f.default is not False:
            assert text.count(f"(default: {f.default})") >= 1, flag
    assert "(default: None)" not in text and "(default: False)" not in text
    for option in ("bias_terms", "rand_budget", "mask_sparsity"):  # each method's own options say whose they are
        help_text = next(f.metadata["help"] for f in fields if f.name == option)
        assert help_text.split(" only:")[0] in ("bitfit", "rand_uniform", "sparse_mask"), option


def test_help_does_not_import_torch():
    code = ("import runpy, sys; sys.argv = ['run_glue.py', '-h']\n"
            "try:\n    runpy.run_path('run_glue.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'transformers', 'accelerate', 'numpy') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


@needs_glue("RTE")
def test_cli_with_bundled_minilm_on_real_rte_slice(tmp_path):
    out = tmp_path / "rte"
    cmd = [sys.executable, str(REPO / "run_glue.py"), "-t", "rte", "-f", "bitfit", "-o", str(out), "--data-dir",
           str(GLUE_DIR), "-e", "1", "-b", "8", "--max-train-samples", "32", "--max-eval-samples", "32",
           "--max-predict-samples", "16", "--predict-test", "--save-evaluator"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "model total" in proc.stderr  # the trainable-parameter table is logged at the start
    assert {p.name for p in out.iterdir()} == EXPECTED | {"RTE.tsv", "evaluator.pkl"}
    results = json.loads((out / "results.json").read_text())
    assert results["total_params"] == 22_713_986  # all-MiniLM-L6-v2 + a 2-way head
    assert 0 < results["trainable_percent"] < 1
    dev = read_jsonl(out / "metrics.jsonl")[1]
    assert dev["split"] == "dev" and results["best_metrics"]["dev"]["accuracy"] == dev["accuracy"]
    lines = (out / "RTE.tsv").read_text().splitlines()
    assert len(lines) == 17 and {l.split("\t")[1] for l in lines[1:]} <= {"entailment", "not_entailment"}
    delta = load_file(out / "delta.safetensors")
    assert all(n.endswith(".bias") or n.startswith("classifier.") for n in delta)
    assert sum(t.numel() for t in delta.values()) == results["trainable_params"]

