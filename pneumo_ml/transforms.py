"""Augment and normalise whole uint8 batches on the device (the second half of the one preprocessing path).

Training, evaluation, serving and the demo all go through `preprocess.decode_resized` and `BatchTransform`,
so a prediction sees exactly the pixels the model was validated on.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# The study's torchvision augmentations: RandomHorizontalFlip, RandomRotation(10), ColorJitter(brightness=0.2).
ROTATION_DEG = 10.0
BRIGHTNESS = 0.2
# sampler: balanced (the study's recommendation 2c): minority-class images are always augmented, with the
# rotation and brightness ranges scaled by this (±15°, ±30 %).
MINORITY_STRENGTH = 1.5


class BatchTransform:
    """uint8 (N, H, W) on any device -> normalised float (N, 3, H, W), with the study's augmentations on request."""

    def __init__(self, mean, std, *, augment: bool = False, channels_last: bool = False, minority: int | None = None):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.augment = augment
        self.minority = minority  # this class's images get MINORITY_STRENGTH augmentation (needs the targets)
        self.channels_last = channels_last
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None,
                 targets: torch.Tensor | None = None) -> torch.Tensor:
        x = batch.to(torch.float32).div_(255.0).unsqueeze(1)
        if self.minority is not None and targets is not None:
            base = 1.0 if self.augment else 0.0
            x = augment_batch(x, generator, base + (targets == self.minority).float() * (MINORITY_STRENGTH - base))
        elif self.augment:
            x = augment_batch(x, generator)
        x = x.expand(-1, 3, -1, -1)
        if x.device not in self._on_device:  # copied once: a host-to-device copy per batch stalls the GPU
            self._on_device[x.device] = (self.mean.to(x.device), self.std.to(x.device))
        mean, std = self._on_device[x.device]
        x = (x - mean) / std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def augment_batch(x: torch.Tensor, generator: torch.Generator | None = None,
                  strength: torch.Tensor | None = None) -> torch.Tensor:
    """Flip, rotate ±10° and scale brightness ±20 %, per image, in one grid_sample for the batch.

    Random draws come from a CPU generator so that a seed gives the same augmentations on CPU and CUDA.
    `strength` (N,), on x's device: each image's rotation and brightness ranges scaled (0: not augmented).
    """
    n = x.shape[0]
    draws = torch.stack([(torch.rand(n, generator=generator) < 0.5).float(),
                         torch.rand(n, generator=generator) * 2 - 1,
                         torch.rand(n, generator=generator) * 2 - 1], 1)
    if x.is_cuda:  # one small copy per batch
        draws = draws.pin_memory().to(x.device, non_blocking=True)
    flip, angle, brightness = draws.unbind(1)
    if strength is not None:
        flip, angle, brightness = flip * (strength > 0), angle * strength, brightness * strength
    angle = angle * math.radians(ROTATION_DEG)
    cos, sin = torch.cos(angle), torch.sin(angle)
    sign, zero = 1 - 2 * flip, torch.zeros_like(angle)
    theta = torch.stack([cos * sign, -sin, zero, sin * sign, cos, zero], 1).view(n, 2, 3)
    factor = (1 + brightness * BRIGHTNESS).view(n, 1, 1, 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (x * factor).clamp_(0.0, 1.0)
