"""One `create_model` for every architecture, timm's way, and honest bookkeeping of the weights used."""
from __future__ import annotations

import hashlib
import logging
import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import timm
import torch
from torch import nn

from .errors import WeightsError
from .tensorfile import TensorFileError, load_tensors

log = logging.getLogger(__name__)
NUM_CLASSES = 2


class SmallCNN(nn.Module):
    """The study's from-scratch baseline: four conv blocks, global pooling, a linear head."""

    def __init__(self, num_classes: int = NUM_CLASSES, widths: tuple[int, ...] = (32, 64, 128, 128), drop: float = 0.3):
        super().__init__()
        blocks, in_ch = [], 3
        for width in widths:
            blocks.append(nn.Sequential(
                nn.Conv2d(in_ch, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ))
            in_ch = width
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(drop),
                                  nn.Linear(in_ch, num_classes))
        self.pretrained_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "architecture": "small_cnn"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass(frozen=True)
class ModelSpec:
    build: Callable[[int], nn.Module]  # image_size -> randomly initialised model with a 2-class head
    timm_name: str | None  # where ImageNet weights come from; None: none exist
    # Grad-CAM target: the last feature map. ViT: the last block, whose *input* tokens explain.gradcam uses --
    # the class token is read after that block, so the block's own output patch tokens get no gradient.
    cam_layer: Callable[[nn.Module], nn.Module]
    is_vit: bool = False


def _timm_builder(timm_name: str, sized: bool = False) -> Callable[[int], nn.Module]:
    def build(image_size: int) -> nn.Module:
        extra = {"img_size": image_size} if sized else {}
        return timm.create_model(timm_name, pretrained=False, num_classes=NUM_CLASSES, **extra)
    return build


MODELS: dict[str, ModelSpec] = {
    # the last conv block's rectified output before its pooling, as Grad-CAM takes VGG's conv5_3: twice the
    # resolution of the pooled map the head sees
    "small_cnn": ModelSpec(lambda size: SmallCNN(), None, lambda m: m.features[-1][-2]),
    "resnet50": ModelSpec(_timm_builder("resnet50"), "resnet50", lambda m: m.layer4),
    "vit_tiny": ModelSpec(_timm_builder("vit_tiny_patch16_224", sized=True), "vit_tiny_patch16_224",
                          lambda m: m.blocks[-1], is_vit=True),
    "densenet121": ModelSpec(_timm_builder("densenet121"), "densenet121", lambda m: m.features.norm5),
}


def create_model(name: str, pretrained: str | bool = "auto", weights: str | os.PathLike | None = None,
                 *, image_size: int = 224) -> nn.Module:
    """A 2-class model; `model.weights_source` says which weights it holds (`random`, `timm:<tag>`, `file:<sha256>`).

    Order: `weights` (a local file) wins; then `pretrained` true/auto tries timm's local cache, then the hub
    (unless HF_HUB_OFFLINE is set or the hub is unreachable within a few seconds). `true` fails when neither
    works; `auto` warns and stays random.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r} (choose from {', '.join(MODELS)})")
    spec = MODELS[name]
    pretrained = str(pretrained).lower()
    model = spec.build(image_size)
    model.weights_source = "random"
    if weights:
        model.weights_source = load_weights_file(model, Path(weights))
    elif pretrained in ("true", "auto"):
        if spec.timm_name is None:
            if pretrained == "true":
                raise WeightsError(f"{name} has no pretrained weights: use --pretrained false")
        else:
            model = _with_imagenet_weights(spec, image_size, required=pretrained == "true") or model
    return model


def normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean/std the model's weights expect (timm's pretrained config: ViT 0.5/0.5, CNNs ImageNet)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", (0.5, 0.5, 0.5))), tuple(cfg.get("std", (0.5, 0.5, 0.5)))


def gradcam_layer(name: str, model: nn.Module) -> nn.Module:
    return MODELS[name].cam_layer(unwrap(model))


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model under DDP / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def _with_imagenet_weights(spec: ModelSpec, image_size: int, required: bool) -> nn.Module | None:
    probe = timm.create_model(spec.timm_name, pretrained=False)
    cfg = probe.pretrained_cfg
    tag = f"{cfg.get('architecture', spec.timm_name)}.{cfg.get('tag')}" if cfg.get("tag") else spec.timm_name
    sized = {"img_size": image_size} if spec.is_vit else {}
    cached = _cached_hub_file(cfg.get("hf_hub_id"))
    try:
        if cached:
            model = timm.create_model(spec.timm_name, pretrained=True, num_classes=NUM_CLASSES,
                                      pretrained_cfg_overlay={"file": cached}, **sized)
        elif _hub_reachable():
            model = timm.create_model(spec.timm_name, pretrained=True, num_classes=NUM_CLASSES, **sized)
        else:
            raise WeightsError("not in the local cache and the hub is offline or unreachable")
    except Exception as e:  # any failure to get weights is reported the same way
        reason = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        message = (f"cannot load ImageNet weights for {spec.timm_name} ({reason}); "
                   f"pass --weights FILE (a local state dict) or --pretrained false")
        if required:
            raise WeightsError(message) from e
        warnings.warn(f"{message}. Training {tag} from RANDOM initialisation (logged as weights_source=random).",
                      stacklevel=3)
        return None
    model.weights_source = f"timm:{tag}"
    return model


def _cached_hub_file(hub_id: str | None) -> str | None:
    if not hub_id:
        return None
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = try_to_load_from_cache(hub_id, filename)
        if isinstance(path, str) and os.path.isfile(path):
            return path
    return None


def _hub_reachable(timeout: float = 3.0) -> bool:
    """The hub retries for about a minute when offline; find out in a few seconds instead."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_weights_file(model: nn.Module, path: Path) -> str:
    """Load a state dict or timm/our checkpoint (weights only); heads of another shape stay freshly initialised."""
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = load_tensors(path)
    except TensorFileError as e:
        raise WeightsError(str(e)) from None
    except Exception as e:
        raise WeightsError(f"{path}: not a loadable weights file ({str(e).splitlines()[0][:200]})") from e
    for key in ("state_dict_ema", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a state dict of tensors")
    state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}
    own = model.state_dict()
    if "pos_embed" in state and "pos_embed" in own and state["pos_embed"].shape != own["pos_embed"].shape:
        from timm.layers import resample_abs_pos_embed
        grid = model.patch_embed.grid_size
        state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], new_size=grid,
                                                    num_prefix_tokens=model.num_prefix_tokens)
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    for key in mismatched:
        del state[key]
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k not in mismatched]
    matched = len(own) - len(result.missing_keys)
    if matched == 0 or len(missing) > len(own) // 2:
        raise WeightsError(f"{path}: does not fit this model ({len(missing)} of {len(own)} tensors missing)")
    if mismatched or missing:
        log.warning("%s: re-initialised %d tensors of another shape (%s); %d missing",
                    path, len(mismatched), ", ".join(mismatched[:4]), len(missing))
    return f"file:{digest}"
