"""How far the synthetic radiographs are from real ones, on simple statistics.

A straight line (pneumo_ml.baseline's classifier) tries to tell real radiographs from synthetic ones by
their global intensity statistics (baseline.intensity_features: histogram, percentiles, gradient) and
their radial power spectrum (how contrast is spread over spatial frequencies: blur, noise, texture).
Its cross-validated AUC is the distance: 0.5 means these statistics cannot tell them apart, 1.0 that they
always can. It is a report, not a target; what it cannot see (anatomy, lesion shape) it does not judge.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .baseline import cross_validated_auc, intensity_features
from .inputs import expand_paths
from .io import read_xray
from .preprocess import resize_xray
from .vocabulary import CLASSES

REAL_SAMPLES = Path(__file__).parent / "samples"
SPECTRUM_SIDE = 256  # images are squashed to this square first, as training squashes them
SPECTRUM_BINS = 12


def radial_power_spectrum(image: np.ndarray) -> np.ndarray:
    """Mean log power in SPECTRUM_BINS log-spaced rings of spatial frequency, relative to the total power:
    the spectrum's shape, so that overall contrast (already in the histogram) does not count twice."""
    x = resize_xray(np.asarray(image), SPECTRUM_SIDE).astype(np.float32)
    power = np.abs(np.fft.rfft2(x - x.mean())) ** 2
    fy = np.fft.fftfreq(SPECTRUM_SIDE)[:, None]
    fx = np.fft.rfftfreq(SPECTRUM_SIDE)[None, :]
    radius = np.hypot(fx, fy) * SPECTRUM_SIDE  # cycles per image
    edges = np.geomspace(1.0, SPECTRUM_SIDE / 2, SPECTRUM_BINS + 1)
    ring = np.digitize(radius, edges) - 1
    log_power = np.log(power + 1e-6)
    rings = np.array([log_power[ring == i].mean() for i in range(SPECTRUM_BINS)])
    return rings - np.log(power.sum() + 1e-6)


def realism_features(image: np.ndarray) -> np.ndarray:
    return np.concatenate([intensity_features(image), radial_power_spectrum(image)])


def realism_auc(real_images, synthetic_images) -> float | None:
    """Cross-validated AUC of a linear real-vs-synthetic classifier (positive class: real)."""
    features = np.stack([realism_features(image) for image in [*real_images, *synthetic_images]])
    is_real = np.r_[np.ones(len(real_images)), np.zeros(len(synthetic_images))]
    return cross_validated_auc(features, is_real)


def read_images(folder: Path) -> list[np.ndarray]:
    """Every image under `folder` (masks/ left out), decoded as training decodes it."""
    files, _ = expand_paths([str(folder)])
    return [read_xray(path) for path in files if "masks" not in Path(path).relative_to(folder).parts]


def synthetic_images(n: int, *, seed: int, size: int, difficulty: float) -> list[np.ndarray]:
    """n cases rendered in memory, alternating NORMAL and PNEUMONIA."""
    from .synthetic import render_case

    return [render_case(seed, index, CLASSES[index % 2] == "PNEUMONIA", size=size, difficulty=difficulty)[0]
            for index in range(n)]
