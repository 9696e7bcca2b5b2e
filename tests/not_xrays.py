"""Pictures that are not chest radiographs, drawn with numpy and PIL (nothing downloaded), as encoded bytes."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def _encode(image: Image.Image, fmt: str = "JPEG") -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def _landscape(seed: int, width: int = 640, height: int = 480) -> Image.Image:
    """Sky with a sun, hills, a lake and trees: a colour photograph's layout and textures."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height)[:, None, None]
    sky = (np.array([70, 130, 220]) * (1 - y) + np.array([200, 220, 250]) * y) * np.ones((1, width, 1))
    image = Image.fromarray(sky.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    sun = rng.integers(80, width - 80)
    draw.ellipse([sun - 40, 40, sun + 40, 120], fill=(250, 220, 90))
    ridge = height * 0.55 + np.cumsum(rng.normal(0, 4, width))
    draw.polygon([(0, height)] + [(x, float(v)) for x, v in enumerate(ridge)] + [(width, height)], fill=(60, 130, 50))
    draw.rectangle([0, int(height * 0.8), width, height], fill=(40, 90, 160))
    for x in rng.integers(0, width, 12):
        top = int(height * rng.uniform(0.45, 0.65))
        draw.polygon([(x, top), (x - 18, top + 70), (x + 18, top + 70)], fill=(20, 80, 30))
    noise = rng.normal(0, 8, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8))


def colour_photo(seed: int = 0) -> bytes:
    return _encode(_landscape(seed))


def grey_scene(seed: int = 1) -> bytes:
    """The landscape in greyscale: no colour to give it away."""
    return _encode(_landscape(seed).convert("L").filter(ImageFilter.GaussianBlur(1)))


def text_screenshot() -> bytes:
    """A screen of black text on white, as a PNG (sharp edges, two grey levels plus anti-aliasing)."""
    image = Image.new("RGB", (1200, 800), "white")
    draw = ImageDraw.Draw(image)
    for line in range(30):
        draw.text((20, 10 + line * 26), f"{line:3d}  The quick brown fox jumps over the lazy dog; "
                                        f"pack my box with five dozen liquor jugs.", fill="black")
    return _encode(image, "PNG")


NOT_XRAYS = {"colour photo": colour_photo, "colour photo 2": lambda: colour_photo(7),
             "greyscale scene": grey_scene, "text screenshot": text_screenshot}
