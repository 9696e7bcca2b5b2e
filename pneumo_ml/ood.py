"""Is this a chest radiograph like the ones the model was trained on? Two checks behind every prediction.

1. Model-independent: does the input look like a radiograph at all (no colour, a film's proportions, a
   continuous grey-level histogram rather than a document's few levels)?
2. Model-dependent: the Mahalanobis distance of the model's penultimate features to the training images'
   (Ledoit-Wolf shrunk covariance), relative to a threshold set on the validation images. The statistics are
   fitted when the model is logged and travel inside the model artifact as `ood_stats.npz`.
"""
from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

NOT_RADIOGRAPH = "This does not look like a chest radiograph"
UNFAMILIAR = "This image is unlike the images this model was trained on"
STATS_FILE = "ood_stats.npz"

MAX_CHROMA = 0.06  # mean (max - min) / 255 over RGB pixels; greyscale films in RGB JPEGs stay near 0.01
MAX_ASPECT = 2.2  # long side / short side; chest films are 1.0-1.8
MAX_TOP_LEVELS = 0.5  # share of pixels in the 8 commonest grey levels; radiographs 0.10-0.17, documents > 0.8
MIN_SPREAD = 12.0  # grey-level standard deviation; radiographs 50-70, a blank page ~0
PERCENTILE = 99.0  # of the validation distances
# A validation set of 16 images makes its 99th percentile nearly its maximum: leave room above it.
MARGIN = 1.25


# --- check 1: does it look like a radiograph? -----------------------------------------------------------

GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")  # PIL modes without colour: nothing to decode for the colour check


def _header(src) -> tuple[tuple[int, int], float] | None:
    """(width × height, mean chroma) of the input, or None where PIL cannot read it (DICOM: pydicom's, grey).
    Only colour images are decoded again, small; a grey one's header says all."""
    try:
        fp = open(src, "rb") if isinstance(src, (str, os.PathLike)) else io.BytesIO(bytes(src))
        with fp, Image.open(fp, formats=["JPEG", "PNG", "BMP", "TIFF"]) as img:
            size = img.size
            if img.mode in GREY_MODES:
                return size, 0.0
            img.draft("RGB", (128, 128))  # JPEG: decode at a reduced scale
            small = img.convert("RGB")
            small.thumbnail((128, 128))
            rgb = np.asarray(small, dtype=np.int16)
            return size, float((rgb.max(axis=2) - rgb.min(axis=2)).mean() / 255)
    except Exception:  # read_xray has already accepted the input; this view is optional
        return None


def not_a_radiograph(src, image: np.ndarray) -> str:
    """Why `src` does not look like a chest radiograph ('' when it does). `image`: its decoded grey pixels."""
    header = _header(src)
    if header is not None:
        (width, height), chroma = header
        if chroma > MAX_CHROMA:
            return "it is in colour"
        if max(width, height) / max(1, min(width, height)) > MAX_ASPECT:
            return f"its shape, {width}x{height}, is far from a chest film's"
    counts = np.bincount(np.asarray(image, dtype=np.uint8).ravel(), minlength=256)
    if np.sort(counts)[-8:].sum() / max(1, counts.sum()) > MAX_TOP_LEVELS:
        return "it has few grey levels, like a drawing, a document or a screenshot"
    if float(np.std(image)) < MIN_SPREAD:
        return "it is nearly uniform"
    return ""


# --- check 2: how far from the training images? ---------------------------------------------------------

def classifier_layer(model: torch.nn.Module) -> torch.nn.Linear:
    """The final linear layer; its input is the penultimate feature vector in every architecture here."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise ValueError(f"{model.__class__.__name__} has no linear classifier layer")
    return linears[-1]


@contextlib.contextmanager
def penultimate(model: torch.nn.Module):
    """Collects the classifier's input features of every forward pass inside the block (a list of arrays)."""
    captured: list[np.ndarray] = []
    hook = classifier_layer(model).register_forward_hook(
        lambda module, inputs, output: captured.append(inputs[0].detach().float().flatten(1).cpu().numpy()))
    try:
        yield captured
    finally:
        hook.remove()


@dataclass
class Reference:
    """The training features' mean and Ledoit-Wolf covariance (in its eigenbasis) plus the flag threshold."""
    mean: np.ndarray  # (p,)
    basis: np.ndarray  # (k, p) eigenvectors of the empirical covariance, k <= n
    variances: np.ndarray  # (k,) shrunk covariance along each eigenvector
    floor: float  # shrunk covariance in every other direction
    threshold: float = 1.0  # of the distance; ood_score = distance / threshold

    @classmethod
    def fit(cls, features: np.ndarray) -> Reference:
        from sklearn.covariance import ledoit_wolf_shrinkage
        x = np.asarray(features, dtype=np.float64)
        centred = x - x.mean(0)
        shrinkage = float(ledoit_wolf_shrinkage(centred, assume_centered=True))
        _, singular, basis = np.linalg.svd(centred / np.sqrt(len(x)), full_matrices=False)
        eigen = singular ** 2
        target = max(float(eigen.sum() / x.shape[1]), 1e-12)  # sklearn's mu: trace / p
        floor = shrinkage * target
        return cls(x.mean(0), basis, (1 - shrinkage) * eigen + floor, max(floor, 1e-12))

    def distances(self, features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, dtype=np.float64) - self.mean
        along = x @ self.basis.T
        rest = np.maximum((x * x).sum(1) - (along * along).sum(1), 0.0)
        return np.sqrt((along * along / self.variances).sum(1) + rest / self.floor)

    def scores(self, features: np.ndarray) -> np.ndarray:
        return self.distances(features) / self.threshold

    def save(self, path: str | os.PathLike) -> Path:
        np.savez_compressed(path, mean=self.mean.astype(np.float32), basis=self.basis.astype(np.float32),
                            variances=self.variances, floor=self.floor, threshold=self.threshold)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike | None) -> Reference | None:
        if not path or not Path(path).is_file():
            return None  # a model logged before these checks: only the model-independent one runs
        with np.load(path, allow_pickle=False) as f:
            return cls(f["mean"].astype(np.float64), f["basis"].astype(np.float64), f["variances"],
                       float(f["floor"]), float(f["threshold"]))


def fit_reference(predictor, train_images: np.ndarray, val_images: np.ndarray) -> Reference:
    """Fit on the training images, set the threshold at a high percentile of the validation distances."""
    reference = Reference.fit(predictor.probabilities_and_features(train_images)[1])
    val = reference.distances(predictor.probabilities_and_features(val_images)[1])
    reference.threshold = float(np.percentile(val, PERCENTILE)) * MARGIN
    return reference


def save_reference(model: torch.nn.Module, card, images: dict[str, np.ndarray], folder: Path) -> Path:
    """Fit the reference of a freshly trained model on its train/val images; write it to folder/STATS_FILE."""
    from .predictor import Predictor  # the predictor runs these checks: import it late
    predictor = Predictor(model, card, next(model.parameters()).device)
    return fit_reference(predictor, images["train"], images["val"]).save(folder / STATS_FILE)


# --- the sentence a user reads --------------------------------------------------------------------------

def warning(not_radiograph: str, ood_score: float) -> str:
    """One plain sentence, or '' when both checks pass (a NaN score: the model carries no statistics)."""
    if not_radiograph:
        return f"{NOT_RADIOGRAPH} ({not_radiograph}); the prediction means nothing for it."
    if ood_score > 1.0:
        return f"{UNFAMILIAR} ({ood_score:.1f} times the usual distance); treat the prediction with caution."
    return ""
