"""Augment and normalise whole uint8 batches on the device (the second half of the one preprocessing path).

Training, evaluation, serving and the demo all go through `preprocess.decode_resized` and `BatchTransform`,
so a prediction sees exactly the pixels the model was validated on.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# The seed's torchvision augmentations: RandomHorizontalFlip, RandomRotation(10), ColorJitter(brightness=0.2).
ROTATION_DEG = 10.0
BRIGHTNESS = 0.2


class BatchTransform:
    """uint8 (N, H, W) on any device -> normalised float (N, 3, H, W), with the seed's augmentations on request."""

    def __init__(self, mean, std, *, augment: bool = False, channels_last: bool = False):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.augment = augment
        self.channels_last = channels_last
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = batch.to(torch.float32).div_(255.0).unsqueeze(1)
        if self.augment:
            x = augment_batch(x, generator)
        x = x.expand(-1, 3, -1, -1)
        if x.device not in self._on_device:  # copied once: a host-to-device copy per batch stalls the GPU
            self._on_device[x.device] = (self.mean.to(x.device), self.std.to(x.device))
        mean, std = self._on_device[x.device]
        x = (x - mean) / std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def augment_batch(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip, rotate ±10° and scale brightness ±20 %, per image, in one grid_sample for the batch.

    Random draws come from a CPU generator so that a seed gives the same augmentations on CPU and CUDA.
    """
    n = x.shape[0]
    flip = torch.rand(n, generator=generator) < 0.5
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(ROTATION_DEG)
    brightness = 1 + (torch.rand(n, generator=generator) * 2 - 1) * BRIGHTNESS
    cos, sin = torch.cos(angle), torch.sin(angle)
    sign = torch.where(flip, -1.0, 1.0)
    params = torch.zeros(n, 7)  # the 2x3 affine matrix and the brightness factor: one small copy per batch
    params[:, 0], params[:, 1] = cos * sign, -sin
    params[:, 3], params[:, 4] = sin * sign, cos
    params[:, 6] = brightness
    if x.is_cuda:
        params = params.pin_memory().to(x.device, non_blocking=True)
    theta, factor = params[:, :6].view(n, 2, 3), params[:, 6].view(n, 1, 1, 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (x * factor).clamp_(0.0, 1.0)
