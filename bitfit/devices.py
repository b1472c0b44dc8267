"""Where a run computes, and what it costs there."""

from __future__ import annotations

import logging
import resource
import sys

import torch

from .errors import UserError

log = logging.getLogger("bitfit")


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


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


def make_accelerator(cfg):
    """An Accelerator for ``cfg``'s device and precision (one line for a GPU index that does not exist)."""
    from accelerate import Accelerator

    cuda = torch.cuda.is_available() and not cfg.cpu
    if cfg.gpu_device is not None and cuda:
        if cfg.gpu_device >= torch.cuda.device_count():
            raise UserError(f"gpu device {cfg.gpu_device} does not exist; accepted: 0 to {torch.cuda.device_count() - 1}")
        torch.cuda.set_device(cfg.gpu_device)
    if cfg.precision == "fp16" and not cuda:
        raise UserError("precision 'fp16' needs a CUDA GPU; accepted on the CPU: fp32, bf16")
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # a second run() in one process may use another precision; keeps the process group
    accelerator = Accelerator(cpu=cfg.cpu or not cuda, mixed_precision="no" if cfg.precision == "fp32" else cfg.precision,
                              gradient_accumulation_steps=cfg.grad_accum)
    if accelerator.device.type == "cpu" and accelerator.is_main_process:
        reason = "--cpu given" if cfg.cpu else "no GPU found"
        log.warning("%s: running on the CPU%s", reason, " (ignoring --gpu-device)" if cfg.gpu_device is not None else "")
    return accelerator
