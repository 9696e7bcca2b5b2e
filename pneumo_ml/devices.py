"""Which device to run on, with a clear error when CUDA is asked for and absent."""
from __future__ import annotations

import torch

from .errors import DeviceError


def describe() -> str:
    """The machine in words: its CPU cores, and its GPU when there is one."""
    import os
    import platform
    cpu = f"{platform.machine()}, {os.cpu_count()} CPU cores"
    return f"{cpu}, GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else f"{cpu}, no GPU"


def resolve_device(requested: str = "auto") -> torch.device:
    """auto: CUDA when present; cuda: CUDA or a clear error."""
    requested = (requested or "auto").lower()
    if requested == "cuda" or requested.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError("--device cuda: no CUDA GPU is available here (use --device cpu or auto)")
        return torch.device(requested)
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested != "cpu":
        raise DeviceError(f"unknown device {requested!r} (auto, cpu or cuda)")
    return torch.device("cpu")
