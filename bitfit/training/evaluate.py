"""Predictions and loss over a whole split, each example counted once across processes."""

from __future__ import annotations

import numpy as np
import torch

from ..tasks import GlueTask


@torch.inference_mode()
def predict(model, loader, accelerator, task: GlueTask) -> tuple[np.ndarray, np.ndarray | None, float | None]:
    """(predictions: class ids or scores, gold labels or None, mean loss or None) over ``loader``.

    ``gather_for_metrics`` drops the padding duplicates of an uneven last batch across processes.
    """
    model.eval()
    preds, labels, losses = [], [], []
    for batch in loader:
        gold = batch.pop("labels", None)
        logits = model(**batch).logits.float()
        pred = logits.squeeze(-1) if task.is_regression else logits.argmax(-1)
        if gold is not None:
            loss = (torch.nn.functional.mse_loss(logits.squeeze(-1), gold.float(), reduction="none") if task.is_regression
                    else torch.nn.functional.cross_entropy(logits, gold, reduction="none"))
            pred, gold, loss = accelerator.gather_for_metrics((pred, gold, loss))
            labels.append(gold.cpu())
            losses.append(loss.cpu())
        else:
            pred = accelerator.gather_for_metrics(pred)
        preds.append(pred.cpu())
    model.train()
    preds_np = torch.cat(preds).numpy() if preds else np.zeros(0)
    labels_np = torch.cat(labels).numpy() if labels else None
    return preds_np, labels_np, (float(torch.cat(losses).double().mean()) if losses else None)
