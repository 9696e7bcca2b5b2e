import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from pneumo_ml import metrics


@pytest.fixture
def scores():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(50, int), np.ones(50, int)]
    p = np.clip(0.35 * y + rng.normal(0.35, 0.2, 100), 0, 1)
    return y, p


def test_binary_metrics_agree_with_sklearn(scores):
    y, p = scores
    m = metrics.binary_metrics(y, p, 0.5)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, p))
    assert m["f1"] == pytest.approx(f1_score(y, p >= 0.5))
    assert m["accuracy"] == pytest.approx(((p >= 0.5) == y).mean())
    assert m["sensitivity"] == pytest.approx(((p >= 0.5) & (y == 1)).sum() / 50)
    assert m["tp"] + m["fn"] == 50 and m["tn"] + m["fp"] == 50
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))


def test_calibration_error_of_a_calibrated_and_a_miscalibrated_model():
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 1, 20000)
    y = (rng.uniform(0, 1, 20000) < p).astype(int)
    assert metrics.expected_calibration_error(y, p) < 0.02
    assert metrics.expected_calibration_error(y, p * 0.5) > 0.2


def test_youden_threshold_fixes_scores_that_rank_well_but_sit_below_one_half():
    # The seed's ResNets: AUC 0.93, accuracy 0.52 at 0.5. Perfectly ranked scores all under 0.5:
    y = np.r_[np.zeros(50, int), np.ones(50, int)]
    p = np.r_[np.linspace(0.05, 0.2, 50), np.linspace(0.25, 0.45, 50)]
    assert metrics.binary_metrics(y, p, 0.5)["accuracy"] == 0.5
    t = metrics.youden_threshold(y, p)
    assert 0.2 < t < 0.25
    assert metrics.binary_metrics(y, p, t)["accuracy"] == 1.0


def test_bootstrap_intervals_cover_the_estimate_and_shrink_with_more_data(scores):
    y, p = scores
    small = metrics.bootstrap_ci(y, p, 0.5, n_boot=500, seed=0)
    big = metrics.bootstrap_ci(np.tile(y, 16), np.tile(p, 16), 0.5, n_boot=500, seed=0)
    point = metrics.binary_metrics(y, p, 0.5)
    for name in metrics.CI_METRICS:
        low, high = small[name]
        assert low <= point[name] <= high, name
        assert big[name][1] - big[name][0] < (high - low) / 2, name
    assert metrics.bootstrap_ci(y, p, 0.5, n_boot=500, seed=0) == small


def test_mcnemar_exact_p_value():
    y = np.ones(30, int)
    a = np.ones(30, int)
    b = a.copy()
    b[:10] = 0  # b is wrong on 10 images where a is right, never the other way
    result = metrics.mcnemar(y, a, b)
    assert (result["a_only_right"], result["b_only_right"]) == (10, 0)
    assert result["p_value"] == pytest.approx(2 * 0.5 ** 10)
    assert metrics.mcnemar(y, a, a)["p_value"] == 1.0


def test_delong_agrees_with_paired_bootstrap(scores):
    y, p = scores
    rng = np.random.default_rng(3)
    worse = np.clip(p + rng.normal(0, 0.25, len(p)), 0, 1)
    d = metrics.delong_test(y, p, worse)
    b = metrics.paired_bootstrap_auc(y, p, worse, n_boot=2000, seed=0)
    assert d["auc_a"] == pytest.approx(roc_auc_score(y, p)) and d["auc_b"] == pytest.approx(roc_auc_score(y, worse))
    assert b["diff_low"] < d["diff"] < b["diff_high"]
    assert abs(d["p_value"] - b["p_value"]) < 0.1
    same = metrics.delong_test(y, p, p)
    assert same["diff"] == 0 and same["p_value"] == 1.0


def test_one_class_gives_nan_auc_not_an_error():
    assert math.isnan(metrics.roc_auc([1, 1, 1], [0.2, 0.5, 0.9]))
    assert metrics.youden_threshold([1, 1], [0.2, 0.9]) == 0.5
