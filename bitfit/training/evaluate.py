"""Predictions and loss over a whole split: batches sorted by length (no padding beyond each batch's
longest), every example counted once across processes, results in the split's own order."""

from __future__ import annotations

import numpy as np
import torch

from ..data import SortedLoader
from ..progress import progress
from ..tasks import GlueTask


@torch.inference_mode()
def predict(model, data: SortedLoader, accelerator, task: GlueTask, desc: str = "predicting",
            show: bool = False) -> tuple[np.ndarray, np.ndarray | None, float | None]:
    """(predictions: class ids or scores, gold labels or None, mean loss or None), in the split's order.

    ``gather_for_metrics`` drops the padding duplicates of an uneven last batch across processes.
    """
    model.eval()
    preds, labels, losses = [], [], []
    for batch in progress(data.loader, desc, enabled=show):
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
    preds_np = data.restore(torch.cat(preds).numpy()) if preds else np.zeros(0)
    labels_np = data.restore(torch.cat(labels).numpy()) if labels else None
    loss = data.restore(torch.cat(losses).double().numpy()) if losses else None
    return preds_np, labels_np, (float(torch.from_numpy(loss).mean()) if loss is not None else None)
