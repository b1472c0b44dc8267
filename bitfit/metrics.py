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
