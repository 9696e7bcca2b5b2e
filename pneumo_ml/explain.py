"""Grad-CAM heatmaps, their overlays and figures, and how well they localise known lesions.

Research use, not for diagnosis: a heatmap shows where the model found evidence for a class, not where disease is.
"""
from __future__ import annotations

import io
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image
from scipy.ndimage import binary_dilation
from torch import nn

from .models import gradcam_layer, unwrap
from .plots import FIGURE_DPI
from .transforms import BatchTransform
from .vocabulary import NOTICE

COLORBAR_LABEL = "Grad-CAM (P(pneumonia) evidence)"
COLORMAP = "inferno"  # perceptually uniform: equal steps of evidence look like equal steps of colour
MASK_COLOUR = "cyan"  # the lesion's outline, where the data set provides a mask
FOOTER = NOTICE  # under every figure
LESION_MIN, LUNG_MIN = 192, 64  # mask values: 0 outside the lungs, 128 lung field, 255 lesion


# ---------------------------------------------------------------- Grad-CAM

def gradcam(model: nn.Module, name: str | nn.Module, images_uint8: torch.Tensor | np.ndarray,
            transform: BatchTransform, *, target: int | None = 1, batch_size: int = 16,
            device: torch.device | str | None = None) -> np.ndarray:
    """Grad-CAM maps (N, H, W) float32 in [0, 1] for uint8 images (N, H, W), for the log-odds of class `target`.

    `name` is a model name from `models.MODELS` (its Grad-CAM layer is used) or the target layer itself.
    `target=None` explains each image's predicted class. Runs in float32 with autocast off, in eval mode on
    the model's device (or `device`, where the model must already be); the model's train/eval modes,
    requires_grad flags and `.grad` are left as they were. A map without positive evidence is all zero.
    """
    if getattr(transform, "augment", False):
        raise ValueError("gradcam needs a transform without augmentation: the map must align with the image")
    images = torch.as_tensor(np.asarray(images_uint8) if not isinstance(images_uint8, torch.Tensor) else images_uint8)
    if images.ndim != 3:
        raise ValueError(f"expected uint8 images (N, H, W), got shape {tuple(images.shape)}")
    net = unwrap(model)
    layer = name if isinstance(name, nn.Module) else gradcam_layer(name, net)
    dev = torch.device(device) if device is not None else _device_of(net)
    n, h, w = images.shape
    out = np.zeros((n, h, w), dtype=np.float32)
    if n == 0:
        return out
    modes = [(m, m.training) for m in net.modules()]
    net.eval()  # dropout off and BatchNorm statistics untouched while explaining
    try:
        with _cam_layer(net, layer) as cam_layer, torch.autocast(dev.type, enabled=False):
            cam = LayerGradCam(_LogOdds(net), cam_layer)
            for start in range(0, n, batch_size):
                x = transform(images[start:start + batch_size].to(dev)).float()
                if target is None:
                    with torch.no_grad():
                        batch_target = net(x).argmax(dim=1)
                else:
                    batch_target = int(target)
                attr = cam.attribute(x, target=batch_target, relu_attributions=True).detach()
                maps = F.interpolate(attr.float(), size=(h, w), mode="bilinear", align_corners=False)[:, 0]
                out[start:start + len(x)] = _minmax(maps).cpu().numpy()
    finally:
        for module, training in modes:
            module.training = training
    return out


class _LogOdds(nn.Module):
    """Two logits (z0, z1) -> (z0 - z1, z1 - z0): each class's log-odds, the quantity its softmax depends on.

    Softmax ignores what the two logits share; explaining z1 alone also explains that common part, which a
    model trained with cross-entropy never had a reason to change from its random initialisation. Models
    with other than two outputs are explained as they are.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        if logits.ndim != 2 or logits.shape[1] != 2:
            return logits
        diff = logits[:, 1] - logits[:, 0]
        return torch.stack([-diff, diff], dim=1)


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _minmax(maps: torch.Tensor) -> torch.Tensor:
    maps = torch.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0)
    lo = maps.amin(dim=(1, 2), keepdim=True)
    span = maps.amax(dim=(1, 2), keepdim=True) - lo
    # A flat map carries no localisation: it stays zero rather than becoming 0/0.
    return torch.where(span > 1e-12, (maps - lo) / span.clamp_min(1e-12), torch.zeros_like(maps)).clamp_(0, 1)


class _TokenGrid(nn.Module):
    """Patch tokens (N, P, C) -> feature map (N, C, gh, gw), the N×C×H×W layer output Captum's Grad-CAM expects."""

    def __init__(self, grid: tuple[int, int]):
        super().__init__()
        self.grid = grid

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        n, p, c = patches.shape
        gh, gw = self.grid
        if gh * gw != p:
            raise ValueError(f"{p} patch tokens do not fill the {gh}x{gw} patch grid")
        return patches.transpose(1, 2).reshape(n, c, gh, gw)  # timm orders patch tokens row-major


@contextmanager
def _cam_layer(model: nn.Module, layer: nn.Module):
    """The module Captum should hook: `layer` itself for CNNs; for a timm ViT, a token-grid view of its tokens.

    The view sits in the forward pass (tokens -> map -> tokens), so the gradient Captum takes w.r.t. the
    map is the gradient w.r.t. the tokens. With class-token pooling the last block's *output* patch tokens
    never reach the logits (only its class token does), so their gradient is zero; there the tokens
    entering that block are used instead, the usual choice for ViT Grad-CAM.
    """
    if not (hasattr(model, "patch_embed") and hasattr(model, "num_prefix_tokens")):
        yield layer
        return
    grid = _TokenGrid(tuple(model.patch_embed.grid_size))
    prefix = int(model.num_prefix_tokens)

    def through_grid(tokens: torch.Tensor) -> torch.Tensor:
        fmap = grid(tokens[:, prefix:])
        return torch.cat([tokens[:, :prefix], fmap.flatten(2).transpose(1, 2)], dim=1)

    blocks = getattr(model, "blocks", None)
    use_input = (getattr(model, "global_pool", None) == "token" and blocks is not None and len(blocks) > 0
                 and layer is blocks[-1])
    if use_input:
        handle = layer.register_forward_pre_hook(lambda _m, args: (through_grid(args[0]), *args[1:]))
    else:
        handle = layer.register_forward_hook(lambda _m, _args, out: through_grid(out))
    try:
        yield grid
    finally:
        handle.remove()


# ---------------------------------------------------------------- overlays and figures

def overlay(image_uint8, heatmap, *, alpha: float = 0.45, colormap: str = COLORMAP) -> np.ndarray:
    """The radiograph in grey with the colour-mapped heatmap blended on top: uint8 (H, W, 3)."""
    image = _numpy(image_uint8)
    heat = _numpy(heatmap).astype(np.float32)
    if image.ndim != 2 or heat.ndim != 2:
        raise ValueError("overlay expects a 2-D image and a 2-D heatmap")
    if heat.shape != image.shape:
        heat = np.asarray(Image.fromarray(heat).resize(image.shape[::-1], Image.BILINEAR))
    grey = np.repeat(image.astype(np.float32)[..., None] / 255.0, 3, axis=2)
    colour = colormaps[colormap](np.clip(np.nan_to_num(heat), 0.0, 1.0))[..., :3]
    blended = (1.0 - alpha) * grey + alpha * colour
    return np.clip(np.rint(blended * 255.0), 0, 255).astype(np.uint8)


def with_colour_bar(rgb: np.ndarray, colormap: str = COLORMAP) -> np.ndarray:
    """The overlay with its colour scale on the right, 'more' evidence at the top, 'less' at the bottom."""
    from PIL import ImageDraw
    height, width = rgb.shape[:2]
    bar, gap, text = max(10, width // 30), max(4, width // 80), 40
    canvas = np.full((height, width + gap + bar + text, 3), 255, dtype=np.uint8)
    canvas[:, :width] = rgb
    scale = colormaps[colormap](np.linspace(1.0, 0.0, height))[:, :3]
    canvas[:, width + gap:width + gap + bar] = np.rint(scale * 255).astype(np.uint8)[:, None, :]
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    draw.text((width + gap + bar + 3, 2), "more", fill=(0, 0, 0))
    draw.text((width + gap + bar + 3, height - 14), "less", fill=(0, 0, 0))
    return np.asarray(picture)


def is_flat(heatmap) -> bool:
    """A map with no region above any other (gradcam leaves such a map at zero): nothing to show."""
    heat = np.nan_to_num(_numpy(heatmap).astype(np.float32))
    return float(heat.max() - heat.min()) < 1e-6


def overlay_png(image_uint8, heatmap, *, title: str | None = None, dpi: int = 100) -> bytes:
    """A PNG (RGB) of the overlay with its colour bar, the title if given, and the research-use footer (100 dpi:
    what a REST answer carries; a run's figures use FIGURE_DPI)."""
    return _png(overlay_figure(image_uint8, heatmap, title=title, dpi=dpi))


def overlay_figure(image_uint8, heatmap, *, title: str | None = None, dpi: int = 100) -> Figure:
    fig = Figure(figsize=(5.0, 4.4), dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(overlay(image_uint8, heatmap))
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(_colour_scale(), ax=ax, label=COLORBAR_LABEL, shrink=0.85)
    fig.supxlabel(FOOTER, fontsize=7, color="0.35")
    return fig


def save_overlay(path: str | Path, image, heatmap, title: str | None = None, *, for_paper: bool = False) -> Path:
    """The overlay as PNG; `for_paper`: at FIGURE_DPI, with an SVG beside it (a run's figures)."""
    path = Path(path)
    fig = overlay_figure(image, heatmap, title=title, dpi=FIGURE_DPI if for_paper else 100)
    path.write_bytes(_png(fig))
    if for_paper:
        fig.savefig(path.with_suffix(".svg"), format="svg", metadata={"Date": None})
    return path


def gradcam_grid(images: Sequence, heatmaps: Sequence, titles: Sequence[str], *, columns: int = 4,
                 masks: Sequence | None = None) -> Figure:
    """A grid of overlays, one per image with its title, a shared colour bar and the research-use footer;
    `masks` (a lesion mask or None per image) are outlined."""
    if not (len(images) == len(heatmaps) == len(titles)) or len(images) == 0:
        raise ValueError("gradcam_grid needs as many (>= 1) images, heatmaps and titles")
    cols = max(1, min(columns, len(images)))
    rows = math.ceil(len(images) / cols)
    fig = Figure(figsize=(3.4 * cols + 1.0, 3.5 * rows + 0.4), dpi=FIGURE_DPI, layout="constrained")
    axes = []
    for i, (image, heat, title) in enumerate(zip(images, heatmaps, titles)):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(overlay(image, heat))
        mask = masks[i] if masks is not None else None
        if mask is not None and _lesion_and_lung(np.asarray(mask))[0].any():
            lesion = _resize_nearest(_lesion_and_lung(np.asarray(mask))[0], np.asarray(image).shape)
            ax.contour(lesion.astype(float), levels=[0.5], colors=MASK_COLOUR, linewidths=0.8)
        ax.set_title(title, fontsize=8)
        ax.set_axis_off()
        axes.append(ax)
    fig.colorbar(_colour_scale(), ax=axes, label=COLORBAR_LABEL, shrink=0.8)
    fig.supxlabel(FOOTER, fontsize=8, color="0.35")
    return fig


def _colour_scale(colormap: str = COLORMAP) -> ScalarMappable:
    return ScalarMappable(norm=Normalize(0.0, 1.0), cmap=colormaps[colormap])


def _png(fig: Figure) -> bytes:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3]
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG")
    return buf.getvalue()


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


# ---------------------------------------------------------------- which cases to show

def pick_examples(targets, probs, threshold: float, per_kind: int = 2) -> list[tuple[int, str]]:
    """Up to `per_kind` indices each of TP, FP, FN, TN (in that order), the most confident first."""
    targets = _numpy(targets).astype(int).ravel()
    probs = _numpy(probs).astype(np.float64).ravel()
    predicted = probs >= threshold
    picked: list[tuple[int, str]] = []
    for kind, label, pred in (("TP", 1, True), ("FP", 0, True), ("FN", 1, False), ("TN", 0, False)):
        idx = np.flatnonzero((targets == label) & (predicted == pred))
        confidence = probs[idx] if pred else -probs[idx]
        order = idx[np.argsort(-confidence, kind="stable")]
        picked += [(int(i), kind) for i in order[:per_kind]]
    return picked


# ---------------------------------------------------------------- localisation against known lesions

def pointing_game(heatmaps, lesion_masks, *, tolerance_px: int | None = None) -> float:
    """Share of images with a lesion whose heatmap peak lies in the lesion dilated by `tolerance_px`.

    Masks are 0/128/255 masks (lesion = 255), boolean or 0/1 lesion masks, resized (nearest) to each heatmap.
    Default tolerance: 3 % of the shorter image side, at least 1 px. An all-zero map misses. NaN if no image
    has a lesion.
    """
    return _pointing(list(_scored(heatmaps, lesion_masks)), tolerance_px)


def energy_in_mask(heatmaps, lesion_masks) -> float:
    """Mean over images with a lesion of the heatmap mass inside it / total mass (all-zero map: 0). NaN if none."""
    return _energy_share(list(_scored(heatmaps, lesion_masks)))


def uniform_baseline(lung_masks_or_masks, *, tolerance_px: int | None = None) -> dict[str, float]:
    """Chance level: the scores of a map uniform over the lungs (the whole image where a mask has no lung field).

    pointing_game = mean share of the lung area inside the dilated lesion, energy_in_mask = mean share of
    the lung area inside the lesion, over the masks with a lesion (at the masks' own resolution).
    """
    pointing, energy = [], []
    for mask in _as_list(lung_masks_or_masks):
        lesion, lung = _lesion_and_lung(_numpy(mask))
        if not lesion.any():
            continue
        area = lung.sum()
        pointing.append((_dilate(lesion, tolerance_px) & lung).sum() / area)
        energy.append((lesion & lung).sum() / area)
    nan = float("nan")
    return {"pointing_game": float(np.mean(pointing)) if pointing else nan,
            "energy_in_mask": float(np.mean(energy)) if energy else nan}


def localisation_scores(heatmaps, masks, *, tolerance_px: int | None = None) -> dict[str, float]:
    """Pointing game and energy-in-mask of the heatmaps and of the uniform-over-lungs chance level.

    Only images whose mask has a lesion are scored (`cam_images` of them); scores are NaN when there are none.
    """
    scored = list(_scored(heatmaps, masks))  # each mask resized once, for every score
    resized = [mask for _, _, mask in scored]
    base = uniform_baseline(resized, tolerance_px=tolerance_px)
    return {
        "cam_pointing_game": _pointing(scored, tolerance_px),
        "cam_energy_in_mask": _energy_share(scored),
        "cam_pointing_game_uniform": base["pointing_game"],
        "cam_energy_in_mask_uniform": base["energy_in_mask"],
        "cam_images": len(resized),
    }


def _pointing(scored: list, tolerance_px: int | None) -> float:
    hits = [_hit(h, lesion, tolerance_px) for h, lesion, _ in scored]
    return float(np.mean(hits)) if hits else float("nan")


def _energy_share(scored: list) -> float:
    shares = [_energy(h, lesion) for h, lesion, _ in scored]
    return float(np.mean(shares)) if shares else float("nan")


def _as_list(arrays) -> list:
    if isinstance(arrays, (np.ndarray, torch.Tensor)) and arrays.ndim == 2:
        return [arrays]
    return list(arrays)


def _scored(heatmaps, masks):
    """(heatmap, lesion at heatmap size, mask at heatmap size) for each image whose mask has a lesion."""
    heatmaps, masks = _as_list(heatmaps), _as_list(masks)
    if len(heatmaps) != len(masks):
        raise ValueError(f"{len(heatmaps)} heatmaps but {len(masks)} masks")
    for heat, mask in zip(heatmaps, masks):
        heat = np.nan_to_num(_numpy(heat).astype(np.float64))
        mask = _resize_nearest(_numpy(mask), heat.shape)
        lesion, _ = _lesion_and_lung(mask)
        if lesion.any():
            yield heat, lesion, mask


def _lesion_and_lung(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if mask.dtype == bool or mask.max(initial=0) <= 1:
        lesion = mask.astype(bool)
        return lesion, np.ones_like(lesion)
    lesion = mask >= LESION_MIN
    lung = mask >= LUNG_MIN
    return lesion, lung if lung.any() else np.ones_like(lesion)


def _resize_nearest(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if mask.shape == tuple(shape):
        return mask
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * mask.shape[0] / shape[0]).astype(int), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * mask.shape[1] / shape[1]).astype(int), mask.shape[1] - 1)
    return mask[np.ix_(rows, cols)]


def _tolerance(shape: tuple[int, ...], tolerance_px: int | None) -> int:
    return max(1, round(0.03 * min(shape))) if tolerance_px is None else int(tolerance_px)


def _dilate(lesion: np.ndarray, tolerance_px: int | None) -> np.ndarray:
    r = _tolerance(lesion.shape, tolerance_px)
    if r <= 0:
        return lesion
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return binary_dilation(lesion, structure=(yy ** 2 + xx ** 2) <= r * r)


def _peak(heat: np.ndarray) -> tuple[int, int] | None:
    """The heatmap maximum; on a plateau (upsampled coarse maps have them) the tied pixel nearest its centroid."""
    top = heat.max(initial=0.0)
    if top <= 0:
        return None
    ys, xs = np.nonzero(heat >= top - 1e-6 * top)
    nearest = np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2)
    return int(ys[nearest]), int(xs[nearest])


def _hit(heat: np.ndarray, lesion: np.ndarray, tolerance_px: int | None) -> bool:
    peak = _peak(heat)
    return peak is not None and bool(_dilate(lesion, tolerance_px)[peak])


def _energy(heat: np.ndarray, lesion: np.ndarray) -> float:
    heat = np.clip(heat, 0.0, None)
    total = heat.sum()
    return float(heat[lesion].sum() / total) if total > 0 else 0.0
