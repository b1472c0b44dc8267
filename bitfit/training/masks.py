"""The attention mask handed to the model already in its 4D form, so the forward pass never waits for the GPU.

Given the usual 2D padding mask, transformers' SDPA mask builder asks ``padding_mask.all()`` on every
forward pass (masking_utils ``_ignore_bidirectional_mask_sdpa``: may the mask be skipped?): a read of a
device number, so the CPU waits for the GPU once per step however rarely the loop itself reads. A 4D
mask is used as it is given. ``prepared_mask_works`` decides, once per run, whether this model takes
the (batch, 1, 1, length) boolean mask (True: attend) with the same result: it compares both forms'
logits on a padded probe batch, so an architecture that builds its mask its own way (or rejects a 4D
one) keeps the 2D mask.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("bitfit")


def as_4d(batch: dict) -> dict:
    """``batch`` with its 2D attention mask as a (batch, 1, 1, length) boolean mask (device work only)."""
    mask = batch.get("attention_mask")
    if mask is None or mask.dim() != 2:
        return batch
    return {**batch, "attention_mask": mask[:, None, None, :].bool()}


@torch.no_grad()
def prepared_mask_works(model, device, vocab_size: int) -> bool:
    """Whether ``model`` computes the same logits from the 4D mask as from the 2D one (eval mode, a probe
    batch of two sequences, one padded). Probing reads the device once, at the start of the run."""
    from ..fastops import NAME as FAST_CPU_ATTENTION  # takes what SDPA takes

    if getattr(model.config, "_attn_implementation", None) not in ("sdpa", FAST_CPU_ATTENTION):
        return False  # eager attention adds a float mask; other kernels take their own forms
    was_training = model.training
    model.eval()
    try:
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(min(vocab_size, 1000), (2, 12), generator=gen).to(device)
        mask = torch.ones(2, 12, dtype=torch.long)
        mask[1, 7:] = 0
        batch = {"input_ids": ids, "attention_mask": mask.to(device)}
        plain = model(**batch).logits
        prepared = model(**as_4d(batch)).logits
        same = plain.shape == prepared.shape and torch.allclose(plain.float(), prepared.float(), atol=1e-5, rtol=1e-4)
    except Exception as e:  # a model that rejects the 4D form keeps the 2D one
        log.debug("4D attention mask not taken by %s: %s", type(model).__name__, e)
        same = False
    finally:
        model.train(was_training)
    return bool(same)
