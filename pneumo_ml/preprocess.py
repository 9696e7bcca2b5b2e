"""Decode and resize once, to the uint8 size×size image the cache keeps and every model sees (torch-free)."""
from __future__ import annotations

import numpy as np
from PIL import Image

from .io import read_xray


def resize_xray(image: np.ndarray, size: int) -> np.ndarray:
    """Squash to size×size like the study's Resize((224, 224)): nothing is cropped away."""
    if image.shape == (size, size):
        return np.ascontiguousarray(image, dtype=np.uint8)
    resized = Image.fromarray(image).resize((size, size), Image.BILINEAR, reducing_gap=2.0)
    return np.array(resized, dtype=np.uint8)  # writable: torch warns about read-only arrays


def display_image(src, max_side: int, *, name: str | None = None) -> np.ndarray:
    """The radiograph as read_xray decodes it, its longest side shrunk to `max_side` (aspect kept): what a person
    is shown, with the model's map stretched back over it."""
    image = read_xray(src, name=name, draft_size=max_side)
    h, w = image.shape
    scale = max_side / max(h, w)
    if scale < 1:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR, reducing_gap=2.0))
    return image


def decode_resized(src, size: int, *, name: str | None = None) -> np.ndarray:
    """read_xray, then resize: the uint8 size×size image the cache keeps and every model sees."""
    return resize_xray(read_xray(src, name=name, draft_size=size), size)
