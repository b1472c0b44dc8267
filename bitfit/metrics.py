"""GLUE metrics with scikit-learn and scipy: the functions GLUE's own scorer uses.

    >>> compute_metrics(("accuracy",), [0, 1, 1], [0, 1, 0])["accuracy"]
    0.6666666666666666
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


def _pearson(preds, labels) -> float:
    return float(pearsonr(preds, labels)[0]) if np.std(preds) > 0 else 0.0


def _spearman(preds, labels) -> float:
    return float(spearmanr(preds, labels)[0]) if np.std(preds) > 0 else 0.0


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": lambda p, y: float(accuracy_score(y, p)),
    "f1": lambda p, y: float(f1_score(y, p)),
    "mcc": lambda p, y: float(matthews_corrcoef(y, p)),
    "macro_f1": lambda p, y: float(f1_score(y, p, average="macro", labels=np.union1d(y, p))),
    "mse": lambda p, y: float(np.mean((np.asarray(p, dtype=np.float64) - y) ** 2)),
    "pearson": _pearson,
    "spearmanr": _spearman,
}


def compute_metrics(names: Sequence[str], preds, labels) -> dict[str, float]:
    """Each named metric of predictions against gold labels (class ids, or scores for STS-B).

    A constant regression prediction has no correlation: Pearson/Spearman are reported as 0
    rather than NaN, so "best epoch" comparisons stay well defined.
    """
    preds, labels = np.asarray(preds), np.asarray(labels)
    return {name: METRICS[name](preds, labels) for name in names}


def baseline(task, labels) -> dict:
    """The trivial reference of a split: what always giving one answer scores on it.

    Classification: the majority class of these labels (``{"answer": label name, metric: value}``;
    accuracy and F1 of always answering it, MCC 0). Regression: a constant prediction, which
    has no correlation: Pearson and Spearman 0 (``"answer": "constant"``); its MSE (a task given as files) is the
    best a constant scores, the labels' own mean's: their variance.
    """
    labels = np.asarray(labels)
    if task.is_regression:
        return {"answer": "constant"} | {m: float(np.var(labels.astype(np.float64))) if m == "mse" else 0.0
                                         for m in task.metrics}
    majority = int(np.bincount(labels.astype(int), minlength=task.num_labels).argmax())
    preds = np.full_like(labels, majority)
    return {"answer": task.labels[majority]} | compute_metrics(task.metrics, preds, labels)


def baseline_answer(base: dict) -> str:
    """What a ``baseline`` is, for people: ``a constant`` or ``always 'entailment'``."""
    return "a constant" if base.get("answer") == "constant" else f"always {base.get('answer')!r}"
