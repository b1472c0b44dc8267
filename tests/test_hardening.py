"""Adversarial inputs (issue 17): one writer per run folder, deltas verified before use, one line for
every failure a user can cause, nothing half-written, no leftovers."""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import run_glue
from bitfit import delta, io, preflight
from bitfit.errors import EnvironmentFailure, UserError
from bitfit.runlock import LOCK_FILE, RunLock
from bitfit.runstate import COMPLETE, read_state
from bitfit.serve import Backbone
from conftest import REPO
from test_cli import make_glue_dir
from test_delta import synthetic_delta


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory) -> Path:
    return make_glue_dir(tmp_path_factory.mktemp("glue"))


def cli(capsys, *argv) -> tuple[int, str]:
    rc = run_glue.main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def base_args(model, data, out, *extra):
    return ["-t", "rte", "-m", model, "--data-dir", data, "-o", out, "-e", "1", "--no-verbose", *extra]


# ---------------------------------------------------------------------------------------------
# One writer per run folder


def start_training(tiny_bert_dir, glue_dir, out: Path, *extra) -> subprocess.Popen:
    cmd = [sys.executable, str(REPO / "run_glue.py"), *map(str, base_args(tiny_bert_dir, glue_dir, out)), "-e", "500",
           *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    t = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() - t < timeout, f"{path} never appeared"
        time.sleep(0.2)


def test_a_second_run_or_resume_on_a_running_folder_stops_at_once_naming_the_pid(tmp_path, tiny_bert_dir, glue_dir):
    out = tmp_path / "run"
    first = start_training(tiny_bert_dir, glue_dir, out)
    contenders = []
    try:
        wait_for(out / "checkpoint" / "state.json", first)  # running, after its first epoch
        config = (out / "config.json").read_bytes()
        assert read_state(out).running == str(first.pid)
        contenders = [subprocess.Popen([sys.executable, str(REPO / "run_glue.py"),
                                        *map(str, base_args(tiny_bert_dir, glue_dir, out)), "-e", "500", "-s", "7", *extra],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                      for extra in ([], ["--overwrite"], ["--resume"])]
        for proc in contenders:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 2, err
            assert err.strip().splitlines() == [
                f"run_glue.py: error: run folder {str(out)!r} is in use by another run (pid {first.pid}); "
                "wait for it to end or stop it (one writer per folder)"]
        assert (out / "config.json").read_bytes() == config  # the second run wrote nothing
        assert json.loads(config)["config"]["seed"] == 0
    finally:  # every process this test started ends with it, whatever failed (a contender that wrongly trains too)
        for proc in [first, *contenders]:
            proc.kill()
            proc.wait()
    # killed with -9: the OS released the lock, and the run can be resumed
    assert read_state(out).running is None and read_state(out).status == "interrupted"
    with RunLock(out):
        pass


def test_two_runs_started_together_never_mix_their_files(tmp_path, tiny_bert_dir, glue_dir):
    out = tmp_path / "run"
    procs = [subprocess.Popen([sys.executable, str(REPO / "run_glue.py"),
                               *map(str, base_args(tiny_bert_dir, glue_dir, out)), "-e", "2", "-s", str(seed)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    loser = next(err for rc, err in results if rc == 2)
    assert "is in use by another run" in loser
    winner_seed = 1 if results[0][0] == 0 else 2
    assert json.loads((out / "config.json").read_text())["config"]["seed"] == winner_seed
    assert json.loads(delta.read(out).meta["config"])["seed"] == winner_seed
    assert read_state(out).status == COMPLETE


def test_a_failed_start_leaves_no_folder_and_releases_the_lock(tmp_path, capsys, tiny_bert_dir, glue_dir):
    (tmp_path / "kept").mkdir()
    out = tmp_path / "kept" / "new" / "deeper" / "run"
    rc, err = cli(capsys, *base_args(tiny_bert_dir, glue_dir, out, "--max-seq-length", "100000"))
    assert rc == 2 and "max seq length 100000 is above what model" in err and "accepted: 8 to 128" in err
    assert not (tmp_path / "kept" / "new").exists()  # nor the parents it made for -o
    assert (tmp_path / "kept").is_dir()  # what was there before stays
    with RunLock(out):  # free again
        pass


# ---------------------------------------------------------------------------------------------
# Deltas verified before use


def tampered(src: Path, dst: Path, edit_meta=None, edit_tensors=None, resign: bool = True) -> Path:
    """A copy of delta ``src`` with its metadata and/or tensors edited; ``resign`` recomputes both digests,
    as anyone editing it on purpose can (they are integrity checks, not signatures), so only the content checks
    can catch it."""
    d = delta.read(src)
    tensors = {k: v.clone() for k, v in d.tensors.items()}
    meta = dict(d.meta)
    if edit_tensors:
        edit_tensors(tensors)
    if edit_meta:
        edit_meta(meta)
    if resign:
        meta["tensors_sha256"] = delta.tensors_digest(tensors)
        meta["digest"] = delta.delta_digest(meta)
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, dst, metadata=meta)
    return dst


@pytest.fixture(scope="module")
def good_delta(tmp_path_factory, tiny_bert_dir) -> Path:
    return synthetic_delta(tiny_bert_dir, tmp_path_factory.mktemp("delta") / "delta.safetensors")


def refused_everywhere(path: Path, tiny_bert_dir, tmp_path, message: str) -> None:
    """predict (the serving backbone), merge and load all refuse it with one line containing ``message``."""
    with pytest.raises(UserError, match=message):
        delta.load(path)
    with pytest.raises(UserError, match=message):
        delta.merge(path, tmp_path / "merged")
    with pytest.raises(UserError, match=message):
        Backbone(str(tiny_bert_dir)).add("t", path)
    assert not (tmp_path / "merged").exists()


def test_a_bitfit_delta_carrying_a_weight_matrix_is_refused(tmp_path, good_delta, tiny_bert_dir):
    def add_matrix(t):
        t["bert.encoder.layer.0.attention.self.query.weight"] = torch.zeros(32, 32)

    def add_embeddings(t):
        t["bert.embeddings.word_embeddings.weight"] = torch.zeros(100, 32)

    for i, edit in enumerate((add_matrix, add_embeddings)):
        path = tampered(good_delta, tmp_path / f"d{i}.safetensors", edit_tensors=edit)
        refused_everywhere(path, tiny_bert_dir, tmp_path, "is not something policy 'bitfit' trains")


def test_a_delta_with_nan_or_inf_is_refused(tmp_path, good_delta, tiny_bert_dir):
    for value in (float("nan"), float("inf")):
        def poison(t, value=value):
            t["classifier.bias"][0] = value

        path = tampered(good_delta, tmp_path / f"{value}.safetensors", edit_tensors=poison)
        refused_everywhere(path, tiny_bert_dir, tmp_path, "holds NaN or infinite values")


def test_a_delta_whose_task_was_edited_to_another_label_count_is_refused(tmp_path, good_delta, tiny_bert_dir):
    def to_mnli(meta):
        meta["task"] = "mnli"
        meta["labels"] = json.dumps(["contradiction", "entailment", "neutral"])

    path = tampered(good_delta, tmp_path / "mnli.safetensors", edit_meta=to_mnli)
    refused_everywhere(path, tiny_bert_dir, tmp_path, r"has shape \(2,( 32)?\); accepted: \(3,( 32)?\)")


def test_metadata_edited_without_recomputing_the_digest_is_refused(tmp_path, good_delta, tiny_bert_dir):
    def to_wnli(meta):  # same label count: only the digest can tell
        meta["task"] = "wnli"

    path = tampered(good_delta, tmp_path / "wnli.safetensors", edit_meta=to_wnli, resign=False)
    refused_everywhere(path, tiny_bert_dir, tmp_path, "metadata does not match the digest")


def _as_entries(tensors: dict, name: str, indices: list) -> None:
    if name in tensors:
        del tensors[name]
        tensors[f"{name}::indices"] = torch.tensor(indices)
        tensors[f"{name}::values"] = torch.zeros(len(indices))


@pytest.mark.parametrize("edit,message", [
    (lambda m, t: m.__setitem__("config", "{not json"), "metadata 'config' is not a JSON object"),
    (lambda m, t: m.__setitem__("labels", "7"), "metadata 'labels' is not a JSON list"),
    (lambda m, t: m.__setitem__("policy", "magic"), "policy 'magic' is unknown"),
    (lambda m, t: _as_entries(t, "bert.encoder.layer.0.output.dense.bias", [0, 10**6]), "outside 0..31"),
    (lambda m, t: _as_entries(t, "bert.encoder.layer.0.output.dense.bias", [0.0, 1.0]),
     "has float32 indices; accepted: int32 or int64"),
])
def test_malformed_delta_metadata_is_one_line(tmp_path, good_delta, tiny_bert_dir, edit, message):
    path = tampered(good_delta, tmp_path / "bad.safetensors", edit_meta=lambda m: edit(m, {}),
                    edit_tensors=lambda t: edit({}, t))
    with pytest.raises(UserError, match=message):
        delta.load(path, allow_unverified=True)


def test_short_mask_bits_are_refused(tmp_path, tiny_bert_dir):
    src = synthetic_delta(tiny_bert_dir, tmp_path / "m" / "delta.safetensors", policy="sparse_mask", mask_sparsity=0.2)
    key = next(k for k in delta.read(src).tensors if k.endswith("::maskbits"))

    def shorten(t):
        t[key] = t[key][:3].clone()

    path = tampered(src, tmp_path / "short.safetensors", edit_tensors=shorten)
    refused_everywhere(path, tiny_bert_dir, tmp_path, "mask bits hold 24 entries")


def _mutate(rng: random.Random, meta: dict, tensors: dict) -> str:
    """One random edit of a delta; returns what it did (for the failure message)."""
    kind = rng.choice(["meta-value", "meta-drop", "meta-add", "tensor-flip", "tensor-drop", "tensor-add", "tensor-shape"])
    if kind.startswith("meta"):
        key = rng.choice(sorted(meta))
        if kind == "meta-value":
            meta[key] = rng.choice(["", "null", "{}", "[]", "rte", "bitfit", "x" * 3, meta[key][::-1], meta[key] + " "])
        elif kind == "meta-drop":
            del meta[key]
        else:
            meta[f"extra{rng.randint(0, 9)}"] = "1"
        return f"{kind} {key}"
    key = rng.choice(sorted(tensors))
    if kind == "tensor-flip":
        t = tensors[key].clone()
        flat = t.view(-1)
        i = rng.randrange(flat.numel())
        flat[i] = flat[i] + 1 if not t.is_floating_point() else flat[i] * -3.5 + 0.25
        tensors[key] = t
    elif kind == "tensor-drop":
        del tensors[key]
    elif kind == "tensor-add":
        tensors[key + "_copy"] = tensors[key].clone()
    else:
        tensors[key] = tensors[key].flatten()[:-1].clone() if tensors[key].numel() > 1 else torch.zeros(2)
    return f"{kind} {key}"


def test_fuzzing_a_real_delta_finds_no_traceback_and_no_silent_tampering(tmp_path, good_delta, tiny_bert_dir):
    """200 random edits of metadata and tensors: every one is refused with a UserError by read/load and by
    the serving backbone; none raises anything else, none is applied."""
    bb = Backbone(str(tiny_bert_dir))
    rng = random.Random(0)
    original = delta.read(good_delta)
    for i in range(200):
        meta, tensors = dict(original.meta), {k: v.clone() for k, v in original.tensors.items()}
        what = " + ".join(_mutate(rng, meta, tensors) for _ in range(rng.randint(1, 2)))
        path = tmp_path / f"f{i}.safetensors"
        save_file(tensors, path, metadata=meta)
        for use in (lambda: delta.load(path), lambda: bb.add(f"t{i}", path)):
            try:
                use()
            except UserError as e:
                assert len(str(e).splitlines()) == 1, (what, str(e))
            else:
                pytest.fail(f"tampered delta accepted: {what}")
        path.unlink()


# ---------------------------------------------------------------------------------------------
# Validation that knows the domain; one line for every failure a user can cause


def test_stsb_labels_outside_0_to_5_or_nan_name_the_file_and_line(tmp_path, capsys, tiny_bert_dir, glue_dir):
    for bad in ("7.5", "nan", "-1", "inf"):
        data = tmp_path / f"glue_{bad}"
        make_glue_dir(data)
        lines = (data / "STS-B" / "train.tsv").read_text().splitlines()
        cols = lines[3].split("\t")
        lines[3] = "\t".join(cols[:-1] + [bad])
        (data / "STS-B" / "train.tsv").write_text("\n".join(lines) + "\n")
        out = tmp_path / f"run_{bad}"
        rc, err = cli(capsys, "-t", "stsb", "-m", tiny_bert_dir, "--data-dir", data, "-o", out, "-e", "1")
        assert rc == 2 and err.strip().splitlines() == [
            f"run_glue.py: error: {data / 'STS-B' / 'train.tsv'}:4: label {bad!r} is not a similarity score; "
            "accepted: a number from 0 to 5"]
        assert not out.exists()


@pytest.mark.parametrize("breakage,message", [
    (lambda d: (d / "config.json").write_text(""), "is not a valid JSON file"),
    (lambda d: (d / "config.json").write_text('{"model_type": "bert", "hidden_size": "wide"}'), "cannot be loaded"),
    (lambda d: [p.unlink() for p in d.glob("*.safetensors")], "no file named model.safetensors"),
    (lambda d: [p.write_bytes(p.read_bytes()[:100]) for p in d.glob("*.safetensors")], "SafetensorError"),
])
def test_broken_model_folders_are_one_line(tmp_path, capsys, tiny_bert_dir, glue_dir, breakage, message):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, model)
    breakage(model)
    rc, err = cli(capsys, *base_args(model, glue_dir, tmp_path / "out"))
    assert rc == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert f"model folder {str(model)!r} cannot be loaded" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("split", ["dev", "test"])
def test_a_dev_or_test_file_with_only_a_header_is_one_line(tmp_path, capsys, tiny_bert_dir, split):
    data = make_glue_dir(tmp_path / "glue")
    path = data / "RTE" / f"{split}.tsv"
    path.write_text(path.read_text().splitlines()[0] + "\n")
    rc, err = cli(capsys, *base_args(tiny_bert_dir, data, tmp_path / "out", "--predict-test"))
    assert rc == 2 and err.strip().splitlines() == [
        f"run_glue.py: error: {path} has no examples (only a header?); accepted: a RTE {split} file with at least one row"]
    assert not (tmp_path / "out").exists()


def test_an_output_folder_under_a_file_is_one_line(tmp_path, capsys, tiny_bert_dir, glue_dir):
    (tmp_path / "afile").write_text("x")
    rc, err = cli(capsys, *base_args(tiny_bert_dir, glue_dir, tmp_path / "afile" / "run"))
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "is under" in err and "which is a file" in err, err


def test_a_full_disk_is_one_line_exit_74_and_nothing_half_written(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    target.write_text('{"old": true}')
    real_replace = os.replace

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "replace", full)
    with pytest.raises(EnvironmentFailure, match="No space left on device"):
        io.write_json(target, {"new": True})
    monkeypatch.setattr(io.os, "replace", real_replace)
    assert target.read_text() == '{"old": true}' and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_a_full_disk_during_a_run_exits_74_with_one_line(tmp_path, capsys, monkeypatch, tiny_bert_dir, glue_dir):
    real = io.write_text

    def full_at_metrics(path, text):
        if Path(path).name == "metrics.jsonl":
            raise EnvironmentFailure(f"cannot write {path}: No space left on device (it is left as it was; free space "
                                     "or write to another disk)")
        return real(path, text)

    monkeypatch.setattr(io, "write_text", full_at_metrics)
    rc, err = cli(capsys, *base_args(tiny_bert_dir, glue_dir, tmp_path / "out"))
    assert rc == 74 and err.strip().splitlines()[-1].startswith("run_glue.py: error: cannot write")
    assert not list((tmp_path / "out").rglob("*.tmp"))


@pytest.mark.parametrize("file", ["config.json", "results.json"])
def test_resume_with_a_corrupt_json_file_is_one_line(tmp_path, capsys, tiny_bert_dir, glue_dir, file):
    out = tmp_path / "out"
    assert cli(capsys, *base_args(tiny_bert_dir, glue_dir, out, "--keep-checkpoint"))[0] == 0
    (out / file).write_text("{broken")
    rc, err = cli(capsys, *base_args(tiny_bert_dir, glue_dir, out, "--resume"))
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert ("results.json is unreadable" if file == "results.json" else "no usable config.json (unreadable") in err, err


def test_a_non_utf8_prediction_file_is_refused_by_submit(tmp_path):
    from bitfit.submit import check_file
    from bitfit.tasks import get_task

    path = tmp_path / "RTE.tsv"
    path.write_bytes(b"index\tprediction\n0\t\xff\xfe\n")
    with pytest.raises(UserError, match="not valid UTF-8"):
        check_file(path, get_task("rte"), None, 1, "test")


# ---------------------------------------------------------------------------------------------
# No leftovers, no false refusals


def test_stale_temp_files_are_removed_when_a_run_resumes(tmp_path, capsys, tiny_bert_dir, glue_dir):
    out = tmp_path / "out"
    assert cli(capsys, *base_args(tiny_bert_dir, glue_dir, out, "-e", "2"))[0] == 0
    state = read_state(out)
    # as if killed mid-write: a temp file in the folder and one in the checkpoint
    (out / ".results.json.abc123.tmp").write_text("half")
    (out / "checkpoint").mkdir(exist_ok=True)
    (out / "checkpoint" / ".state-e3.safetensors.x.tmp").write_bytes(b"0" * 100)
    assert state.status == COMPLETE
    assert cli(capsys, *base_args(tiny_bert_dir, glue_dir, out, "-e", "2", "--overwrite"))[0] == 0
    assert not list(out.rglob("*.tmp"))


def test_a_run_killed_while_deleting_its_checkpoint_is_complete(tmp_path, capsys, tiny_bert_dir, glue_dir):
    out = tmp_path / "out"
    assert cli(capsys, *base_args(tiny_bert_dir, glue_dir, out, "--keep-checkpoint"))[0] == 0
    for f in list((out / "checkpoint").glob("*.safetensors"))[:1]:
        f.unlink()  # the deletion got this far
    assert read_state(out).status == COMPLETE
    rc, err = cli(capsys, *base_args(tiny_bert_dir, glue_dir, out, "--resume"))
    assert rc == 2 and "nothing to resume" in err and "the run is already complete" in err


def test_resume_compares_normalised_paths(tmp_path, capsys, monkeypatch, tiny_bert_dir, glue_dir):
    """Started with relative paths, resumed with absolute ones ending in '/': the same run."""
    from bitfit import checkpoint

    calls = {"n": 0}

    def after_epoch_one(self):  # 48 examples / batch 8 = 6 steps an epoch: stop in epoch 2
        calls["n"] += 1
        return calls["n"] > 6

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(checkpoint.Interrupt, "requested", after_epoch_one)
    rc, err = cli(capsys, "-t", "rte", "-m", os.path.relpath(tiny_bert_dir), "--data-dir", os.path.relpath(glue_dir),
                  "-o", "out", "-e", "2", "--no-verbose")
    assert rc == 130, err
    monkeypatch.setattr(checkpoint.Interrupt, "requested", lambda self: False)
    rc, err = cli(capsys, "-t", "rte", "-m", f"{tiny_bert_dir}/", "--data-dir", f"{glue_dir}/", "-o",
                  f"{tmp_path / 'out'}/", "-e", "2", "--no-verbose", "--resume")
    assert rc == 0, err
    assert read_state(tmp_path / "out").status == COMPLETE


def test_submit_without_a_data_folder_checks_glue_index_order(tmp_path, monkeypatch):
    from bitfit.submit import check_file, _expected
    from bitfit.tasks import get_task

    monkeypatch.delenv("GLUE_DIR", raising=False)
    task = get_task("wnli")
    split = task.test_splits[0]
    indices, count, source = _expected(split, task, split.submission, [])
    assert count == 146 and indices[:3] == ["0", "1", "2"] and "index order" in source
    path = tmp_path / "WNLI.tsv"
    path.write_text("index\tprediction\n" + "".join(f"{145 - i}\t0\n" for i in range(146)))
    with pytest.raises(UserError, match="index '145', but the test file has '0' there"):
        check_file(path, task, indices, count, source)


def test_the_lock_file_is_ignored_by_readers(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / LOCK_FILE).write_text("123\n")
    assert read_state(tmp_path / "run").status == "new"
    preflight.check_output_folder(str(tmp_path / "run"), overwrite=False)  # empty but for the lock: accepted


def test_a_full_disk_during_merge_is_one_line_and_leaves_no_folder(tmp_path, good_delta, monkeypatch):
    from transformers import PreTrainedModel

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    with pytest.raises(EnvironmentFailure, match="No space left on device"):
        delta.merge(good_delta, tmp_path / "merged")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no output folder, no temp folder
