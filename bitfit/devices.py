"""Where a run computes, and what it costs there."""

from __future__ import annotations

import logging
import os
import resource
import sys
import time

import torch

from . import accelcompat
from .errors import UserError

log = logging.getLogger("bitfit")


def peak_memory_mb(device: torch.device) -> float:
    """This process's peak since ``reset_peak_memory``: GPU memory allocated on ``device``, or on the CPU the
    process's peak resident size (Linux's VmHWM, which ``reset_peak_memory`` resets; elsewhere the peak since
    the process started)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    hwm = _vm_hwm_kb()
    if hwm is not None:
        return hwm / 1024
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def _vm_hwm_kb() -> int | None:
    try:
        with open("/proc/self/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("VmHWM:")), None)
    except (OSError, ValueError, IndexError):
        return None


def reset_peak_memory(device: torch.device) -> None:
    """Start ``peak_memory_mb`` afresh (a second run in one process, such as a sweep's reused Ray worker,
    reports its own peak): the GPU's counter, or on Linux the process's VmHWM (``/proc/self/clear_refs``)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak resident set size to the current one (Linux >= 4.0)
    except OSError:
        pass


def max_peak_memory_mb(accelerator) -> float:
    """The largest ``peak_memory_mb`` of any process of the launch (every process must call it)."""
    mine = peak_memory_mb(accelerator.device)
    if accelerator.num_processes == 1:
        return mine
    peaks = accelerator.gather(torch.tensor([mine], dtype=torch.float64, device=accelerator.device))
    return float(peaks.max())


def resolve_device(name: str) -> str:
    """``auto`` (the first GPU if there is one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``; refuses
    anything else, and a GPU that is not there, with one line."""
    device = name if name != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        kind = torch.device(device).type
    except RuntimeError:
        kind = None
    if kind not in ("cpu", "cuda") or (kind == "cuda" and not torch.cuda.is_available()):
        raise UserError(f"device {name!r} is not available here; accepted: cpu"
                        + (", cuda, cuda:N" if torch.cuda.is_available() else " (no CUDA GPU found)") + ", auto")
    return device


def world_size() -> int:
    """How many processes this launch started (``accelerate launch``/``torchrun`` set WORLD_SIZE)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def make_accelerator(cfg):
    """An Accelerator for ``cfg``'s device and precision (one line for a GPU index that does not exist, or a
    ``-d`` given to a launch of several processes), with the run's TF32 and determinism settings applied."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    from .config import resolve_precision

    cuda = torch.cuda.is_available() and not cfg.cpu
    if cfg.gpu_device is not None and world_size() > 1:
        raise UserError(f"gpu device {cfg.gpu_device} (-d) picks one GPU, but this launch runs {world_size()} "
                        "processes (one GPU each); accepted: leave -d out, or choose the GPUs with accelerate launch "
                        "--gpu_ids / CUDA_VISIBLE_DEVICES")
    if cfg.gpu_device is not None and cuda:
        if cfg.gpu_device >= torch.cuda.device_count():
            raise UserError(f"gpu device {cfg.gpu_device} does not exist; accepted: 0 to {torch.cuda.device_count() - 1}")
        torch.cuda.set_device(cfg.gpu_device)
    launch_accum = os.environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS")
    if launch_accum is not None and launch_accum.strip() != str(cfg.grad_accum):
        # accelerate would take it over the value passed here, silently; the schedule is counted from --grad-accum
        raise UserError(f"accelerate's gradient accumulation steps {launch_accum!r} (ACCELERATE_GRADIENT_ACCUMULATION_STEPS, "
                        f"set by accelerate launch's DeepSpeed options) contradict --grad-accum {cfg.grad_accum}; "
                        "accepted: the same number in both, or leave it out of the launch")
    refuse_sharding()
    resolve_precision(cfg.precision)  # a launch's half precision that the run's contradicts: one line, not ignored
    require_cuda_for_fp16(cfg.precision, cuda)
    accelcompat.reset_state()  # a second run() in one process may use another precision; keeps the process group
    accelerator = Accelerator(cpu=cfg.cpu or not cuda, mixed_precision="no" if cfg.precision == "fp32" else cfg.precision,
                              gradient_accumulation_steps=cfg.grad_accum,
                              dataloader_config=DataLoaderConfiguration(non_blocking=cuda),
                              kwargs_handlers=ddp_options())
    if accelerator.device.type == "cpu" and accelerator.is_main_process:  # asked for (--cpu): said, not warned
        (log.info if cfg.cpu else log.warning)("%s: running on the CPU%s", "--cpu given" if cfg.cpu else "no GPU found",
                                               " (ignoring --gpu-device)" if cfg.gpu_device is not None else "")
    set_arithmetic(cfg, accelerator.device, accelerator.is_main_process)
    reset_peak_memory(accelerator.device)  # the run's peak, not an earlier run's in this process
    return accelerator


# A collective's timeout: the main process alone writes and hashes the checkpoint (about 4x the model) at each
# epoch's end while the others wait in the next collective; on a slow shared disk that can pass NCCL's default
# of 10 minutes, which would kill a healthy run.
COLLECTIVE_TIMEOUT_MINUTES = 60

# accelerate launch's ways of sharding a model, which this tool does not support (see refuse_sharding)
SHARDING = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DeepSpeed",
            "ACCELERATE_USE_MEGATRON_LM": "Megatron-LM"}


def refuse_sharding(env=None) -> None:
    """One line for a launch that shards the model (FSDP, DeepSpeed, Megatron-LM): this tool takes the trainable
    tensors and builds the optimizer before accelerate wraps the model, and saves the checkpoint and delta from
    the whole named parameters, which such a launch splits or flattens. Data parallelism (every process a whole
    copy: ``accelerate launch --multi_gpu``) is what runs; the methods it is for train well under 1% of a model."""
    env = os.environ if env is None else env
    for key, name in SHARDING.items():
        if env.get(key, "").strip().lower() in ("1", "true", "yes"):
            raise UserError(f"{name} ({key}={env[key]}) is not supported: this tool trains and saves whole, unsharded "
                            "parameters; accepted: data parallelism (accelerate launch --multi_gpu, or a config "
                            "without FSDP/DeepSpeed), which fits any encoder a GPU holds")


def ddp_options() -> list:
    """DistributedDataParallel without a broadcast of the buffers at every forward pass (an encoder's buffers,
    position and token-type ids, never change), and a collective timeout that outlasts a checkpoint write."""
    from datetime import timedelta

    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    return [DistributedDataParallelKwargs(broadcast_buffers=False),
            InitProcessGroupKwargs(timeout=timedelta(minutes=COLLECTIVE_TIMEOUT_MINUTES))]


def require_cuda_for_fp16(precision: str, cuda: bool) -> None:
    """fp16 autocast needs a CUDA GPU (one line otherwise)."""
    if precision == "fp16" and not cuda:
        raise UserError("precision 'fp16' needs a CUDA GPU; accepted on the CPU: fp32, bf16")


def set_tf32(device, on: bool) -> None:
    """TF32 for fp32 matmuls and cuDNN on a GPU as ``--tf32`` asks (process-wide, set either way);
    nothing on the CPU."""
    if torch.device(device).type == "cuda":
        torch.set_float32_matmul_precision("high" if on else "highest")
        torch.backends.cudnn.allow_tf32 = on


def set_arithmetic(cfg, device: torch.device, main: bool = True) -> None:
    """Apply ``--tf32`` and ``--deterministic`` for this run (process-wide settings: set either way, so a run
    never inherits an earlier run's); warn when bf16 would be emulated."""
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what deterministic cuBLAS needs
    torch.use_deterministic_algorithms(cfg.deterministic)
    set_tf32(device, cfg.tf32)
    if device.type == "cuda":
        if cfg.precision == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False) and main:
            log.warning("precision bf16 on %s, which has no native bf16: it is emulated (slow); fp16 or fp32 is "
                        "faster on this GPU", torch.cuda.get_device_name(device))
    elif cfg.tf32 and main:
        log.info("--tf32 has no effect on the CPU (recorded in config.json all the same)")


def gpu_index(device) -> int | None:
    """The GPU index ``device`` means (plain ``cuda``: the current one, never silently 0); None off a GPU."""
    if device is None or torch.device(device).type != "cuda":
        return None
    device = torch.device(device)
    return device.index if device.index is not None else torch.cuda.current_device()


def hardware(device: torch.device, num_processes: int) -> dict:
    """config.json's facts about where the run computed: GPU name and index, world size, CUDA version
    (None on the CPU), and the arithmetic switches actually in force."""
    cuda = device.type == "cuda"
    index = gpu_index(device)
    return {"gpu_name": torch.cuda.get_device_name(index) if cuda else None, "gpu_index": index,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "world_size": num_processes, "cuda_version": torch.version.cuda if cuda else None,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32 if cuda else False,
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(), "ray": ray_placement()}


def ray_placement() -> dict | None:
    """Where Ray placed this process (a sweep's trial): its node, the GPU ids Ray gave it (what it set
    CUDA_VISIBLE_DEVICES to), the share of each resource Ray reserved for it (``{"CPU": 1.0, "GPU": 0.5}``: two such
    trials fit one GPU), its niceness and the time of this call (config.json is written as training starts); None
    outside a Ray worker."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    ctx = ray.get_runtime_context()
    return {"node_id": ctx.get_node_id(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "resources": {k: float(v) for k, v in sorted(ctx.get_assigned_resources().items())},
            "niceness": os.getpriority(os.PRIO_PROCESS, 0), "time": time.time()}
