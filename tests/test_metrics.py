import math

import numpy as np
import pytest
from scipy import stats
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
    # The study's ResNets: AUC 0.93, accuracy 0.52 at 0.5. Perfectly ranked scores all under 0.5:
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


def test_clustered_mcnemar_counts_patients_not_images():
    y = np.ones(30, int)
    a, b = np.ones(30, int), np.ones(30, int)
    b[:10] = 0
    exact = metrics.mcnemar(y, a, b)["p_value"]
    assert metrics.mcnemar(y, a, b, groups=np.arange(30))["p_value"] == exact  # one image each: the exact test
    # The same ten discordances from two patients of five images each: far weaker evidence.
    patients = np.r_[np.zeros(5), np.ones(5), np.arange(2, 22)]
    clustered = metrics.mcnemar(y, a, b, groups=patients)
    assert (clustered["a_only_right"], clustered["b_only_right"]) == (10, 0)
    assert clustered["p_value"] == pytest.approx(stats.chi2.sf(10 ** 2 / 50, 1)) and exact < 0.05 < clustered["p_value"]


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


def test_auc_and_average_precision_do_not_depend_on_the_order_of_tied_scores():
    y = np.array([1, 0, 1, 0, 1, 0, 0])
    p = np.array([0.9, 0.9, 0.5, 0.5, 0.5, 0.1, 0.1])
    order = np.array([1, 0, 3, 4, 2, 6, 5])
    assert metrics.pr_auc(y, p) == pytest.approx(metrics.pr_auc(y[order], p[order]))
    assert metrics.pr_auc(y, p) == pytest.approx(average_precision_score(y, p))
    assert metrics.roc_auc(y, p) == pytest.approx(metrics.roc_auc(y[order], p[order]))


def test_weighted_auc_rows_equal_sklearn_on_the_resamples_they_describe():
    rng = np.random.default_rng(4)
    y = np.r_[np.zeros(30, int), np.ones(30, int)]
    p = np.round(rng.uniform(size=60), 1)  # many ties
    patients = np.repeat(np.arange(20), 3)
    weights = metrics.cluster_weights(y, patients, n_boot=40, seed=2)
    rows = metrics.weighted_auc_rows(y, p, weights)
    expected = [roc_auc_score(np.repeat(y, w), np.repeat(p, w)) for w in weights]
    np.testing.assert_allclose(rows, expected, atol=1e-12)
    assert metrics.weighted_auc_rows(y, p, np.ones((1, 60)))[0] == pytest.approx(roc_auc_score(y, p))


def test_cluster_bootstrap_resamples_whole_patients_within_their_class():
    y = np.r_[np.zeros(12, int), np.ones(12, int)]
    patients = np.repeat(np.arange(8), 3)  # four NORMAL and four PNEUMONIA patients, three images each
    w = metrics.cluster_weights(y, patients, n_boot=200, seed=0)
    per_patient = w.reshape(200, 8, 3)
    assert (per_patient == per_patient[:, :, :1]).all()  # a patient's images enter together
    assert (per_patient[:, :4, 0].sum(1) == 4).all() and (per_patient[:, 4:, 0].sum(1) == 4).all()


def test_stratified_bootstrap_gives_an_all_positive_classifier_its_exact_accuracy():
    y = np.r_[np.zeros(50, int), np.ones(50, int)]
    ci = metrics.bootstrap_ci(y, np.ones(100), 0.5, n_boot=300, seed=0)
    assert ci["accuracy"] == (0.5, 0.5) and ci["sensitivity"] == (1.0, 1.0)


def test_clustered_delong_reduces_to_delong_with_one_image_per_patient(scores):
    y, p = scores
    other = np.clip(p + np.random.default_rng(5).normal(0, 0.2, len(p)), 0, 1)
    plain = metrics.delong_test(y, p, other)
    singletons = metrics.delong_test(y, p, other, groups=[f"patient-{i}" for i in range(len(y))])
    assert singletons["p_value"] == pytest.approx(plain["p_value"], rel=1e-12)
    # DeLong (1988) by hand: the sample covariances of the structural components.
    pos, neg = p[y == 1], p[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    _, cov = metrics.clustered_auc_covariance(y, [p], None)
    assert cov[0, 0] == pytest.approx(np.var(psi.mean(1), ddof=1) / 50 + np.var(psi.mean(0), ddof=1) / 50)
    # Duplicating every image under its own patient leaves the clustered variance about where it was;
    # the image-level variance halves, as if there were twice the evidence.
    y2, p2, g2 = np.repeat(y, 2), np.repeat(p, 2), np.repeat(np.arange(100), 2)
    clustered = metrics.clustered_auc_covariance(y2, [p2], g2)[1][0, 0]
    naive = metrics.clustered_auc_covariance(y2, [p2], None)[1][0, 0]
    assert clustered == pytest.approx(cov[0, 0], rel=0.05) and naive < 0.6 * clustered


def test_zero_variance_delong_says_so_with_p_one():
    y = np.r_[np.zeros(5, int), np.ones(5, int)]
    perfect, flat = y + 0.1, np.full(10, 0.5)
    result = metrics.delong_test(y, perfect, flat)
    assert result["diff"] == 0.5 and result["p_value"] == 1.0 and "zero estimated variance" in result["note"]


def test_holm_adjustment():
    adjusted = metrics.holm([0.01, 0.04, 0.03, math.nan, 0.5])
    np.testing.assert_allclose(adjusted[[0, 1, 2, 4]], [0.04, 0.09, 0.09, 0.5])
    assert math.isnan(adjusted[3])
    assert metrics.holm([0.6, 0.7])[1] == 1.0


def _clustered_scores(rng, patients: int, separation: float = 1.2):
    """Patients with 1-4 images each; a shared patient effect and image noise, both of unit variance."""
    sizes = rng.integers(1, 5, 2 * patients)
    y = np.repeat(np.r_[np.zeros(patients, int), np.ones(patients, int)], sizes)
    patient = np.repeat(np.arange(2 * patients), sizes)
    score = separation * y + rng.normal(size=2 * patients)[patient] + rng.normal(size=len(y))
    return y, patient, score


def test_patient_level_intervals_cover_the_true_auc_of_clustered_data():
    # Scores are normal with variance 2 in each class: the true AUC is Phi(separation / 2).
    truth = stats.norm.cdf(1.2 / 2)
    rng = np.random.default_rng(1)
    covered = {"cluster bootstrap": 0, "clustered DeLong": 0, "image bootstrap": 0}
    runs = 300
    for i in range(runs):
        y, patient, score = _clustered_scores(rng, patients=50)
        low, high = metrics.bootstrap_ci(y, score, 0.5, groups=patient, n_boot=300, seed=i)["auc"]
        covered["cluster bootstrap"] += low <= truth <= high
        low, high = metrics.bootstrap_ci(y, score, 0.5, n_boot=300, seed=i)["auc"]
        covered["image bootstrap"] += low <= truth <= high
        auc, cov = metrics.clustered_auc_covariance(y, [score], patient)
        covered["clustered DeLong"] += abs(auc[0] - truth) <= 1.96 * math.sqrt(cov[0, 0])
    share = {k: v / runs for k, v in covered.items()}
    assert share["cluster bootstrap"] >= 0.93 and share["clustered DeLong"] >= 0.93, share
    assert share["image bootstrap"] < 0.88, share  # what resampling images instead of patients gives


def test_one_class_gives_nan_auc_not_an_error():
    assert math.isnan(metrics.roc_auc([1, 1, 1], [0.2, 0.5, 0.9]))
    assert metrics.youden_threshold([1, 1], [0.2, 0.9]) == 0.5
