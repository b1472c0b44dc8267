"""Resume, interrupts, divergence, damaged checkpoints, malformed TSVs, remote code, two processes."""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bitfit import checkpoint, run
from bitfit.config import RunConfig
from bitfit.data import read_tsv
from bitfit.errors import RunStopped, UserError
from bitfit.tasks import get_task
from conftest import REPO, tiny_config, two_processes_and_one, write_bert_tokenizer
from test_cli import make_glue_dir, read_jsonl
from test_host_syncs import _poison_forward


@pytest.fixture(scope="module")
def dropout_model_dir(tmp_path_factory) -> Path:
    """A tiny BERT with dropout on, so a resumed run must restore the RNG state to match."""
    from transformers import AutoModel

    folder = tmp_path_factory.mktemp("dropout_bert")
    write_bert_tokenizer(folder)
    torch.manual_seed(0)
    AutoModel.from_config(tiny_config(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory) -> Path:
    return make_glue_dir(tmp_path_factory.mktemp("glue"))


def cfg(out, model, data, **kw) -> RunConfig:
    base = dict(output_path=str(out), task_name="rte", model_name=str(model), data_dir=str(data), epochs=3,
                verbose=False, fine_tune_type="full_ft", learning_rate=1e-3, weight_decay=0.01, scheduler="linear",
                warmup_ratio=0.1, batch_size=8)
    return RunConfig(**(base | kw))


def interrupt_at(monkeypatch, step: int, signum=signal.SIGINT):
    """Fault injection: behave as if a signal arrived right after global step ``step``."""

    calls = {"n": 0}

    def requested(self):  # the loop asks once per batch; with no accumulation, batch k ends global step k
        calls["n"] += 1
        if calls["n"] == step:
            self.signum = signum
        return self.signum is not None

    monkeypatch.setattr(checkpoint.Interrupt, "requested", requested)


def strip_times(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


@pytest.mark.parametrize("policy", ["full_ft", "bitfit", "rand_uniform", "lora", "adapters", "diff_prune"])
def test_interrupted_then_resumed_equals_uninterrupted_bit_for_bit(policy, tmp_path, dropout_model_dir, glue_dir,
                                                                   monkeypatch):
    options = {"rand_uniform": {"rand_budget": 300}, "lora": {"lora_dropout": 0.1, "lora_bias": "all"},
               "adapters": {"adapter_size": 4}, "diff_prune": {"diff_sparsity": 0.05}}  # LoRA's own dropout: its random stream must resume too
    kw = {"fine_tune_type": policy, **options.get(policy, {})}
    whole = run(cfg(tmp_path / "whole", dropout_model_dir, glue_dir, **kw))

    interrupt_at(monkeypatch, step=8)  # 6 steps per epoch: in the middle of epoch 2
    with pytest.raises(RunStopped) as stop:
        run(cfg(tmp_path / "cut", dropout_model_dir, glue_dir, **kw))
    assert stop.value.exit_code == 130
    assert "SIGINT during epoch 2" in str(stop.value)
    assert "--resume" in str(stop.value) or "resume=True" in str(stop.value)
    results = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert results["status"] == "interrupted" and results["completed_epochs"] == 1 and "resume_command" in results
    assert json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text())["epoch"] == 1
    assert not (tmp_path / "cut" / "delta.safetensors").exists()

    monkeypatch.undo()
    resumed = run(cfg(tmp_path / "cut", dropout_model_dir, glue_dir, resume=True, **kw))
    assert strip_times(read_jsonl(tmp_path / "cut" / "metrics.jsonl")) == strip_times(read_jsonl(tmp_path / "whole" / "metrics.jsonl"))
    a, b = load_file(tmp_path / "whole" / "delta.safetensors"), load_file(tmp_path / "cut" / "delta.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["best_metrics"] == whole["best_metrics"] and resumed["status"] == "complete"
    assert not (tmp_path / "cut" / "checkpoint").exists()  # removed once the run is complete


def test_non_finite_loss_stops_with_step_and_lr_and_keeps_last_good_epoch(tmp_path, dropout_model_dir, glue_dir,
                                                                          monkeypatch):
    _poison_forward(monkeypatch, at=9)  # the 3rd training step of epoch 2
    with pytest.raises(RunStopped) as stop:
        run(cfg(tmp_path / "run", dropout_model_dir, glue_dir, fine_tune_type="bitfit", scheduler="constant",
                      warmup_ratio=0.0))
    assert stop.value.exit_code == 1
    assert "non-finite loss (nan) at epoch 2, step 9 with learning rate 0.001; lower --learning-rate" in str(stop.value)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "diverged" and results["completed_epochs"] == 1 and results["best_epoch"] == 1
    assert [r["epoch"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1, 1]
    assert json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())["epoch"] == 1


@pytest.fixture()
def interrupted_run(tmp_path, dropout_model_dir, glue_dir, monkeypatch):
    interrupt_at(monkeypatch, step=8)
    c = cfg(tmp_path / "run", dropout_model_dir, glue_dir, fine_tune_type="bitfit")
    with pytest.raises(RunStopped):
        run(c)
    monkeypatch.undo()
    return c


@pytest.mark.parametrize("damage,message", [
    ("flip", "does not match its recorded SHA-256 (truncated or modified); refusing to resume"),
    ("truncate", "does not match its recorded SHA-256 (truncated or modified); refusing to resume"),
    ("delete", "is missing; the checkpoint cannot be resumed"),
    ("garbage json", "is unreadable (JSONDecodeError); it cannot be resumed"),
])
def test_damaged_checkpoint_is_refused(damage, message, interrupted_run):
    folder = Path(interrupted_run.output_path) / "checkpoint"
    state = next(folder.glob("state-e*.safetensors"))
    if damage == "flip":
        data = bytearray(state.read_bytes())
        data[-5] ^= 0xFF
        state.write_bytes(bytes(data))
    elif damage == "truncate":
        state.write_bytes(state.read_bytes()[:100])
    elif damage == "delete":
        state.unlink()
    else:
        (folder / "state.json").write_text("{not json")
    with pytest.raises(UserError, match=re.escape(message)):
        run(RunConfig(**(interrupted_run.to_dict() | {"resume": True})))


def test_resume_refuses_other_settings_and_missing_checkpoints(interrupted_run, tmp_path):
    with pytest.raises(UserError, match=r"--resume with learning_rate=0.01 but the run was started with learning_rate=0.001"):
        run(RunConfig(**(interrupted_run.to_dict() | {"resume": True, "learning_rate": 0.01})))
    with pytest.raises(UserError, match=r"nothing to resume in .*: no config.json"):
        run(RunConfig(**(interrupted_run.to_dict() | {"resume": True, "output_path": str(tmp_path / "new")})))


def test_run_written_before_fast_cpu_ops_resumes_only_with_pytorchs_ops(interrupted_run):
    """A config.json from before --fast-cpu-ops existed ran PyTorch's dropout: resuming it with ours would
    change the random stream mid-run, so --resume needs --no-fast-cpu-ops (and then works)."""
    path = Path(interrupted_run.output_path) / "config.json"
    saved = json.loads(path.read_text())
    del saved["config"]["fast_cpu_ops"]
    path.write_text(json.dumps(saved))
    with pytest.raises(UserError, match=r"--resume with fast_cpu_ops=True but the run was started with fast_cpu_ops=False"):
        run(RunConfig(**(interrupted_run.to_dict() | {"resume": True})))
    done = run(RunConfig(**(interrupted_run.to_dict() | {"resume": True, "fast_cpu_ops": False})))
    assert done["status"] == "complete"


# ----------------------------------------------------------------------------- malformed TSV files


def _fuzz_cases(rng: random.Random) -> list[bytes]:
    good = ["0\tA man sat .\tA man sat .\tentailment", "1\tIt rained .\tNo rain .\tnot_entailment"]
    pieces = ["\t", "\n", "\r\n", '"', "'", "\\", "\x00", "entailment", "not_entailment", "maybe", " ", "é", "😀",
              "index\tsentence1\tsentence2\tlabel", "\t\t\t\t", "x" * 1000]
    cases = [b"", b"\n\n\n", b"index\tsentence1\tsentence2\tlabel\n", b"\xff\xfe\x00garbage\n", ("a" * 2_000_000).encode()]
    for _ in range(300):
        lines = ["index\tsentence1\tsentence2\tlabel"] + [
            rng.choice(good) if rng.random() < 0.6 else "".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
            for _ in range(rng.randint(0, 6))]
        raw = "\n".join(lines).encode("utf-8")
        if rng.random() < 0.1:
            raw = raw.replace(b"e", b"\xe9", 1)  # a latin-1 byte: not UTF-8
        cases.append(raw)
    return cases


def test_tsv_reader_fuzz_reads_or_rejects_with_file_and_line(tmp_path):
    path = tmp_path / "train.tsv"
    task = get_task("rte")
    outcomes = {"read": 0, "rejected": 0}
    for raw in _fuzz_cases(random.Random(0)):
        path.write_bytes(raw)
        try:
            examples = read_tsv(path, task, test=False)
        except UserError as e:
            assert str(e).startswith(str(path)) and "\n" not in str(e), str(e)
            outcomes["rejected"] += 1
            continue
        outcomes["read"] += 1
        for ex in examples:  # what is read is what GLUE's processor would read: label from the last column
            assert ex.label in (0, 1) and len(ex.texts) == 2
    assert outcomes["read"] > 20 and outcomes["rejected"] > 20


def test_stray_quotes_and_blank_lines_are_read_as_glue_reads_them(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text('index\tsentence1\tsentence2\tlabel\n\n0\t"He said "hi\tok\tentailment\n\n1\ta\tb\tnot_entailment\n')
    examples = read_tsv(path, get_task("rte"), test=False)
    assert [e.texts for e in examples] == [('"He said "hi', "ok"), ("a", "b")] and [e.label for e in examples] == [0, 1]


# ----------------------------------------------------------------------------- pickles and remote code


class _Bomb:
    """Unpickling this creates a file: proof that a pickle was loaded, by whatever route it was read."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _plant(path: Path, marker: Path, fmt: str) -> None:
    """Put a pickle under a name the tool reads: raw (pickle.load, legacy torch.load) or torch.save's zip."""
    path.unlink(missing_ok=True)
    payload = {"classifier.bias": _Bomb(marker)}
    if fmt == "pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)


@pytest.mark.parametrize("fmt", ["pickle", "torch.save"])
def test_pickled_checkpoint_or_delta_is_refused_without_being_unpickled(fmt, tmp_path, interrupted_run, tiny_bert_dir,
                                                                        glue_dir):
    """Where the tool reads tensors it reads safetensors only: a pickle there is refused, never loaded."""
    import hashlib

    marker = tmp_path / "unpickled"
    folder = Path(interrupted_run.output_path) / "checkpoint"
    meta = json.loads((folder / "state.json").read_text())
    for key, name in meta["files"].items():  # recorded hashes updated, so only the format can stop it
        _plant(folder / name, marker, fmt)
        meta["sha256"][key] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    (folder / "state.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="is unreadable.*refusing to resume"):
        run(RunConfig(**(interrupted_run.to_dict() | {"resume": True})))
    assert not marker.exists()

    run_dir = tmp_path / "done"
    run(cfg(run_dir, tiny_bert_dir, glue_dir, fine_tune_type="bitfit", epochs=1))
    _plant(run_dir / "delta.safetensors", marker, fmt)
    from bitfit import delta
    from bitfit.serve import Backbone

    with pytest.raises(UserError, match="not a safetensors file"):
        delta.read(run_dir)
    with pytest.raises(UserError, match="not a safetensors file"):
        delta.merge(run_dir, tmp_path / "merged")
    with pytest.raises(UserError, match="not a safetensors file"):
        Backbone(str(tiny_bert_dir)).add("rte", run_dir)
    assert not marker.exists() and not (tmp_path / "merged").exists()


@pytest.fixture(params=["pickle", "torch.save"])
def pickled_model_dir(request, tmp_path, tiny_bert_dir) -> tuple[Path, Path]:
    """A model folder whose weights are a pickle (pytorch_model.bin) instead of model.safetensors."""
    model, marker = tmp_path / "pickled_model", tmp_path / "unpickled"
    shutil.copytree(tiny_bert_dir, model)
    (model / "model.safetensors").unlink()
    _plant(model / "pytorch_model.bin", marker, request.param)
    return model, marker


def test_pickled_model_weights_are_refused_on_one_line_and_never_unpickled(pickled_model_dir, tmp_path, glue_dir,
                                                                          capsys):
    model, marker = pickled_model_dir
    import run_glue

    rc = run_glue.main(["-t", "rte", "-m", str(model), "--data-dir", str(glue_dir), "-o", str(tmp_path / "out"), "--no-verbose"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and str(model) in err, err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_remote_code_is_not_run_unless_asked(tmp_path, tiny_bert_dir, glue_dir, capsys):
    model = tmp_path / "remote"
    shutil.copytree(tiny_bert_dir, model)
    marker = tmp_path / "remote_code_ran"
    (model / "configuration_evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import BertConfig\nclass EvilConfig(BertConfig):\n    model_type = 'evil'\n")
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig"}
    config["model_type"] = "evil"  # not built into transformers: only the folder's own code could load it
    (model / "config.json").write_text(json.dumps(config))
    import run_glue

    rc = run_glue.main(["-t", "rte", "-m", str(model), "--data-dir", str(glue_dir), "-o", str(tmp_path / "out"),
                        "--no-verbose"])
    assert rc == 2 and "--trust-remote-code" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- data parallel


@pytest.mark.cluster
def test_two_cpu_processes_match_one_process_on_the_same_global_batch(tmp_path, tiny_bert_dir, glue_dir):
    common = ["-t", "rte", "-f", "full_ft", "-m", str(tiny_bert_dir), "--data-dir", str(glue_dir), "-e", "2",
              "--no-group-by-length", "--predict-test", "--no-verbose"]
    two_processes_and_one(common, tmp_path)
    assert json.loads((tmp_path / "two" / "config.json").read_text())["num_processes"] == 2
    a, b = read_jsonl(tmp_path / "one" / "metrics.jsonl"), read_jsonl(tmp_path / "two" / "metrics.jsonl")
    assert [(r["epoch"], r["split"]) for r in a] == [(r["epoch"], r["split"]) for r in b]
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5, abs=1e-6)
        if "accuracy" in x:
            assert x["accuracy"] == y["accuracy"]
    assert (tmp_path / "one" / "RTE.tsv").read_text() == (tmp_path / "two" / "RTE.tsv").read_text()
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


def test_truncated_or_modified_delta_is_refused(tmp_path, tiny_bert_dir, glue_dir):
    from bitfit import delta

    run(cfg(tmp_path / "run", tiny_bert_dir, glue_dir, fine_tune_type="bitfit", epochs=1))
    path = tmp_path / "run" / "delta.safetensors"
    raw = path.read_bytes()
    delta.read(path)  # intact: reads

    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UserError, match=r"is not a safetensors file"):
        delta.read(path)

    modified = bytearray(raw)
    modified[-3] ^= 0x01  # one bit of the last tensor's data; the file still parses
    path.write_bytes(bytes(modified))
    with pytest.raises(UserError, match=r"do not match the digest recorded when it was written"):
        delta.read(path)


def test_atomic_write_fsyncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    """A power cut at any moment leaves the old file or the new one: the new bytes reach the disk before the
    name points at them, and the rename itself is made durable by syncing the folder."""
    import os

    from bitfit import io

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "results.json"
    io.write_json(target, {"status": "complete"})
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"]
    assert Path(events[0][1]).parent == tmp_path and Path(events[0][1]).name.startswith(".results.json.")
    assert events[1][1] == str(target) and events[2][1] == str(tmp_path)


@pytest.mark.parametrize("launch", ["run_glue.py", "-m bitfit train"])
def test_sigterm_stops_a_real_process_and_the_printed_resume_command_continues_it(launch, tmp_path, tiny_bert_dir):
    """Stopped with SIGTERM, started either way: it records the command it printed, and running that command
    completes the run."""
    import shlex

    data = make_glue_dir(tmp_path / "glue", n_train=400)
    out = tmp_path / "run"
    head = [str(REPO / "run_glue.py")] if launch == "run_glue.py" else ["-m", "bitfit", "train"]
    cmd = [sys.executable, *head, "-t", "rte", "-m", str(tiny_bert_dir), "--data-dir", str(data), "-o", str(out),
           "-e", "25", "--no-verbose", "--overwrite"]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    deadline = time.time() + 120
    while not (out / "checkpoint" / "state.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM during epoch" in err and "Resume with:" in err
    command = err.strip().splitlines()[-1].strip()
    printed = shlex.split(command)
    assert printed[:len(head) + 1] == ["python", *head] and printed[-1] == "--resume" and "--overwrite" not in printed
    assert "-e 25" in command
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "interrupted" and results["completed_epochs"] >= 1
    assert results["resume_command"] == command
    done = subprocess.run([sys.executable, *printed[1:]], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "complete" and results["completed_epochs"] == 25
