"""The trivial baseline: a straight line through global intensity statistics of each image.

A model that does not beat it has learnt nothing a histogram does not show. The same features give the
data audit its shortcut figure and the synthetic generator's tests their "global statistics carry no
label" check, so all three speak of one baseline.
"""
from __future__ import annotations

import numpy as np

PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
HISTOGRAM_BINS = 16
FEATURE_NAMES = ("mean", "std", *(f"p{q}" for q in PERCENTILES),
                 *(f"hist{i}" for i in range(HISTOGRAM_BINS)), "mean_gradient")
_MAX_SIDE = 256  # global statistics barely change with resolution; this keeps 1,000 images under a second


def intensity_features(image: np.ndarray) -> np.ndarray:
    """Global statistics of one uint8 grayscale image (H x W): FEATURE_NAMES, in that order."""
    img = np.asarray(image)
    step = max(1, int(np.ceil(max(img.shape) / _MAX_SIDE)))
    x = img[::step, ::step].astype(np.float32)
    histogram = np.histogram(x, bins=HISTOGRAM_BINS, range=(0, 256))[0] / x.size
    gradient = np.abs(np.diff(x, axis=0)).mean() + np.abs(np.diff(x, axis=1)).mean()
    return np.concatenate([[x.mean(), x.std()], np.percentile(x, PERCENTILES), histogram, [gradient]])


def feature_matrix(images) -> np.ndarray:
    """One row of intensity_features per image (an iterable of H x W uint8 arrays)."""
    return np.stack([intensity_features(image) for image in images])


def make_classifier():
    """Standardised features into an L2 logistic regression: the "straight line"."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))


class IntensityBaseline:
    """Fitted on the training split; P(pneumonia) for any images, like a model's."""

    name = "IntensityBaseline"

    def __init__(self):
        self.classifier = make_classifier()

    def fit(self, images, targets) -> IntensityBaseline:
        self.classifier.fit(feature_matrix(images), np.asarray(targets, dtype=int))
        return self

    def predict_proba(self, images) -> np.ndarray:
        return self.classifier.predict_proba(feature_matrix(images))[:, 1]


def cross_validated_auc(features: np.ndarray, targets, groups=None, *, folds: int = 5,
                        repeats: int = 3) -> float | None:
    """Mean AUC of make_classifier() over repeated, seeded, stratified (grouped) folds; None when a class has
    fewer groups than two folds need. Files of one group (a patient, identical bytes) stay in one fold."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold

    y = np.asarray(targets, dtype=int)
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    k = min(folds, *(len(set(groups[y == c])) for c in (0, 1)))
    if k < 2:
        return None
    aucs = []
    for seed in range(repeats):
        for train, test in StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(features, y, groups):
            if len(set(y[train])) == 2 and len(set(y[test])) == 2:
                model = make_classifier().fit(features[train], y[train])
                aucs.append(roc_auc_score(y[test], model.decision_function(features[test])))
    return float(np.mean(aucs)) if aucs else None
