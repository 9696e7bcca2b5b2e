"""Several trained models served as one: the mean of their P(pneumonia), a threshold chosen on validation.

An ensemble's files are one folder: `ensemble.json` (its card) and `member_<k>/` holding each member's weights,
card and training-feature statistics, so that the logged pyfunc needs nothing else at load time. No MLflow here.
Research use, not for diagnosis.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import UserError
from .ood import STATS_FILE, Reference
from .predictor import ModelCard, Predictor
from .preprocess import decode_resized, resize_xray

CARD_FILE = "ensemble.json"
MEMBER_FILES = ("weights.pt", "model_card.json", STATS_FILE)  # STATS_FILE is optional
ARCHITECTURE = "ensemble"  # the `model` param and `architecture` of an ensemble's run and version
NAME = "Ensemble"


class EnsembleError(UserError, ValueError):
    """Members that cannot be combined, or an ensemble folder that is incomplete; the message says which."""


@dataclass
class EnsembleCard:
    members: list[str]  # each member's name (registered name and version, or run), in member_<k> order
    threshold: float = 0.5
    threshold_source: str = "default 0.5"
    name: str = NAME
    run_id: str = ""
    image_size: int = 0  # the largest member's: an image is decoded once, at this size, then resized per member
    architecture: str = ARCHITECTURE
    weights_source: str = ""
    member_versions: list[str] = field(default_factory=list)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | os.PathLike) -> EnsembleCard:
        try:
            data = json.loads(Path(path).read_text())
            return cls(**data)
        except (OSError, ValueError, TypeError) as e:
            raise EnsembleError(f"{Path(path).name}: unreadable ensemble card ({e.__class__.__name__}: {e})") from None


def write_folder(folder: Path, members: list[Path], card: EnsembleCard) -> Path:
    """Copy each member's files (a folder holding MEMBER_FILES) into `folder`; the card gets the input size."""
    folder.mkdir(parents=True, exist_ok=True)
    sizes = []
    for k, source in enumerate(members):
        target = folder / f"member_{k}"
        target.mkdir(exist_ok=True)
        for name in MEMBER_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, target / name)
            elif name != STATS_FILE:
                raise EnsembleError(f"member {card.members[k]}: its model has no {name}")
        sizes.append(ModelCard.load(target / "model_card.json").image_size)
    card.image_size = max(sizes)
    card.save(folder / CARD_FILE)
    return folder


def member_folders(folder: Path) -> list[Path]:
    return sorted((p for p in Path(folder).glob("member_*") if p.is_dir()), key=lambda p: int(p.name.split("_")[1]))


class EnsemblePredictor(Predictor):
    """The Predictor interface over members: decode once at the largest member size, resize per member, average
    the probabilities; the distance check flags what any member finds unlike its training images; Grad-CAM is
    the mean of the members' maps (each already scaled to [0, 1])."""

    def __init__(self, members: list[Predictor], card: EnsembleCard):
        if not members:
            raise EnsembleError("an ensemble needs at least one member")
        self.members, self.card = members, card
        self.device = members[0].device
        self.batch_size = members[0].batch_size

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, device: str = "cpu") -> EnsemblePredictor:
        folder = Path(folder)
        card = EnsembleCard.load(folder / CARD_FILE)
        members = []
        for k, path in enumerate(member_folders(folder)):
            predictor = Predictor.from_files(path / "weights.pt", path / "model_card.json", device)
            predictor.reference = Reference.load(path / STATS_FILE)
            predictor.card.name = card.members[k] if k < len(card.members) else predictor.card.name
            members.append(predictor)
        if len(members) != len(card.members):
            raise EnsembleError(f"{folder.name}: the card lists {len(card.members)} members, the folder holds "
                                f"{len(members)}")
        return cls(members, card)

    def decode(self, src, name: str | None = None) -> np.ndarray:
        return decode_resized(src, self.card.image_size, name=name)

    def _views(self, images: np.ndarray):
        """Each member with the images at its own input size."""
        for member in self.members:
            size = member.card.image_size
            view = np.zeros((len(images), size, size), dtype=np.uint8)
            for i, image in enumerate(images):
                view[i] = resize_xray(image, size)  # a no-op copy when the size is already right
            yield member, view

    def scored(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, scores = [], []
        for member, view in self._views(images):
            p, s = member.scored(view)
            probs.append(p)
            scores.append(s)
        # NaN where a member carries no statistics: the others still decide
        stacked = np.stack(scores)
        worst = np.where(np.isnan(stacked).all(0), np.nan, np.where(np.isnan(stacked), -np.inf, stacked).max(0))
        return mean_probabilities(probs), worst

    def heatmaps(self, images: np.ndarray) -> np.ndarray:
        maps = []
        for member, view in self._views(images):
            member_maps = member.heatmaps(view)
            maps.append(np.stack([resize_map(m, images.shape[1:]) for m in member_maps]) if len(member_maps)
                        else np.zeros(images.shape, dtype=np.float32))
        return np.mean(maps, axis=0).astype(np.float32)


def resize_map(heatmap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if heatmap.shape == tuple(shape):
        return heatmap
    from PIL import Image
    return np.asarray(Image.fromarray(heatmap.astype(np.float32), mode="F").resize(shape[::-1], Image.BILINEAR))


def mean_probabilities(members: list[np.ndarray]) -> np.ndarray:
    """The ensemble's P(pneumonia): the mean of its members' (soft voting)."""
    return np.mean(np.stack([np.asarray(p, dtype=np.float64) for p in members]), axis=0)
