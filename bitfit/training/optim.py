"""The optimizer and the learning-rate schedule."""

from __future__ import annotations

import torch


def make_optimizer(cfg, params: list[torch.nn.Parameter], device: torch.device | str) -> torch.optim.Optimizer:
    """Adam(W) over the trainable tensors only: fused kernels when the run trains on ``device`` CUDA (the
    optimizer is built before accelerate moves the parameters there), foreach (multi-tensor) elsewhere and
    under fp16, whose loss scaler would hand a fused step its skip decision, so accelerate could not tell a
    skipped step (``optimizer_step_was_skipped``) from a taken one."""
    kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    fused = torch.device(device).type == "cuda" and cfg.precision != "fp16"
    return kind(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                **({"fused": True} if fused else {"foreach": True}))


def make_scheduler(cfg, optimizer, total_steps: int):
    """``cfg.scheduler`` after a linear warm-up of ``cfg.warmup_ratio`` of the steps."""
    from transformers import get_scheduler

    warmup = int(cfg.warmup_ratio * total_steps)
    name = {"constant": "constant_with_warmup" if warmup else "constant"}.get(cfg.scheduler, cfg.scheduler)
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
