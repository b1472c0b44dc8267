"""What a GPU user relies on, checked on the CPU: fp32 weights from half-precision checkpoints, accelerate
launch's precision deferred to (and conflicts refused), -d refused under several processes, the GPU
settings recorded, the sparse masks computed once per change, the auto:K probe on the main process only,
the bench on the device it was given."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from bitfit import RunConfig, bench, run
from bitfit.devices import make_accelerator
from bitfit.errors import RunStopped, UserError
from bitfit.models import load_model
from bitfit.policies import sparse
from bitfit.tasks import get_task
from bitfit.training.setup import on_main
from conftest import tiny_classifier, write_bert_tokenizer
from test_cli import make_glue_dir, read_jsonl
from test_reliability import interrupt_at, strip_times


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
    return make_glue_dir(tmp_path_factory.mktemp("glue"))


def cfg(out, model, data, **kw) -> RunConfig:
    return RunConfig(**{"output_path": str(out), "task_name": "rte", "model_name": str(model), "data_dir": str(data),
                        "epochs": 1, "batch_size": 8, "verbose": False} | kw)


# ----------------------------------------------------------------------------- weights in fp32


@pytest.fixture(scope="module")
def fp16_model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fp16_bert")
    write_bert_tokenizer(folder)
    tiny_classifier().half().save_pretrained(folder)  # safetensors, every tensor stored as F16
    return folder


def test_fp16_stored_checkpoint_loads_and_trains_in_fp32(tmp_path, fp16_model_dir, glue_dir):
    from safetensors import safe_open

    with safe_open(str(fp16_model_dir / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    model, _ = load_model(str(fp16_model_dir), get_task("rte"))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    for precision in ("fp32", "bf16"):  # fp16 autocast needs CUDA: tests/test_gpu.py runs it there
        res = run(cfg(tmp_path / precision, fp16_model_dir, glue_dir, fine_tune_type="full_ft", precision=precision))
        assert res["status"] == "complete" and res["completed_epochs"] == 1
        assert json.loads((tmp_path / precision / "config.json").read_text())["precision"] == precision


# ----------------------------------------------------------------------------- accelerate launch's settings


def test_precision_defers_to_accelerate_launch_unless_given(monkeypatch):
    from bitfit.config import environment_defaults

    make = lambda **kw: RunConfig(**environment_defaults({"output_path": "x", "task_name": "rte", **kw}))  # noqa: E731
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert make().precision == "fp32" and make(precision="bf16").precision == "bf16"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert make().precision == "bf16" and make(precision="bf16").precision == "bf16"
    with pytest.raises(UserError, match=r"^--precision fp32 contradicts accelerate launch's --mixed_precision bf16;"):
        make(precision="fp32")
    with pytest.raises(UserError, match=r"^--precision fp32 contradicts accelerate launch's --mixed_precision bf16;"):
        make_accelerator(RunConfig(output_path="x", task_name="rte"))  # the Python API's fp32 is checked by the run
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # launch's default: an explicit --precision wins
    assert make().precision == "fp32" and make(precision="bf16").precision == "bf16"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp8")
    with pytest.raises(UserError, match=r"mixed precision 'fp8' is not supported here; accepted: no, bf16, fp16"):
        make()


def test_accelerator_gets_the_resolved_precision(monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    accelerator = make_accelerator(RunConfig(output_path="x", task_name="rte", precision="bf16"))
    assert accelerator.mixed_precision == "bf16"


def test_gpu_device_with_several_processes_is_one_line_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError) as e:
        make_accelerator(RunConfig(output_path="x", task_name="rte", gpu_device=1))
    assert "gpu device 1 (-d)" in str(e.value) and "runs 2 processes" in str(e.value) and "\n" not in str(e.value)
    monkeypatch.setenv("WORLD_SIZE", "1")
    make_accelerator(RunConfig(output_path="x", task_name="rte", gpu_device=1))  # one process: the CPU note only


# ----------------------------------------------------------------------------- GPU settings, recorded


def test_a_launch_gradient_accumulation_that_contradicts_the_runs_is_one_line_error(monkeypatch):
    """accelerate takes ACCELERATE_GRADIENT_ACCUMULATION_STEPS over the value it is given: never silently."""
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "4")
    with pytest.raises(UserError, match=r"^accelerate's gradient accumulation steps '4' .* contradict --grad-accum 1; "):
        make_accelerator(RunConfig(output_path="x", task_name="rte"))
    assert make_accelerator(RunConfig(output_path="x", task_name="rte", grad_accum=4)).gradient_accumulation_steps == 4


def test_gpu_settings_are_recorded_and_workers_change_no_number(tmp_path, tiny_bert_dir, glue_dir, capsys):
    plain = tmp_path / "plain"
    run(cfg(plain, tiny_bert_dir, glue_dir, fine_tune_type="bitfit"))
    fast = tmp_path / "fast"
    try:
        run(cfg(fast, tiny_bert_dir, glue_dir, fine_tune_type="bitfit", num_workers=2, tf32=True,
                deterministic=True, verbose=True))
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
    assert "--tf32 has no effect on the CPU" in capsys.readouterr().err
    saved = json.loads((fast / "config.json").read_text())
    assert {k: saved["config"][k] for k in ("tf32", "num_workers", "deterministic", "precision")} == {
        "tf32": True, "num_workers": 2, "deterministic": True, "precision": "fp32"}
    assert {k: saved[k] for k in ("precision", "gpu_name", "gpu_index", "cuda_version", "world_size", "tf32_matmul",
                                  "deterministic_algorithms")} == {
        "precision": "fp32", "gpu_name": None, "gpu_index": None, "cuda_version": None, "world_size": 1,
        "tf32_matmul": False, "deterministic_algorithms": True}
    assert strip_times(read_jsonl(fast / "metrics.jsonl")) == strip_times(read_jsonl(plain / "metrics.jsonl"))


def test_a_run_interrupted_on_one_gpu_index_resumes_on_another(tmp_path, tiny_bert_dir, glue_dir, monkeypatch):
    """A queue hands a re-run whichever GPU is free: the resume with another -d (and other workers) is
    accepted and ends where the uninterrupted run does (on the CPU -d is ignored: only the check runs)."""
    kw = {"fine_tune_type": "bitfit", "epochs": 2}
    whole = tmp_path / "whole"
    run(cfg(whole, tiny_bert_dir, glue_dir, gpu_device=0, **kw))
    cut = tmp_path / "cut"
    interrupt_at(monkeypatch, step=8)  # in epoch 2
    with pytest.raises(RunStopped):
        run(cfg(cut, tiny_bert_dir, glue_dir, gpu_device=0, **kw))
    monkeypatch.undo()
    assert json.loads((cut / "results.json").read_text())["status"] == "interrupted"
    with pytest.raises(UserError, match=r"--resume with tf32=True but the run was started with tf32=False"):
        run(cfg(cut, tiny_bert_dir, glue_dir, tf32=True, resume=True, **kw))  # the arithmetic of the epochs left
    run(cfg(cut, tiny_bert_dir, glue_dir, gpu_device=1, num_workers=1, resume=True, check_every=3, **kw))
    assert json.loads((cut / "results.json").read_text())["status"] == "complete"
    assert strip_times(read_jsonl(cut / "metrics.jsonl")) == strip_times(read_jsonl(whole / "metrics.jsonl"))
    from safetensors.torch import load_file

    learned, uninterrupted = load_file(cut / "delta.safetensors"), load_file(whole / "delta.safetensors")
    assert learned.keys() == uninterrupted.keys()
    assert all(torch.equal(learned[k], uninterrupted[k]) for k in learned)  # bit for bit


# ----------------------------------------------------------------------------- sparse masks


def test_masks_are_computed_once_per_change_all_at_once_and_exactly(monkeypatch):
    model = tiny_classifier()
    names = [n for n, p in model.named_parameters() if n.endswith("dense.weight") and "encoder" in n]
    sparse.attach(model, names, sparsity=0.3)
    mods = sparse._mask_modules(model)
    torch.manual_seed(1)
    with torch.no_grad():
        for m in mods.values():
            m.scores.copy_(torch.randn_like(m.scores).round(decimals=1))  # rounding makes ties at thresholds

    def reference(m):
        s = m.scores.detach()
        return s >= s.flatten().kthvalue(m.n_zero + 1).values

    calls = []
    refresh = sparse.MaskGroup.refresh
    monkeypatch.setattr(sparse.MaskGroup, "refresh", lambda self: calls.append(1) or refresh(self))
    x = torch.randint(5, 100, (2, 9))
    model(input_ids=x)
    assert len(calls) == 1  # the first mask found every mask stale and computed them all
    first = {n: m.keep() for n, m in mods.items()}
    assert all(torch.equal(first[n], reference(m)) for n, m in mods.items())
    model(input_ids=x)
    assert len(calls) == 1 and all(m.keep() is first[n] for n, m in mods.items())  # unchanged scores: cached
    opt = torch.optim.SGD([m.scores for m in mods.values()], lr=1.0)
    model(input_ids=x, labels=torch.tensor([0, 1])).loss.backward()
    opt.step()
    assert all(torch.equal(m.keep(), reference(m)) for m in mods.values()) and len(calls) == 2  # one refresh: all


def test_a_mask_cached_while_evaluating_serves_training():
    model = tiny_classifier()
    sparse.attach(model, ["bert.encoder.layer.0.intermediate.dense.weight"], sparsity=0.5)
    x = torch.randint(5, 100, (2, 9))
    with torch.inference_mode():
        model(input_ids=x)
    model(input_ids=x, labels=torch.tensor([0, 1])).loss.backward()  # no "inference tensors" error
    assert all(m.scores.grad is not None for m in sparse._mask_modules(model).values())


# ----------------------------------------------------------------------------- the auto:K probe


def test_probe_runs_on_the_main_process_only_and_its_choice_is_shared(monkeypatch):
    import accelerate.utils

    sent = []

    def broadcast(box, from_process=0):
        sent.append(list(box))
        box[0] = box[0] if box[0] is not None else ("ok", {2, 3})  # what the main process sent
        return box

    monkeypatch.setattr(accelerate.utils, "broadcast_object_list", broadcast)
    ran = []
    other = on_main(SimpleNamespace(num_processes=2, is_main_process=False))
    assert other(lambda: ran.append(1)) == {2, 3} and ran == [] and sent == [[None]]
    main = on_main(SimpleNamespace(num_processes=2, is_main_process=True))
    assert main(lambda: {0, 1}) == {0, 1} and sent[-1] == [("ok", {0, 1})]

    def fails():
        raise UserError("probe failed")

    with pytest.raises(UserError, match="probe failed"):  # sent to the others too, so none waits
        main(fails)
    assert sent[-1][0][0] == "error"
    assert on_main(SimpleNamespace(num_processes=1, is_main_process=True))(lambda: 7) == 7


def test_auto_layers_run_end_to_end(tmp_path, tiny_bert_dir, glue_dir):
    res = run(cfg(tmp_path / "auto", tiny_bert_dir, glue_dir, fine_tune_type="bitfit", layers=["auto:1"]))
    assert res["status"] == "complete"
    notes = json.loads((tmp_path / "auto" / "config.json").read_text())["policy_notes"]
    assert any(n.startswith("layers auto:1 picked") for n in notes)


# ----------------------------------------------------------------------------- the bench's device


def test_bench_times_the_device_it_was_given(monkeypatch):
    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: synced.append(d))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    bench._sync("cuda:2")
    bench._sync("cuda")
    bench._sync("cpu")
    assert synced == [torch.device("cuda:2"), 3]


def test_bench_child_sees_only_its_gpu():
    assert bench.only_visible("cpu", None) == ("cpu", None)
    assert bench.only_visible("cuda:1", None) == ("cuda:0", "1")
    assert bench.only_visible("cuda", None) == ("cuda:0", "0")
    assert bench.only_visible("cuda:1", "4,6") == ("cuda:0", "6")
    with pytest.raises(UserError, match=r"device 'cuda:2' is not visible here; accepted: cuda:0 to cuda:1"):
        bench.only_visible("cuda:2", "4,6")


def test_bench_precision_and_tf32_name_the_files():
    s = bench.Settings(device="cuda:1", precision="bf16", tf32=True, batch_size=8)
    assert bench.report_name(s) == "bench_rte_minilm_cuda_b8_bf16_tf32"
    assert bench.arithmetic(s) == "bf16 autocast (TF32 matmuls)"
    assert bench.report_name(bench.Settings(device="cpu", batch_size=8)) == "bench_rte_minilm_cpu_b8"
