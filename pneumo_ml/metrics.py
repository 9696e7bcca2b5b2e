"""Binary metrics, the validation-chosen threshold, patient-level bootstrap intervals and paired tests.

The metric primitives are scikit-learn's; written here is only what no library has: the expected calibration
error, the stratified cluster bootstrap (patients resampled within each class), the clustered DeLong test
(Obuchowski 1997) and Holm's correction.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score

CI_METRICS = ("accuracy", "auc", "sensitivity", "specificity", "f1")


def roc_auc(y, p) -> float:
    """Area under the ROC curve (scikit-learn); NaN when only one class is present."""
    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        return math.nan
    return float(roc_auc_score(y, np.asarray(p, dtype=np.float64)))


def pr_auc(y, p) -> float:
    """Average precision (scikit-learn: tied scores form one step, so the order of the input does not matter)."""
    y = np.asarray(y)
    if y.sum() == 0:
        return math.nan
    return float(average_precision_score(y, np.asarray(p, dtype=np.float64)))


def expected_calibration_error(y, p, bins: int = 10) -> float:
    """ECE of P(pneumonia) over equal-width bins."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    if len(y) == 0:
        return math.nan
    which = np.minimum((p * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            ece += inside.mean() * abs(p[inside].mean() - y[inside].mean())
    return float(ece)


def confusion(y, p, threshold: float) -> dict[str, int]:
    pred = (np.asarray(p) >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(np.asarray(y, dtype=int), pred, labels=[0, 1]).ravel()
    return {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)}


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def binary_metrics(y, p, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, AUC, sensitivity, specificity, precision, F1, PR-AUC, Brier, ECE and the confusion counts."""
    y, p = np.asarray(y), np.asarray(p, dtype=np.float64)
    c = confusion(y, p, threshold)
    sensitivity = _ratio(c["tp"], c["tp"] + c["fn"])
    precision = _ratio(c["tp"], c["tp"] + c["fp"])
    f1 = _ratio(2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"])
    return {
        "accuracy": _ratio(c["tp"] + c["tn"], len(y)),
        "auc": roc_auc(y, p),
        "sensitivity": sensitivity,
        "specificity": _ratio(c["tn"], c["tn"] + c["fp"]),
        "precision": precision,
        "f1": f1,
        "pr_auc": pr_auc(y, p),
        "brier": float(np.mean((p - y) ** 2)) if len(y) else math.nan,
        "ece": expected_calibration_error(y, p),
        **{k: float(v) for k, v in c.items()},
    }


def youden_threshold(y, p) -> float:
    """The threshold maximising sensitivity + specificity − 1 (midpoint between neighbouring scores).

    The study's ResNets reached AUC 0.93 at accuracy 0.52: their scores ranked well but sat on one side of 0.5.
    """
    y, p = np.asarray(y), np.asarray(p, dtype=np.float64)
    if len(np.unique(y)) < 2:
        return 0.5
    scores = np.unique(p)
    candidates = np.concatenate([[scores[0] - 1e-6], (scores[:-1] + scores[1:]) / 2, [scores[-1] + 1e-6]])
    pos, neg = y == 1, y == 0
    pred = p[None, :] >= candidates[:, None]
    j = (pred[:, pos].mean(1)) + (~pred[:, neg]).mean(1) - 1
    best = np.flatnonzero(j == j.max())
    # Among ties prefer the threshold closest to 0.5: no reason to move further than the data asks.
    choice = best[np.argmin(np.abs(candidates[best] - 0.5))]
    return float(np.clip(candidates[choice], 0.0, 1.0))


def _as_groups(y: np.ndarray, groups) -> np.ndarray:
    """Patient index 0..P-1 of each image; without patient ids every image is its own patient."""
    if groups is None:
        return np.arange(len(y))
    return np.unique(np.asarray(groups).astype(str), return_inverse=True)[1]


def cluster_weights(y, groups=None, *, n_boot: int, seed: int = 0) -> np.ndarray:
    """(n_boot, n) image counts of a stratified cluster bootstrap: in each resample the patients of each class
    are drawn with replacement, as many as the class has, and an image counts as often as its patient was
    drawn. With one image per patient this is the stratified image bootstrap.

    Stratified because the protocol fixes the class counts: an all-positive classifier's accuracy is then
    exactly its value in every resample, not an interval around it."""
    y = np.asarray(y, dtype=int)
    patient = _as_groups(y, groups)
    size = np.bincount(patient)
    positive_share = np.bincount(patient, weights=y) / size
    stratum = np.where(positive_share == 0, 0, np.where(positive_share == 1, 1, 2))  # 2: a patient of both classes
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_boot, len(size)), dtype=np.int32)
    for s in (0, 1, 2):
        members = np.flatnonzero(stratum == s)
        if len(members):
            counts[:, members] = rng.multinomial(len(members), np.full(len(members), 1 / len(members)), size=n_boot)
    return counts[:, patient]


def weighted_auc_rows(y, p, weights) -> np.ndarray:
    """The AUC of each row of image weights (n_rows, n), an image counting as many times as its weight: the
    AUC of the resample a row of `cluster_weights` describes (ties count one half). NaN where a row has one
    class. Vectorised over rows; tests pin it to scikit-learn's roc_auc_score."""
    y, p = np.asarray(y).astype(bool), np.asarray(p, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    order = np.argsort(p, kind="mergesort")
    p_sorted, positive, w = p[order], y[order], w[:, order]
    below = np.concatenate([np.zeros((len(w), 1)), np.cumsum(w * ~positive, axis=1)], axis=1)
    first = np.searchsorted(p_sorted, p_sorted, "left")   # negatives strictly below each score...
    last = np.searchsorted(p_sorted, p_sorted, "right")   # ...and up to and including its ties
    share = (below[:, first] + below[:, last]) / 2          # negatives outranked, ties counted one half
    w_pos, w_neg = (w * positive).sum(1), (w * ~positive).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w * positive * share).sum(1) / (w_pos * w_neg)


def _percentiles(draws: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    if np.isnan(draws).all():
        return math.nan, math.nan
    return tuple(float(v) for v in np.nanpercentile(draws, [tail, 100 - tail]))


def bootstrap_ci(y, p, threshold: float, *, groups=None, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile intervals for accuracy, AUC, sensitivity, specificity and F1 from the stratified cluster
    bootstrap (patients resampled within each class; `groups` = patient id per image). The same seed and
    groups give every model the same resamples."""
    y, p = np.asarray(y, dtype=int), np.asarray(p, dtype=np.float64)
    if n_boot == 0 or len(y) < 2:
        return {m: (math.nan, math.nan) for m in CI_METRICS}
    w = cluster_weights(y, groups, n_boot=n_boot, seed=seed).astype(np.float64)
    pred = p >= threshold
    tp, fp = w @ (pred & (y == 1)), w @ (pred & (y == 0))
    fn, tn = w @ (~pred & (y == 1)), w @ (~pred & (y == 0))
    with np.errstate(invalid="ignore", divide="ignore"):
        draws = {
            "accuracy": (tp + tn) / w.sum(1),
            "auc": weighted_auc_rows(y, p, w),
            "sensitivity": tp / (tp + fn),
            "specificity": tn / (tn + fp),
            "f1": 2 * tp / (2 * tp + fp + fn),
        }
    return {m: _percentiles(d, level) for m, d in draws.items()}


def evaluation_metrics(val: dict, test: dict, threshold: float, test_groups, *, n_boot: int, seed: int) -> dict:
    """What a run logs once it is evaluated: validation figures (`best_val_*`), test figures at 0.5 (`test_*`)
    and at the validation threshold (`test_tuned_*`), with patient-level bootstrap intervals. `val`/`test`:
    {"targets", "probs"}."""
    final = {"val_threshold": threshold}
    for prefix, part in (("best_val", val), ("test", test)):
        final.update({f"{prefix}_{k}": v for k, v in binary_metrics(part["targets"], part["probs"]).items()
                      if k not in ("tn", "fp", "fn", "tp") or prefix == "test"})
    tuned = binary_metrics(test["targets"], test["probs"], threshold)
    final.update({f"test_tuned_{k}": tuned[k] for k in ("accuracy", "sensitivity", "specificity", "precision", "f1")})
    for prefix, t in (("test", 0.5), ("test_tuned", threshold)):
        intervals = bootstrap_ci(test["targets"], test["probs"], t, groups=test_groups, n_boot=n_boot, seed=seed)
        for name, (low, high) in intervals.items():
            if prefix == "test_tuned" and name == "auc":
                continue
            final[f"{prefix}_{name}_ci_low"], final[f"{prefix}_{name}_ci_high"] = low, high
    return final


def mcnemar(y, pred_a, pred_b, groups=None) -> dict[str, float]:
    """McNemar's test on the discordant images of two classifiers' correctness: exact (binomial) when every
    patient has one image, else the clustered form of Durkalski et al. (2003), which sums each patient's
    discordances before squaring, so that one patient's several images do not count as independent evidence."""
    y = np.asarray(y)
    right_a, right_b = np.asarray(pred_a) == y, np.asarray(pred_b) == y
    only_a, only_b = right_a & ~right_b, ~right_a & right_b
    b, c = int(only_a.sum()), int(only_b.sum())
    patient = _as_groups(y, groups)
    if b + c == 0:
        p_value = 1.0
    elif np.bincount(patient).max() == 1:
        p_value = float(min(1.0, stats.binomtest(b, b + c, 0.5).pvalue))
    else:
        per_patient = np.bincount(patient, weights=only_a.astype(float) - only_b.astype(float))
        spread = float((per_patient ** 2).sum())
        p_value = 1.0 if spread == 0 else float(stats.chi2.sf(per_patient.sum() ** 2 / spread, 1))
    return {"a_only_right": b, "b_only_right": c, "p_value": p_value}


def clustered_auc_covariance(y, scores: list, groups=None) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of several scores on the same images and their covariance matrix, by Obuchowski's (1997)
    nonparametric method for clustered data (several images per patient). With one image per patient it is
    exactly DeLong et al.'s (1988) covariance. Needs two patients with positive and two with negative images."""
    y = np.asarray(y).astype(bool)
    patient = _as_groups(y, groups)
    n_patients = patient.max() + 1 if len(patient) else 0
    m, n = int(y.sum()), int((~y).sum())
    m_i, n_i = np.bincount(patient[y], minlength=n_patients), np.bincount(patient[~y], minlength=n_patients)
    i10, i01 = int((m_i > 0).sum()), int((n_i > 0).sum())
    if i10 < 2 or i01 < 2:
        nan = np.full(len(scores), math.nan)
        return nan, np.full((len(scores), len(scores)), math.nan)
    v10, v01, aucs = [], [], []
    for p in scores:
        p = np.asarray(p, dtype=np.float64)
        x, z = p[y], p[~y]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])  # 1 when a positive outranks
        theta = psi.mean()
        # Per patient: the summed structural components of its images, centred on what its size predicts.
        v10.append(np.bincount(patient[y], weights=psi.sum(1) / n, minlength=n_patients) - m_i * theta)
        v01.append(np.bincount(patient[~y], weights=psi.sum(0) / m, minlength=n_patients) - n_i * theta)
        aucs.append(theta)
    v10, v01 = np.vstack(v10), np.vstack(v01)
    s10 = i10 / ((i10 - 1) * m) * v10 @ v10.T
    s01 = i01 / ((i01 - 1) * n) * v01 @ v01.T
    s11 = n_patients / (n_patients - 1) * v10 @ v01.T
    return np.array(aucs), s10 / m + s01 / n + (s11 + s11.T) / (m * n)


ZERO_VARIANCE_NOTE = ("the AUC difference has zero estimated variance (the two models order every pair of "
                      "images alike, or one separates them perfectly): no test is possible, p = 1")


def delong_test(y, p_a, p_b, groups=None) -> dict:
    """DeLong's test for the difference of two correlated AUCs on the same images, in Obuchowski's clustered
    form when `groups` (patient id per image) puts several images under one patient."""
    aucs, cov = clustered_auc_covariance(y, [p_a, p_b], groups)
    if np.isnan(aucs).any():
        return {"auc_a": math.nan, "auc_b": math.nan, "diff": math.nan, "z": math.nan, "p_value": math.nan,
                "note": "too few patients of a class for the test"}
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    diff = aucs[0] - aucs[1]
    if var <= 1e-15:
        z_score, p_value, note = 0.0, 1.0, ZERO_VARIANCE_NOTE
    else:
        z_score, note = diff / math.sqrt(var), ""
        p_value = float(2 * stats.norm.sf(abs(z_score)))
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "diff": float(diff), "z": float(z_score),
            "p_value": p_value, "note": note}


def paired_bootstrap_auc(y, p_a, p_b, *, groups=None, n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """Interval of AUC(a) − AUC(b) from the stratified cluster bootstrap, the same patients resampled for both
    models, and a two-sided p-value."""
    w = cluster_weights(y, groups, n_boot=n_boot, seed=seed)
    diff = weighted_auc_rows(y, p_a, w) - weighted_auc_rows(y, p_b, w)
    diff = diff[~np.isnan(diff)]
    if not len(diff):
        return {"diff_low": math.nan, "diff_high": math.nan, "p_value": math.nan}
    low, high = np.percentile(diff, [2.5, 97.5])
    p_value = min(1.0, 2 * min((diff <= 0).mean(), (diff >= 0).mean()))
    return {"diff_low": float(low), "diff_high": float(high), "p_value": float(p_value)}


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (NaN entries stay NaN and do not count)."""
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p.shape, math.nan)
    present = np.flatnonzero(~np.isnan(p))
    order = present[np.argsort(p[present], kind="mergesort")]
    k = len(order)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate((k - np.arange(k)) * p[order]))
    return adjusted
