import math

import pytest

from bitfit.metrics import compute_metrics


def test_accuracy_and_f1_by_hand():
    preds, gold = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]
    # tp=2, fp=1, fn=1 -> precision 2/3, recall 2/3, f1 2/3; 3 of 5 right
    m = compute_metrics(("f1", "accuracy"), preds, gold)
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["f1"] == pytest.approx(2 / 3)


def test_mcc_by_hand():
    preds, gold = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]
    tp, tn, fp, fn = 2, 1, 1, 1
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert compute_metrics(("mcc",), preds, gold)["mcc"] == pytest.approx(expected)  # 1/6
    assert compute_metrics(("mcc",), [1, 1, 1], [0, 1, 1])["mcc"] == 0.0  # constant prediction


def test_pearson_spearman_by_hand():
    preds, gold = [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0]
    # pearson: means 2.5; cov = (2.25+(-0.5)(0.5)+(0.5)(-0.5)+2.25)/n; both variances 1.25
    m = compute_metrics(("pearson", "spearmanr"), preds, gold)
    assert m["pearson"] == pytest.approx(0.8)
    assert m["spearmanr"] == pytest.approx(0.8)  # ranks equal the values here
    assert compute_metrics(("pearson",), [2.0, 2.0, 2.0], [1.0, 2.0, 3.0])["pearson"] == 0.0
