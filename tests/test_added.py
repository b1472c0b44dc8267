"""Methods that add modules (lora and ia3 through PEFT, Houlsby adapters): what trains, the start table, deltas,
merge, the serving backbone, the command line, two gloo processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bitfit import delta, policies
from bitfit.__main__ import main
from bitfit.config import RunConfig
from bitfit.models import load_model
from bitfit.policies import added
from bitfit.serve import Backbone
from bitfit.tasks import get_task
from conftest import two_processes_and_one
from test_cli import make_glue_dir, read_jsonl, run_cli
from test_delta import batch, logits
from test_policies import cfg, model, train
from test_serve import PAIRS, fresh_logits, served_logits

CASES = [("lora", {"lora_bias": "all", "lora_dropout": 0.1}), ("lora", {"lora_targets": ["key", "intermediate"]}),
         ("ia3", {}), ("adapters", {"adapter_size": 4})]


@pytest.mark.parametrize("arch", ["bert", "roberta"])
@pytest.mark.parametrize("policy,kw", CASES)
def test_added_parameters_train_the_base_stays_and_requires_grad_is_the_selection(arch, policy, kw):
    m = model(arch)
    sel = policies.select(m, cfg(policy, **kw))
    policies.apply(m, sel)
    assert sel.added and all(added.is_added(n) for n in sel.added)
    trains = {added.canonical(n) for n, p in m.named_parameters() if p.requires_grad}
    assert trains == set(sel.trainable) and set(sel.added) <= trains
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    train(m, sel, steps=4)  # apply() again is a no-op: the modules are in once
    assert {n for n, _ in m.named_parameters()} == set(before)
    for n, p in m.named_parameters():
        if added.canonical(n) in sel.trainable:
            assert (p != before[n]).float().mean() > 0.9, f"{n} trains but (mostly) did not move"
        else:
            assert torch.equal(p, before[n]), f"{n} is frozen but moved"


def test_start_table_counts_the_added_parameters_over_the_base_model():
    m = model("bert")
    base_total = sum(p.numel() for p in m.parameters())
    sel = policies.select(m, cfg("lora", lora_rank=3))
    policies.apply(m, sel)
    h, layers = m.config.hidden_size, m.config.num_hidden_layers
    lora = layers * 2 * 3 * (h + h)  # query and value, A (r x h) and B (h x r) each
    counts = policies.trainable_counts(m, sel)
    assert counts["added"] == lora and counts["trained_in_layers"] == lora and counts["total"] == base_total
    table = policies.trainable_table(m, sel)
    assert "attention.self.query lora_A (added) · layers 0-1" in table
    assert any(line.startswith("of which added modules") and f"{lora:,}" in line for line in table.splitlines())
    assert "(the base model, without the added modules)" in table


def test_houlsby_adapters_of_size_64_on_bert_large_are_the_paper_count():
    """Houlsby et al. train 3.6% of BERT-large's parameters on average over tasks, with sizes 8, 64 or 256 per task;
    size 64 is 2 x 24 adapters of (2 x 1024 x 64 + 64 + 1024) plus the 48 LayerNorms: 1.92%; size 256: 7.53%."""
    from transformers import BertConfig, BertForSequenceClassification

    with torch.device("meta"):
        big = BertForSequenceClassification(BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                                       intermediate_size=4096))
    sel = policies.select(big, cfg("adapters", adapter_size=64))
    policies.apply(big, sel)
    counts = policies.trainable_counts(big, sel)
    assert counts["added"] == 24 * 2 * (2 * 1024 * 64 + 64 + 1024) == 6_343_680
    assert counts["trained_in_layers"] == 6_343_680 + 24 * 2 * 2 * 1024
    assert round(100 * counts["trained_in_layers"] / counts["total"], 2) == 1.92


def save_trained(base_dir: Path, path: Path, task_name: str, policy: str, seed: int = 0, **kw):
    """A delta as a run writes it, after a few real optimizer steps; returns (path, the trained model)."""
    task = get_task(task_name)
    torch.manual_seed(seed)
    m, fresh = load_model(str(base_dir), task)
    fp = delta.fingerprint(m, fresh)
    rc = RunConfig(output_path=str(path.parent), task_name=task_name, model_name=str(base_dir), fine_tune_type=policy,
                   verbose=False, **kw)
    sel = policies.select(m, rc)
    guard = policies.apply(m, sel)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=5e-2)
    g = torch.Generator().manual_seed(seed)
    for _ in range(3):
        ids = torch.randint(5, m.config.vocab_size - 1, (4, 7), generator=g)
        labels = torch.rand(4, generator=g) if task.is_regression else torch.randint(0, task.num_labels, (4,), generator=g)
        m(input_ids=ids, labels=labels).loss.backward()
        opt.step(), opt.zero_grad(), guard.after_step()
    if sel.diffed:  # diff_prune writes its delta after the projection
        guard.end_epoch(sel.diff_search_epochs)
    delta.save(path, m, sel, fresh, rc, task, epoch=1, base_fp=fp)
    return path, m.eval()


@pytest.mark.parametrize("policy,kw", [("lora", {"lora_bias": "all"}), ("lora", {"layers": ["1"]}), ("ia3", {}),
                                       ("adapters", {"adapter_size": 4})])
def test_delta_holds_the_added_tensors_and_loads_to_the_same_model(tmp_path, tiny_bert_dir, policy, kw):
    path, trained = save_trained(tiny_bert_dir, tmp_path / "d" / "delta.safetensors", "rte", policy, **kw)
    d = delta.read(path)
    added_names = [n for n in d.tensors if added.is_added(n)]
    assert added_names and sorted(added_names) == sorted(n for n, _ in trained.named_parameters() if added.is_added(n))
    assert not any(".base_layer." in n for n in d.tensors)  # base tensors under their plain names
    assert d.config["fine_tune_type"] == policy
    loaded, _ = delta.load(d)
    inputs = batch(trained)
    assert torch.equal(logits(loaded, inputs), logits(trained, inputs))
    # a delta of one added-module method is refused as another's: its tensors do not fit what that method trains
    tensors = dict(d.tensors)
    other = "bitfit" if policy != "bitfit" else "lora"
    fresh, _ = load_model(str(tiny_bert_dir), get_task("rte"))
    with pytest.raises(Exception, match="does not fit this model|is not something policy"):
        delta.apply_tensors(fresh, tensors, policy=other, config={})


@pytest.mark.parametrize("policy,kw", [("lora", {"lora_bias": "lora_only", "lora_alpha": 32.0}), ("ia3", {})])
def test_merged_lora_and_ia3_folders_are_plain_models_predicting_as_the_delta(tmp_path, tiny_bert_dir, policy, kw):
    from transformers import AutoModelForSequenceClassification

    path, _ = save_trained(tiny_bert_dir, tmp_path / "d" / "delta.safetensors", "rte", policy, **kw)
    applied, _ = delta.load(path)
    assert main(["merge", str(path.parent), "-o", str(tmp_path / "merged"), "--no-verbose"]) == 0
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    base, _ = load_model(str(tiny_bert_dir), get_task("rte"))
    assert set(merged.state_dict()) == set(base.state_dict())  # no LoRA / IA3 tensor left: folded in
    changed = [n for n in base.state_dict() if not torch.equal(base.state_dict()[n], merged.state_dict()[n])]
    assert any(n.endswith("query.weight" if policy == "lora" else "key.weight") for n in changed)
    inputs = batch(applied)
    a, m = logits(applied, inputs), logits(merged, inputs)
    assert torch.equal(a.argmax(-1), m.argmax(-1)) and torch.allclose(a, m, rtol=0, atol=1e-5)
    assert not torch.allclose(logits(base, inputs), a, atol=1e-3)  # the delta did change the predictions


def test_merging_adapters_is_refused_in_one_line_and_writes_nothing(tmp_path, tiny_bert_dir, capsys):
    path, _ = save_trained(tiny_bert_dir, tmp_path / "d" / "delta.safetensors", "rte", "adapters", adapter_size=4)
    assert main(["merge", str(path), "-o", str(tmp_path / "merged"), "--no-verbose"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "adapters cannot be merged into a plain Hugging Face model" in err
    assert not (tmp_path / "merged").exists()


def test_backbone_switches_bitfit_lora_ia3_and_adapter_tasks_bit_exactly(tiny_bert_dir, tmp_path):
    specs = {"B": ("rte", "bitfit", {}), "L": ("stsb", "lora", {"lora_bias": "all"}), "I": ("mnli", "ia3", {}),
             "A": ("mrpc", "adapters", {"adapter_size": 4}), "L2": ("rte", "lora", {"lora_rank": 2}),
             "D": ("rte", "diff_prune", {"diff_sparsity": 0.05, "epochs": 2})}
    paths = {k: save_trained(tiny_bert_dir, tmp_path / k / "delta.safetensors", t, p, seed=i, **kw)[0]
             for i, (k, (t, p, kw)) in enumerate(specs.items())}
    bb = Backbone(str(tiny_bert_dir))
    base = {n: p.detach().clone() for n, p in bb.model.named_parameters() if not n.startswith("classifier")}
    modules = {n: m for n, m in bb.model.named_modules()}
    for k, p in paths.items():
        bb.add(k, p)
    assert {n: p.detach() for n, p in bb.model.named_parameters() if n in base}.keys() == base.keys()
    fresh = {k: fresh_logits(p, PAIRS) for k, p in paths.items()}
    for k in ["B", "L", "B", "I", "A", "L2", "L", "A", "I", "B", "L2"]:
        assert torch.equal(served_logits(bb, k, PAIRS), fresh[k]), k
    bb.activate(None)
    assert {n: m for n, m in bb.model.named_modules()} == modules  # the original projections are back
    for n, p in bb.model.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), n
    assert all(s < 1.0 for _, _, s in bb.switches)
    memory = bb.memory()
    assert memory["task:B"] < memory["task:L"] and memory["task:I"] < memory["task:A"]


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory) -> Path:
    return make_glue_dir(tmp_path_factory.mktemp("glue"))


TINY_RUNS = {"bitfit": [], "lora": ["--lora-rank", "4", "--lora-bias", "all"], "adapters": ["--adapter-size", "8"],
             "diff_prune": ["--diff-sparsity", "0.05"]}


@pytest.fixture(scope="module")
def tiny_runs(glue_dir, tiny_bert_dir, tmp_path_factory) -> Path:
    """One tree of real (tiny) RTE runs, one per Table 1 method, as a sweep lays them out."""
    root = tmp_path_factory.mktemp("table1")
    for policy, flags in TINY_RUNS.items():
        assert run_cli("-t", "rte", "-f", policy, *flags, "-m", tiny_bert_dir, "-o", root / policy / "seed0",
                       "--data-dir", glue_dir, "-e", 3, "-l", "1e-2", "--predict-test", "--no-verbose") == 0
    return root


@pytest.mark.parametrize("policy", list(TINY_RUNS))
def test_runs_write_deltas_that_predict_and_submit_what_the_run_wrote(tiny_runs, glue_dir, tmp_path, policy):
    import zipfile

    out = tiny_runs / policy / "seed0"
    res = json.loads((out / "results.json").read_text())
    assert res["trainable_params"] > 0 and res["status"] == "complete"
    conf = json.loads((out / "config.json").read_text())["config"]
    assert conf["fine_tune_type"] == policy
    assert main(["predict", "--delta", str(out), "--input", str(glue_dir / "RTE" / "test.tsv"), "-o",
                 str(tmp_path / "p.tsv"), "--no-verbose"]) == 0
    assert (tmp_path / "p.tsv").read_text() == (out / "RTE.tsv").read_text()
    assert main(["submit", str(out), "-o", str(tmp_path / "s.zip"), "--data-dir", str(glue_dir), "--allow-missing"]) == 0
    with zipfile.ZipFile(tmp_path / "s.zip") as z:
        assert z.read("RTE.tsv").decode() == (out / "RTE.tsv").read_text()


def test_report_puts_table_1s_methods_in_its_rows_with_their_parameter_share(tiny_runs, tmp_path):
    assert main(["report", str(tiny_runs), "-o", str(tmp_path / "report"), "--no-deltas", "--no-verbose"]) == 0
    table = (tmp_path / "report" / "README.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "RTE" not in line and "---" not in line]
    labels = [r.split(" | ")[0].removeprefix("| ") for r in rows]
    assert labels[:4] == ["adapters (size 8)", "diff_prune (sparsity 0.05)", "bitfit", "lora (r 4; bias all)"]
    assert labels[4].startswith("trivial baseline")
    share = {label: float(r.split(" | ")[1]) for label, r in zip(labels[:4], rows)}
    results = {p: json.loads((tiny_runs / p / "seed0" / "results.json").read_text()) for p in TINY_RUNS}
    assert share["bitfit"] == pytest.approx(results["bitfit"]["trainable_percent"], rel=0.01)
    assert share["diff_prune (sparsity 0.05)"] == pytest.approx(results["diff_prune"]["trainable_percent"], rel=0.01)
    assert share["bitfit"] < share["lora (r 4; bias all)"] < share["adapters (size 8)"]


@pytest.mark.parametrize("argv,message", [
    (["-f", "bitfit", "--lora-rank", "4"], "--lora-rank is read only by fine-tune type 'lora'"),
    (["-f", "lora", "--adapter-size", "4"], "--adapter-size is read only by fine-tune type 'adapters'"),
    (["-f", "lora", "--lora-targets", "query", "pooler"], "unknown LoRA target 'pooler'; accepted: one or more of query, key, value"),
    (["-f", "lora", "--lora-rank", "0"], "lora rank 0 is out of range; accepted: an integer from 1"),
    (["-f", "lora", "--lora-bias", "some"], "--lora-bias: invalid choice: 'some' (choose from 'none', 'all', 'lora_only')"),
    (["-f", "adapters", "--adapter-size", "-3"], "adapter size -3 is out of range"),
    (["-f", "ia3", "--lora-alpha", "4"], "--lora-alpha is read only by fine-tune type 'lora'"),
    (["-f", "diff_prune", "-e", "3", "--diff-search-epochs", "3"], "-e/--epochs 3 is too few; accepted: --epochs of at least 4"),
    (["-f", "diff_prune", "-e", "1"], "-e/--epochs 1 is too few; accepted: --epochs of at least 2"),
    (["-f", "diff_prune", "--diff-sparsity", "0"], "diff sparsity 0.0 is out of range; accepted: 0 < sparsity <= 1"),
    (["-f", "bitfit", "--diff-sparsity", "0.01"], "--diff-sparsity is read only by fine-tune type 'diff_prune'"),
])
def test_bad_options_are_one_line_and_write_nothing(tmp_path, glue_dir, tiny_bert_dir, capsys, argv, message):
    out = tmp_path / "run"
    assert run_cli("-t", "rte", *argv, "-m", tiny_bert_dir, "-o", out, "--data-dir", glue_dir, "--no-verbose") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


@pytest.mark.cluster  # minutes on a CPU: with the other multi-process emulations (python -m pytest -m cluster)
def test_two_gloo_processes_train_adapters_as_one_process_does(tmp_path, glue_dir, tiny_bert_dir):
    common = ["-t", "rte", "-f", "adapters", "--adapter-size", "4", "-m", str(tiny_bert_dir), "--data-dir",
              str(glue_dir), "-e", "2", "-l", "1e-2", "--predict-test", "--no-group-by-length", "--no-verbose"]
    two_processes_and_one(common, tmp_path)
    assert json.loads((tmp_path / "two" / "config.json").read_text())["num_processes"] == 2
    a, b = read_jsonl(tmp_path / "one" / "metrics.jsonl"), read_jsonl(tmp_path / "two" / "metrics.jsonl")
    assert [(r["epoch"], r["split"], r.get("accuracy")) for r in a] == [(r["epoch"], r["split"], r.get("accuracy")) for r in b]
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5, abs=1e-6)
    da, db = delta.read(tmp_path / "one"), delta.read(tmp_path / "two")
    assert da.tensors.keys() == db.tensors.keys()
    for k in da.tensors:
        assert torch.allclose(da.tensors[k], db.tensors[k], rtol=1e-4, atol=1e-6), k


@pytest.mark.cluster  # minutes on a CPU: with the other multi-process emulations (python -m pytest -m cluster)
def test_a_ray_sweep_over_table_1s_methods_writes_the_runs_run_glue_would(tiny_bert_dir, glue_dir, tmp_path):
    from safetensors.torch import load_file

    rc = main(["sweep", "--tasks", "rte", "--methods", "lora", "adapters", "diff_prune", "--learning-rates", "1e-2",
               "-e", "2", "--max-concurrent", "2", "--no-verbose", "-m", str(tiny_bert_dir), "--data-dir", str(glue_dir),
               "-o", str(tmp_path / "out")])
    assert rc == 0
    base = tmp_path / "out" / tiny_bert_dir.name / "full" / "rte"
    for method in ("lora", "adapters", "diff_prune"):
        folder = base / method / "lr1e-2_seed0"
        ref = tmp_path / method
        assert run_cli("-t", "rte", "-f", method, "-l", "1e-2", "-e", 2, "-m", tiny_bert_dir, "--data-dir", glue_dir,
                       "-o", ref, "--no-verbose") == 0
        strip = lambda rows: [{k: v for k, v in r.items() if "second" not in k} for r in rows]  # noqa: E731
        assert strip(read_jsonl(folder / "metrics.jsonl")) == strip(read_jsonl(ref / "metrics.jsonl")), method
        mine, theirs = load_file(folder / "delta.safetensors"), load_file(ref / "delta.safetensors")
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine), method


def test_a_delta_of_layers_auto_k_rebuilds_only_the_picked_layers_modules(tmp_path, glue_dir, tiny_bert_dir):
    """--layers auto:K picks the layers in a probe run: the delta's settings cannot say which, so its reader builds
    the modules of every layer and keeps those the delta has tensors for."""
    out = tmp_path / "run"
    assert run_cli("-t", "rte", "-f", "lora", "--layers", "auto:1", "-m", tiny_bert_dir, "-o", out, "--data-dir",
                   glue_dir, "-e", 2, "-l", "1e-2", "--predict-test", "--no-verbose") == 0
    d = delta.read(out)
    layers = {n.split(".layer.")[1].split(".")[0] for n in d.tensors if added.is_added(n)}
    assert len(layers) == 1
    model, _ = delta.load(d)
    assert {n.split(".layer.")[1].split(".")[0] for n, _ in model.named_parameters() if added.is_added(n)} == layers
    assert main(["predict", "--delta", str(out), "--input", str(glue_dir / "RTE" / "test.tsv"), "-o",
                 str(tmp_path / "p.tsv"), "--no-verbose"]) == 0
    assert (tmp_path / "p.tsv").read_text() == (out / "RTE.tsv").read_text()
