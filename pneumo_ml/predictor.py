"""A trained model plus its card (architecture, input size, normalisation, threshold): what every front end
(pyfunc/REST, `pneumo-ml predict`, `pneumo-ml explain`, the demo) calls to turn images into predictions."""
from __future__ import annotations

import base64
import json
import math
import os
import threading
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from .config import MODEL_NAMES
from .devices import resolve_device
from .errors import UserError
from .models import create_model
from .ood import Reference, not_a_radiograph, penultimate, warning
from .preprocess import decode_resized
from .tensorfile import load_tensors
from .transforms import BatchTransform
from .vocabulary import CLASSES

IMAGE_SIZES = (16, 4096)  # a card's input size outside this is a damaged card, not a model


@dataclass
class ModelCard:
    architecture: str
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    threshold: float = 0.5
    threshold_source: str = "default 0.5"
    name: str = ""  # what predictions report as `model`: registered name and version, or the run
    run_id: str = ""
    weights_source: str = ""
    extra: dict = field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | os.PathLike) -> ModelCard:
        """The card, checked field by field: a model's card decides what every prediction means."""
        where = Path(path).name
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ModelCardError(f"{where}: unreadable model card ({e.__class__.__name__}: {e})") from None
        if not isinstance(data, dict):
            raise ModelCardError(f"{where}: expected a JSON object")
        known = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        if unknown := sorted(set(data) - known):
            raise ModelCardError(f"{where}: unknown field {unknown[0]!r}")
        if missing := sorted(required - set(data)):
            raise ModelCardError(f"{where}: field {missing[0]!r} is missing")
        _check_card(data, where)
        data["mean"], data["std"] = tuple(data["mean"]), tuple(data["std"])
        return cls(**data)


class ModelCardError(UserError, ValueError):
    """A model card with a field out of range; the message names the field."""


def _check_card(data: dict, where: str) -> None:
    def need(ok: bool, name: str, reason: str) -> None:
        if not ok:
            raise ModelCardError(f"{where}: field {name!r} = {data.get(name)!r} {reason}")

    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    need(data["architecture"] in MODEL_NAMES, "architecture", f"is not a known architecture ({', '.join(MODEL_NAMES)})")
    size = data["image_size"]
    need(isinstance(size, int) and not isinstance(size, bool) and IMAGE_SIZES[0] <= size <= IMAGE_SIZES[1],
         "image_size", f"is not a whole number of pixels in [{IMAGE_SIZES[0]}, {IMAGE_SIZES[1]}]")
    for name in ("mean", "std"):
        values = data[name]
        need(isinstance(values, list) and len(values) in (1, 3) and all(number(v) for v in values), name,
             "is not a list of 1 or 3 finite numbers")
    need(all(v > 0 for v in data["std"]), "std", "has a value that is not positive")
    threshold = data.get("threshold", 0.5)
    need(number(threshold) and 0.0 <= threshold <= 1.0, "threshold", "is not a finite number in [0, 1]")


class Predictor:
    """Batched inference and Grad-CAM on uint8 images, through the same preprocessing as training."""

    def __init__(self, model: torch.nn.Module, card: ModelCard, device: torch.device | str = "cpu",
                 batch_size: int = 32):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.card = card
        self.batch_size = batch_size
        self.transform = BatchTransform(card.mean, card.std)
        self.reference: Reference | None = None  # the training features' statistics, when the model carries them
        # Grad-CAM hooks the model's layers while it runs: a server's concurrent requests take turns.
        self._lock = threading.Lock()

    @classmethod
    def from_files(cls, weights: str | os.PathLike, card: str | os.PathLike, device: str = "cpu") -> Predictor:
        card_obj = ModelCard.load(card)
        model = create_model(card_obj.architecture, pretrained="false", image_size=card_obj.image_size)
        model.load_state_dict(load_tensors(weights))
        return cls(model, card_obj, resolve_device(device))

    def decode(self, src, name: str | None = None) -> np.ndarray:
        """Bytes or a path -> the uint8 size×size image (raises pneumo_ml.io.ImageReadError)."""
        return decode_resized(src, self.card.image_size, name=name)

    def read(self, src, name: str | None = None) -> tuple[np.ndarray, str]:
        """(image, why it does not look like a chest radiograph, '' when it does)."""
        image = self.decode(src, name=name)
        return image, not_a_radiograph(src, image)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """P(pneumonia) for uint8 (N, size, size) images."""
        return self.scored(images)[0]

    def scored(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """P(pneumonia) and the ood_score (see `ood_scores`) per image."""
        probs, features = self.probabilities_and_features(images)
        return probs, self.ood_scores(features)

    @torch.no_grad()
    def probabilities_and_features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """P(pneumonia) and the penultimate features (N, p) for uint8 (N, size, size) images."""
        out = []
        with self._lock, penultimate(self.model) as features:
            for start in range(0, len(images), self.batch_size):
                batch = torch.as_tensor(np.ascontiguousarray(images[start:start + self.batch_size]))
                logits = self.model(self.transform(batch.to(self.device))).float()
                out.append(torch.softmax(logits, 1)[:, 1].cpu().numpy())
        if not out:
            return np.zeros(0), np.zeros((0, 0))
        return np.concatenate(out).astype(np.float64), np.concatenate(features)

    def ood_scores(self, features: np.ndarray) -> np.ndarray:
        """Distance from the training images relative to the threshold (> 1: flagged); NaN without statistics."""
        return self.reference.scores(features) if self.reference else np.full(len(features), np.nan)

    def heatmaps(self, images: np.ndarray) -> np.ndarray:
        from .explain import gradcam
        with self._lock:
            return gradcam(self.model, self.card.architecture, images, self.transform, target=1, device=self.device)

    def predict(self, images: np.ndarray, *, threshold: float | None = None, gradcam: bool = False,
                not_radiograph: list[str] | None = None) -> list[dict]:
        """One result per image: label, probability, confidence, threshold, model, ood_score, warning (and
        gradcam_png). `not_radiograph`: what `read` found per image."""
        threshold = self.card.threshold if threshold is None else float(threshold)
        probs, scores = self.scored(images)
        reasons = not_radiograph or [""] * len(probs)
        maps = self.heatmaps(images) if gradcam and len(images) else None
        results = []
        for i, p in enumerate(probs):
            positive = p >= threshold
            row = {"label": CLASSES[int(positive)], "probability": float(p),
                   "confidence": float(p if positive else 1 - p), "threshold": threshold,
                   "model": self.card.name, "ood_score": float(scores[i]), "warning": warning(reasons[i], scores[i])}
            if maps is not None:
                from .explain import overlay_png
                png = overlay_png(images[i], maps[i], title=f"{row['label']}  p={p:.3f} (threshold {threshold:.3f})")
                row["gradcam_png"] = base64.b64encode(png).decode("ascii")
            results.append(row)
        return results
