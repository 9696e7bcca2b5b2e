"""Files of tensors (weights, checkpoints) read with `torch.load(weights_only=True)`: never unpickled objects."""
from __future__ import annotations

import os
import pickle
from typing import Any

import torch

from .errors import UserError


class TensorFileError(UserError, ValueError):
    """A file that is not plain tensors: refused, because unpickling anything else runs code."""


def load_tensors(path: str | os.PathLike) -> Any:
    """The file's tensors, numbers and strings; TensorFileError naming the file and the reason otherwise.

    torch's own message suggests `weights_only=False`, which would run whatever the file contains: the refusal
    names the safe way out instead."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = _unpickler_reason(str(e))
        if reason.startswith("Unsupported global"):
            raise TensorFileError(f"{path}: holds pickled Python objects, which pneumo-ml never loads (unpickling "
                                  f"runs code); save plain tensors instead, e.g. torch.save(model.state_dict(), "
                                  f"path), or safetensors") from None
        raise TensorFileError(f"{path}: not a loadable weights file ({reason})") from None


def _unpickler_reason(message: str) -> str:
    """torch's reason, without its advice: the first line after 'WeightsUnpickler error:'."""
    after = message.split("WeightsUnpickler error:", 1)[-1]
    return next((line.strip() for line in after.splitlines() if line.strip()), "not a file of tensors")
