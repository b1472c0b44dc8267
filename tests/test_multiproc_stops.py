"""Stops agreed by every process (a NaN or a signal on one rank only: both stop at the same step, one
status, no hang), per-rank RNG and loss-scaler state in checkpoints (old ones still resume), fp16's
skipped steps not counted, peak memory as the largest of any process's."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bitfit import checkpoint, devices
from bitfit.errors import RunStopped
from bitfit.training import loop, stops
from conftest import REPO, accelerate_launch
from test_cli import make_glue_dir

# A run_glue.py that misbehaves on one process only (RANK == FAULTY_RANK), then reports how it ended.
FAULTY = r'''
import os, signal, sys
sys.path.insert(0, os.environ["BITFIT_REPO"])
from bitfit import checkpoint, devices
from bitfit.training import setup
import run_glue

fault, at, rank = os.environ["FAULT"], int(os.environ["FAULT_AT"]), int(os.environ["RANK"])
import torch
from bitfit.training import loop
real_start = loop.start


def start(su, started):  # how each process's run is set up for data parallelism
    tr = real_start(su, started)
    print(f"RANK{rank} START seed={torch.initial_seed()} broadcast_buffers={tr.model.broadcast_buffers}",
          file=sys.stderr, flush=True)
    return tr


loop.start = start
if rank == int(os.environ["FAULTY_RANK"]):
    devices.peak_memory_mb = lambda device: 123456.0  # results.json must show the largest of any process's
    if fault == "nan":
        real_load, seen = setup.load_model, {"n": 0}

        def poisoned(*args, **kw):
            model, fresh = real_load(*args, **kw)

            def hook(module, inputs, output):
                if module.training:
                    seen["n"] += 1
                    if seen["n"] == at:
                        output["loss"] = output.loss * float("nan")
                return output

            model.register_forward_hook(hook)
            return model, fresh

        setup.load_model = poisoned
    elif fault == "sigterm":
        real_requested, asked = checkpoint.Interrupt.requested, {"n": 0}

        def requested(self):  # a real SIGTERM to this process only, at its ``at``-th question
            asked["n"] += 1
            if asked["n"] == at:
                os.kill(os.getpid(), signal.SIGTERM)
            return real_requested(self)

        checkpoint.Interrupt.requested = requested
sys.argv[0] = os.path.join(os.environ["BITFIT_REPO"], "run_glue.py")  # as if started as run_glue.py itself
rc = run_glue.main(sys.argv[1:])
print(f"RANK{rank} EXIT {rc}", file=sys.stderr, flush=True)
sys.exit(rc)
'''


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory) -> Path:
    return make_glue_dir(tmp_path_factory.mktemp("glue"))  # 48 training examples: 6 steps an epoch at 2 x 4


def launch_two(script: Path, args: list[str], env: dict | None = None, timeout: float = 240) -> tuple[int, str]:
    """``accelerate launch`` two CPU (gloo) processes; returns (exit status, stderr). A hang fails the test, and
    every process of the launch is killed (the workers run in sessions of their own, so by their ids)."""
    import psutil

    cmd = [*accelerate_launch(2), str(script), *args]
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True,
                                env=os.environ | {"OMP_NUM_THREADS": "1", "BITFIT_REPO": str(REPO)} | (env or {}))
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            launcher = psutil.Process(proc.pid)
            for p in launcher.children(recursive=True) + [launcher]:
                p.kill()
            proc.wait()
            pytest.fail(f"the two processes did not stop within {timeout} s (one waits for the other)")
        err.seek(0)
        return proc.returncode, err.read()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_sharding_launch_is_refused_in_one_line_before_anything_is_written(tmp_path, tiny_bert_dir, glue_dir):
    for key, name in devices.SHARDING.items():
        with pytest.raises(Exception, match=rf"^{name} \({key}=true\) is not supported: .*accepted: data parallelism"):
            devices.refuse_sharding({key: "true"})
    devices.refuse_sharding({"ACCELERATE_USE_FSDP": "false"})
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(REPO / "run_glue.py"), *run_args(tiny_bert_dir, glue_dir, out)],
                          capture_output=True, text=True, timeout=120, env=os.environ | {"ACCELERATE_USE_FSDP": "true"})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
    assert "FSDP (ACCELERATE_USE_FSDP=true) is not supported" in proc.stderr and not out.exists()


def test_the_process_group_outlasts_a_checkpoint_write():
    from datetime import timedelta

    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    ddp, group = devices.ddp_options()
    assert isinstance(ddp, DistributedDataParallelKwargs) and ddp.to_kwargs() == {"broadcast_buffers": False}
    assert isinstance(group, InitProcessGroupKwargs) and group.timeout == timedelta(minutes=60)


def test_the_launcher_is_part_of_the_resume_command():
    accelerate = {"LOCAL_RANK": "0", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4", "GROUP_WORLD_SIZE": "2",
                  "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29501", "ACCELERATE_MIXED_PRECISION": "bf16"}
    assert checkpoint.launcher(accelerate) == [
        "accelerate", "launch", "--num_processes", "8", "--multi_gpu", "--num_machines", "2", "--machine_rank",
        "THIS_MACHINE_RANK", "--main_process_ip", "10.0.0.1", "--main_process_port", "29501", "--mixed_precision", "bf16"]
    torchrun = {"LOCAL_RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "GROUP_WORLD_SIZE": "1"}
    assert checkpoint.launcher(torchrun) == ["torchrun", "--nproc_per_node", "2"]
    assert checkpoint.launcher({"WORLD_SIZE": "1"}) == []  # a process started on its own


def test_resume_command_under_a_launcher(monkeypatch):
    from bitfit import RunConfig

    cfg = RunConfig(output_path="runs/x", task_name="rte")
    monkeypatch.setattr(checkpoint, "launcher", lambda env=None: ["torchrun", "--nproc_per_node", "2"])
    monkeypatch.setattr(sys, "argv", ["run_glue.py", "-t", "rte", "-o", "runs/x", "--overwrite"])
    assert checkpoint.resume_command(cfg) == "torchrun --nproc_per_node 2 run_glue.py -t rte -o runs/x --resume"
    monkeypatch.setattr(sys, "argv", [str(REPO / "bitfit" / "__main__.py"), "train", "-t", "rte", "-o", "runs/x"])
    assert checkpoint.resume_command(cfg) == "torchrun --nproc_per_node 2 -m bitfit train -t rte -o runs/x --resume"


def run_args(model, data, out, *extra) -> list[str]:
    return ["-t", "rte", "-f", "bitfit", "-m", str(model), "--data-dir", str(data), "-o", str(out), "-e", "2",
            "-b", "4", "--no-verbose", *extra]


def faulty(tmp_path, fault: str, at: int, rank: int = 1):
    script = tmp_path / "faulty_glue.py"
    script.write_text(FAULTY)
    return script, {"FAULT": fault, "FAULT_AT": str(at), "FAULTY_RANK": str(rank)}


@pytest.mark.cluster
def test_a_nan_on_one_process_stops_both_at_the_same_step_with_one_status(tmp_path, tiny_bert_dir, glue_dir):
    script, env = faulty(tmp_path, "nan", at=9)  # rank 1's 9th training batch: epoch 2, step 9
    out = tmp_path / "run"
    rc, err = launch_two(script, run_args(tiny_bert_dir, glue_dir, out), env)
    assert rc != 0, err[-3000:]
    assert "RANK0 EXIT 1" in err and "RANK1 EXIT 1" in err, err[-3000:]  # both stopped by themselves, not killed
    lines = [line for line in err.splitlines() if "non-finite loss" in line]
    assert len(lines) == 2 and lines[0] == lines[1], lines  # the same message, step and all, on both
    assert "non-finite loss (nan) at epoch 2, step 9 with learning rate" in lines[0]
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "diverged" and results["completed_epochs"] == 1
    assert results["peak_memory_mb"] == 123456.0  # the faulty rank's: the largest, though rank 0 wrote the file
    assert json.loads((out / "checkpoint" / "state.json").read_text())["epoch"] == 1


@pytest.mark.cluster
def test_a_signal_to_one_process_stops_both_resumable_and_the_resume_completes(tmp_path, tiny_bert_dir, glue_dir):
    script, env = faulty(tmp_path, "sigterm", at=8)  # rank 1 only, during epoch 2
    out = tmp_path / "run"
    rc, err = launch_two(script, run_args(tiny_bert_dir, glue_dir, out), env)
    assert rc != 0, err[-3000:]
    code = 128 + signal.SIGTERM
    assert f"RANK0 EXIT {code}" in err and f"RANK1 EXIT {code}" in err, err[-3000:]
    assert err.count("SIGTERM during epoch 2: stopped; epochs 1-1 are kept") == 2, err[-3000:]
    # each process its own dropout stream; no buffer broadcast at every forward pass (an encoder's never change)
    assert "RANK0 START seed=0 broadcast_buffers=False" in err and "RANK1 START seed=1 broadcast_buffers=False" in err
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "interrupted" and results["completed_epochs"] == 1
    saved = checkpoint.load(out)
    assert set(saved.rng) == {"r0::torch", "r1::torch"}  # each process's own random state (no GPU here)

    command = results["resume_command"]  # the launcher too: resumed by one process, the run would change
    assert command.startswith("accelerate launch --num_processes 2 --multi_gpu --num_machines 1 --mixed_precision no "
                              "--dynamo_backend no "), command
    assert command.endswith(" --resume") and err.count(command) == 2
    words = shlex.split(command)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--main_process_port", str(free_port())] + words[2:]
    proc = subprocess.run(launch, capture_output=True, text=True, timeout=240,
                          env=os.environ | {"OMP_NUM_THREADS": "1"})
    rc, err = proc.returncode, proc.stderr
    assert rc == 0, err[-3000:]
    assert "were not passed to `accelerate launch`" not in err  # the printed launch is complete
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "complete" and results["completed_epochs"] == 2


# ----------------------------------------------------------------------------- checkpoint state per rank


def _draws(state: dict) -> torch.Tensor:
    checkpoint.set_rng_state(state)
    return torch.rand(4)


def test_each_rank_gets_its_own_rng_and_the_scaler_state_round_trips(tmp_path):
    states = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        states.append(checkpoint.rng_state(torch.device("cpu")))
    expected = [_draws(s) for s in states]
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.load_state_dict(scaler.state_dict() | {"_growth_tracker": 7})
    st = checkpoint.TrainState(epoch=1, global_step=6, params={"w": torch.ones(2)}, best_params={"w": torch.ones(2)},
                               optimizer={"state": {}, "param_groups": []}, rng=checkpoint.ranked_rng(states),
                               scaler=scaler.state_dict())
    checkpoint.save(tmp_path, st, best_changed=True)
    loaded = checkpoint.load(tmp_path)
    for rank in (0, 1):
        assert torch.equal(_draws(checkpoint.rng_for_rank(loaded.rng, rank)), expected[rank])
    assert checkpoint.rng_for_rank(loaded.rng, 2) is None  # resumed by more processes than saved it
    restored = torch.amp.GradScaler("cpu")
    restored.load_state_dict(loaded.scaler)
    assert restored.state_dict() == scaler.state_dict() and loaded.scaler["_growth_tracker"] == 7


def test_an_old_single_process_checkpoint_still_loads(tmp_path):
    torch.manual_seed(3)
    state = checkpoint.rng_state()
    expected = _draws(state)
    old_rng = {"torch": state["torch"], "cuda0": torch.zeros(16, dtype=torch.uint8),
               "cuda2": torch.full((16,), 2, dtype=torch.uint8), "cuda10": torch.full((16,), 10, dtype=torch.uint8)}
    st = checkpoint.TrainState(epoch=1, params={"w": torch.ones(2)}, best_params={"w": torch.ones(2)},
                               optimizer={"state": {}, "param_groups": []}, rng=old_rng)
    checkpoint.save(tmp_path, st, best_changed=True)
    meta_path = tmp_path / "checkpoint" / "state.json"
    meta = json.loads(meta_path.read_text())
    meta["format"] = "bitfit-checkpoint/2"
    del meta["scaler"]  # /2 did not save one
    meta_path.write_text(json.dumps(meta))
    loaded = checkpoint.load(tmp_path)
    assert loaded.scaler == {}
    assert torch.equal(_draws(checkpoint.rng_for_rank(loaded.rng, 0, torch.device("cpu"))), expected)
    on_gpu2 = checkpoint.rng_for_rank(loaded.rng, 0, torch.device("cuda", 2))
    assert torch.equal(on_gpu2["cuda"], old_rng["cuda2"])  # the GPU it runs on, not the second in sorted order
    assert "cuda" not in checkpoint.rng_for_rank(loaded.rng, 0, torch.device("cuda", 5))  # not seen then: skipped
    assert checkpoint.rng_for_rank(loaded.rng, 1) is None


# ----------------------------------------------------------------------------- fp16 skipped steps


class FakeAccelerator:
    """What ``loop._step`` uses of an Accelerator, with fp16's skipped steps under the test's control."""

    num_processes, sync_gradients, scaler, device = 1, True, object(), torch.device("cpu")

    def __init__(self):
        self.optimizer_step_was_skipped = False
        self._flag = False

    def accumulate(self, model):
        return nullcontext()

    def backward(self, loss):
        pass

    def clip_grad_norm_(self, params, norm):
        pass

    def set_trigger(self):
        self._flag = True

    def check_trigger(self):
        flag, self._flag = self._flag, False
        return flag


class Counter:
    def __init__(self):
        self.steps = 0

    def step(self):
        self.steps += 1

    def zero_grad(self, set_to_none=True):
        pass

    def get_last_lr(self):
        return [1e-3]

    def penalty(self):  # as a Guard: no extra loss term (diff_prune's, while searching)
        return None

    def after_step(self):
        pass


def fake_training(tolerate: int):
    losses = []
    model = lambda **batch: SimpleNamespace(loss=losses.pop(0))  # noqa: E731
    tr = SimpleNamespace(accelerator=FakeAccelerator(), model=model, optimizer=Counter(), scheduler=Counter(),
                         guard=Counter(), params=[], st=checkpoint.TrainState(), watch=stops.LossWatch(tolerate),
                         unchecked=0, lrs={}, interrupted=0, mask_4d=False,
                         cfg=SimpleNamespace(max_grad_norm=1.0, weight_decay=0.0, precision="fp16", check_every=1))
    return tr, losses


@pytest.fixture()
def stopped(monkeypatch):
    def record(tr, status, message, exit_code):
        raise RunStopped(f"{status}: {message}", exit_code)

    monkeypatch.setattr(loop, "stop", record)


def step(tr, skipped: bool, loss: float, losses: list, totals: torch.Tensor) -> None:
    tr.accelerator.optimizer_step_was_skipped = skipped
    losses.append(torch.tensor(loss))
    loop._step(tr, {}, 1, checkpoint.Interrupt(), totals, 4)


def test_a_skipped_fp16_step_advances_neither_the_schedule_nor_the_step_count(stopped):
    tr, losses = fake_training(stops.FP16_PATIENCE)
    totals = torch.zeros(2, dtype=torch.float64)
    step(tr, False, 0.5, losses, totals)
    assert (tr.scheduler.steps, tr.st.global_step, tr.optimizer.steps) == (1, 1, 1)
    step(tr, True, 0.75, losses, totals)  # the scaler found inf gradients: the optimizer skipped its update
    assert (tr.scheduler.steps, tr.st.global_step) == (1, 1)
    step(tr, False, 0.625, losses, totals)
    assert (tr.scheduler.steps, tr.st.global_step) == (2, 2)
    assert totals.tolist() == [4 * (0.5 + 0.75 + 0.625), 12]


def test_fp16_leaves_a_non_finite_loss_to_the_scaler_unless_it_persists(stopped):
    tr, losses = fake_training(stops.FP16_PATIENCE)
    totals = torch.zeros(2, dtype=torch.float64)
    step(tr, False, 0.5, losses, totals)
    for _ in range(stops.FP16_PATIENCE):
        step(tr, True, float("inf"), losses, totals)
    assert tr.st.global_step == 1 and totals.tolist() == [2.0, 4]  # skipped, and left out of the epoch's loss
    step(tr, False, 0.5, losses, totals)  # a finite loss starts the count again
    for _ in range(stops.FP16_PATIENCE):
        step(tr, True, float("nan"), losses, totals)
    with pytest.raises(RunStopped, match=r"diverged: non-finite loss \(nan\) at epoch 1, step 3 .*fp16 overflows"):
        step(tr, True, float("nan"), losses, totals)


def test_without_a_scaler_the_first_non_finite_loss_ends_the_run(stopped):
    tr, losses = fake_training(0)
    with pytest.raises(RunStopped, match=r"diverged: non-finite loss \(inf\) at epoch 1, step 1"):
        step(tr, False, float("inf"), losses, torch.zeros(2, dtype=torch.float64))
    assert tr.optimizer.steps == 0  # stopped before the update


# ----------------------------------------------------------------------------- agreement and peak memory


class TwoProcesses:
    """An accelerator of two processes as one of them sees it: the other's trigger, reasons and peak given."""

    num_processes, device = 2, torch.device("cpu")

    def __init__(self, other_stop=None, other_peak=0.0):
        self.other_stop, self.other_peak, self.mine = other_stop, other_peak, False

    def set_trigger(self):
        self.mine = True

    def check_trigger(self):
        return self.mine or self.other_stop is not None

    def gather(self, t):
        return torch.cat([t, torch.tensor([self.other_peak], dtype=t.dtype)])


def test_the_most_serious_reason_of_any_process_wins(monkeypatch):
    import accelerate.utils

    other = stops.Stop("diverged", "non-finite loss on the other process", 1)
    monkeypatch.setattr(accelerate.utils, "gather_object", lambda objs: objs + [other])
    assert stops.agree(TwoProcesses(other), None) == other  # nothing here, the other stops: so does this one
    mine = stops.Stop("interrupted", "SIGTERM", 143)
    assert stops.agree(TwoProcesses(other), mine) == other
    assert stops.agree(TwoProcesses(), None) is None


def test_peak_memory_is_the_largest_of_any_process(monkeypatch):
    monkeypatch.setattr(devices, "peak_memory_mb", lambda device: 100.0)
    assert devices.max_peak_memory_mb(TwoProcesses(other_peak=250.0)) == 250.0
    assert devices.max_peak_memory_mb(TwoProcesses(other_peak=50.0)) == 100.0


@pytest.mark.gpu
def test_peak_memory_is_reset_at_the_start_of_a_run():
    device = torch.device("cuda", torch.cuda.current_device())
    big = torch.empty(256 << 20, dtype=torch.uint8, device=device)
    del big
    assert devices.peak_memory_mb(device) >= 256
    devices.reset_peak_memory(device)
    assert devices.peak_memory_mb(device) < 256


def test_fused_adamw_is_chosen_by_the_runs_device_not_where_the_params_are_now():
    from bitfit.training.optim import make_optimizer

    params = [torch.nn.Parameter(torch.zeros(2))]  # on the CPU, as before accelerate.prepare
    cfg = SimpleNamespace(optimizer="adamw", learning_rate=1e-3, weight_decay=0.0, precision="fp32")
    assert make_optimizer(cfg, params, torch.device("cpu")).defaults["foreach"] is True
    assert make_optimizer(cfg, params, torch.device("cuda")).defaults["fused"] is True
    assert make_optimizer(SimpleNamespace(**(vars(cfg) | {"precision": "fp16"})), params,
                          torch.device("cuda")).defaults.get("fused") in (None, False)


def test_train_samples_count_each_example_once_though_even_batches_repeat_some():
    class Reduced(TwoProcesses):
        def reduce(self, t, op):
            return t * 2  # the other process saw as many

    tr = SimpleNamespace(accelerator=Reduced(), su=SimpleNamespace(encoded={"train": list(range(50))}))
    totals = torch.tensor([14.0, 28.0], dtype=torch.float64)  # 7 batches of 4 on each process: 56 > 50 examples
    loss, seen, seconds = loop.epoch_totals(tr, totals, 28, 3.0)
    assert (loss, seen, seconds) == (0.5, 50, 3.0)
