"""Decode and resize once, to the uint8 size×size image the cache keeps and every model sees (torch-free)."""
from __future__ import annotations

import numpy as np
from PIL import Image

from .io import read_xray


def resize_xray(image: np.ndarray, size: int) -> np.ndarray:
    """Squash to size×size like the seed's Resize((224, 224)): nothing is cropped away."""
    if image.shape == (size, size):
        return np.ascontiguousarray(image, dtype=np.uint8)
    resized = Image.fromarray(image).resize((size, size), Image.BILINEAR, reducing_gap=2.0)
    return np.array(resized, dtype=np.uint8)  # writable: torch warns about read-only arrays


def decode_resized(src, size: int, *, name: str | None = None) -> np.ndarray:
    """read_xray, then resize: the uint8 size×size image the cache keeps and every model sees."""
    return resize_xray(read_xray(src, name=name, draft_size=size), size)
