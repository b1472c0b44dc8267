"""Deltas: the file a run writes, the base fingerprint, refusing other bases, never unpickling, merge."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from bitfit import delta, policies
from bitfit.policies import sparse
from bitfit.__main__ import main
from bitfit.config import RunConfig
from bitfit.errors import UserError
from bitfit.models import load_model
from bitfit.tasks import get_task
from bitfit.submit import format_prediction
from conftest import make_tiny_model_dir
from test_cli import make_glue_dir

def synthetic_delta(base_dir: Path, path: Path, task_name: str = "rte", policy: str = "bitfit", seed: int = 0,
                    **kw) -> Path:
    """A delta as a run would write it, without training: the policy's tensors moved at random."""
    task = get_task(task_name)
    torch.manual_seed(seed)
    model, fresh = load_model(str(base_dir), task)
    fp = delta.fingerprint(model, fresh)
    cfg = RunConfig(output_path=str(path.parent), task_name=task_name, model_name=str(base_dir),
                    fine_tune_type=policy, verbose=False, **kw)
    sel = policies.select(model, cfg)
    policies.apply(model, sel)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, mask in sel.trainable.items():
            p = {policies.added.canonical(n): q for n, q in model.named_parameters()}[name]
            noise = 0.5 * torch.randn(p.shape, generator=g)
            p.add_(noise if mask is None else noise * mask)
        for m in model.modules():
            if isinstance(m, sparse.TopKMask):
                m.scores.copy_(torch.rand(m.scores.shape, generator=g))
    delta.save(path, model, sel, fresh, cfg, task, epoch=1, base_fp=fp)
    return path


def batch(model, n: int = 5, length: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, model.config.vocab_size - 1, (n, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0  # one padded row
    return {"input_ids": ids, "attention_mask": mask}


def realign(model) -> None:
    """Move every parameter to fresh (64-byte aligned) memory, as a freshly initialised model has."""
    for p in model.parameters():
        p.data = p.data.clone()


@torch.no_grad()
def logits(model, inputs) -> torch.Tensor:
    model.eval()
    return model(**inputs).logits


# ---------------------------------------------------------------------------------------------- the file


def test_a_run_writes_only_what_it_learned_with_fingerprint_and_versions(tmp_path, tiny_bert_dir):
    from bitfit import run

    data = make_glue_dir(tmp_path / "glue")
    run(RunConfig(output_path=str(tmp_path / "run"), task_name="rte", model_name=str(tiny_bert_dir),
                  data_dir=str(data), epochs=1, verbose=False))
    d = delta.read(tmp_path / "run")  # a run folder is accepted
    base, fresh = load_model(str(tiny_bert_dir), get_task("rte"))
    assert d.meta["format"] == "bitfit-delta/1" and d.fingerprint == delta.fingerprint(base, fresh)
    assert d.fingerprint.startswith("sha256:") and len(d.fingerprint) == 7 + 64
    assert d.meta["task"] == "rte" and json.loads(d.meta["labels"]) == ["entailment", "not_entailment"]
    assert d.meta["policy"] == "bitfit" and d.meta["model_type"] == "bert" and d.base_model == str(tiny_bert_dir)
    versions = json.loads(d.meta["versions"])
    assert versions["torch"] == torch.__version__ and {"transformers", "safetensors", "bitfit"} <= set(versions)
    encoder_biases = {n for n, _ in base.named_parameters() if n.startswith("bert.") and n.endswith(".bias")}
    assert set(d.tensors) == encoder_biases | {"classifier.weight", "classifier.bias"}


def test_fingerprint_is_of_the_pretrained_weights_only(tmp_path, tiny_bert_dir):
    from transformers import AutoModel

    rte, fresh = load_model(str(tiny_bert_dir), get_task("rte"))
    mnli, fresh3 = load_model(str(tiny_bert_dir), get_task("mnli"))  # another head, other random init
    fp = delta.fingerprint(rte, fresh)
    assert delta.fingerprint(mnli, fresh3) == fp  # the task head never counts
    assert delta.fingerprint(AutoModel.from_pretrained(tiny_bert_dir)) == fp  # names relative to the encoder
    with torch.no_grad():
        rte.bert.encoder.layer[1].output.dense.weight[3, 5] += 1e-6
    assert delta.fingerprint(rte, fresh) != fp  # one changed weight is another base


def test_delta_of_each_policy_holds_its_packed_form(tmp_path, tiny_bert_dir):
    sizes = {}
    for policy, kw in (("bitfit", {}), ("rand_uniform", {}), ("sparse_mask", {"mask_sparsity": 0.2}), ("full_ft", {})):
        path = synthetic_delta(tiny_bert_dir, tmp_path / policy / "delta.safetensors", policy=policy, **kw)
        keys = set(delta.read(path).tensors)
        sizes[policy] = path.stat().st_size
        kinds = {k.partition("::")[2] for k in keys}
        assert kinds == {"bitfit": {""}, "rand_uniform": {"", "indices", "values"}, "sparse_mask": {"", "maskbits", "shape"},
                         "full_ft": {""}}[policy]
        # int32 indices: a tensor of the encoder has far fewer than 2**31 entries
        assert {delta.read(path).tensors[k].dtype for k in keys if k.endswith("::indices")} <= {torch.int32}
    assert sizes["bitfit"] < sizes["sparse_mask"] < sizes["full_ft"]


def test_int64_indices_of_an_earlier_delta_apply_as_the_int32_ones_do(tmp_path, tiny_bert_dir):
    path = synthetic_delta(tiny_bert_dir, tmp_path / "r" / "delta.safetensors", policy="rand_uniform")
    d = delta.read(path)
    wide = {k: (t.to(torch.int64) if k.endswith("::indices") else t) for k, t in load_file(path).items()}
    old = tmp_path / "old" / "delta.safetensors"
    old.parent.mkdir()
    meta = dict(d.meta, tensors_sha256=delta.tensors_digest(wide))  # as an earlier version wrote and signed it
    save_file(wide, old, metadata=meta | {"digest": delta.delta_digest(meta)})
    assert any(t.dtype == torch.int64 for k, t in delta.read(old).tensors.items() if k.endswith("::indices"))
    assert old.stat().st_size > path.stat().st_size
    a, _ = delta.load(path)
    b, _ = delta.load(old)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


# ---------------------------------------------------------------------------------------------- refusing other bases


def test_loading_onto_another_base_is_refused(tmp_path, tiny_bert_dir, tiny_roberta_dir):
    d = synthetic_delta(tiny_bert_dir, tmp_path / "d" / "delta.safetensors")
    other = make_tiny_model_dir(tmp_path / "other", "bert", seed=1)  # same architecture, other weights
    with pytest.raises(UserError, match="refusing to apply it to other weights"):
        delta.load(d, base=str(other))
    nudged = tmp_path / "nudged"
    shutil.copytree(tiny_bert_dir, nudged)
    weights = load_file(nudged / "model.safetensors")
    weights["encoder.layer.0.attention.self.query.weight"][0, 0] += 1e-6
    save_file(weights, nudged / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UserError, match="fingerprint"):
        delta.load(d, base=str(nudged))
    with pytest.raises(UserError, match="is for a bert model"):
        delta.load(d, base=str(tiny_roberta_dir))
    copy = tmp_path / "copy"
    shutil.copytree(tiny_bert_dir, copy)
    delta.load(d, base=str(copy))  # the same weights elsewhere are the same base


def test_cli_refusal_is_one_line_and_writes_nothing(tmp_path, tiny_bert_dir, capsys):
    d = synthetic_delta(tiny_bert_dir, tmp_path / "d" / "delta.safetensors")
    other = make_tiny_model_dir(tmp_path / "other", "bert", seed=1)
    assert main(["merge", str(d), "-o", str(tmp_path / "merged"), "--base", str(other), "--no-verbose"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m bitfit merge: error: delta ") and "\n" not in err and "--base" in err
    assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize("key", ["fingerprint", "digest", "tensors_sha256"])
def test_an_unverifiable_delta_is_refused_unless_allowed(tmp_path, tiny_bert_dir, caplog, key):
    d = delta.read(synthetic_delta(tiny_bert_dir, tmp_path / "d" / "delta.safetensors"))
    meta = {k: v for k, v in d.meta.items() if k != key}
    if key != "digest":
        meta["digest"] = delta.delta_digest(meta)  # as if written by a version without that key
    save_file(d.tensors, tmp_path / "old.safetensors", metadata=meta)
    with pytest.raises(UserError, match=f"has no {key} in its metadata, so it cannot be verified"):
        delta.load(tmp_path / "old.safetensors")
    delta.load(tmp_path / "old.safetensors", allow_unverified=True)
    assert "loading an unverified delta" in caplog.text


class _Bomb:
    """Unpickling this would create a file: proof that something was unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_reading_a_delta_never_unpickles(tmp_path, tiny_bert_dir, monkeypatch):
    d = synthetic_delta(tiny_bert_dir, tmp_path / "d" / "delta.safetensors", policy="sparse_mask", mask_sparsity=0.2)

    def forbidden(*a, **k):
        raise AssertionError("unpickling while reading a delta")

    for target in (pickle, torch):
        monkeypatch.setattr(target, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    delta.load(d)  # safetensors only

    marker = tmp_path / "unpickled"
    fake = tmp_path / "fake" / "delta.safetensors"
    fake.parent.mkdir()
    fake.write_bytes(pickle.dumps({"classifier.bias": _Bomb(marker)}))
    with pytest.raises(UserError, match="not a safetensors file"):
        delta.read(fake.parent)
    assert not marker.exists()


def test_only_bitfit_deltas_are_read(tmp_path):
    save_file({"x": torch.zeros(2)}, tmp_path / "plain.safetensors", metadata={"format": "pt"})
    with pytest.raises(UserError, match="not a bitfit delta"):
        delta.read(tmp_path / "plain.safetensors")
    with pytest.raises(UserError, match="not found"):
        delta.read(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------- merge


@pytest.mark.parametrize("arch,task_name,policy,kw", [
    ("bert", "rte", "bitfit", {}), ("bert", "stsb", "sparse_mask", {"mask_sparsity": 0.2}),
    ("bert", "mnli", "rand_uniform", {}), ("roberta", "rte", "rand_row_col", {}), ("roberta", "stsb", "bitfit", {}),
])
def test_merged_folder_predicts_exactly_as_the_delta_applied_model(tmp_path, tiny_bert_dir, tiny_roberta_dir,
                                                                    arch, task_name, policy, kw):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = tiny_bert_dir if arch == "bert" else tiny_roberta_dir
    d = synthetic_delta(base, tmp_path / "d" / "delta.safetensors", task_name, policy, **kw)
    applied, _ = delta.load(d)
    assert main(["merge", str(d.parent), "-o", str(tmp_path / "merged"), "--no-verbose"]) == 0

    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")  # plain transformers
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert "auto_map" not in config and config["architectures"] == [type(applied).__name__]
    assert merged.config.num_labels == get_task(task_name).num_labels
    for name, t in applied.state_dict().items():
        assert torch.equal(t, merged.state_dict()[name]), name
    inputs = batch(applied)
    a, m = logits(applied, inputs), logits(merged, inputs)
    if get_task(task_name).is_regression:
        assert [format_prediction(get_task(task_name), x) for x in a] == [format_prediction(get_task(task_name), x) for x in m]
    else:
        assert torch.equal(a.argmax(-1), m.argmax(-1))
    # bit for bit once both models' tensors sit at the same memory alignment: from_pretrained maps
    # the file, and BLAS kernels may round the last bit differently for a differently aligned weight
    assert torch.allclose(a, m, rtol=0, atol=1e-5)
    realign(applied), realign(merged)
    assert torch.equal(logits(merged, inputs), logits(applied, inputs))
    AutoTokenizer.from_pretrained(tmp_path / "merged")
    if get_task(task_name).labels:
        assert merged.config.id2label[0] == get_task(task_name).labels[0]


def test_merge_refuses_a_non_empty_folder(tmp_path, tiny_bert_dir, capsys):
    d = synthetic_delta(tiny_bert_dir, tmp_path / "d" / "delta.safetensors")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert main(["merge", str(d), "-o", str(tmp_path / "out"), "--no-verbose"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["merge", str(d), "-o", str(tmp_path / "out"), "--overwrite", "--no-verbose"]) == 0
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine" and (tmp_path / "out" / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temp folder left behind
