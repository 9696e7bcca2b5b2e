"""Files of tensors (weights, checkpoints) read with `torch.load(weights_only=True)`: never unpickled objects."""
from __future__ import annotations

import os
import pickle
from typing import Any

import torch

from .errors import UserError


class PickledObjectsError(UserError, ValueError):
    """A tensor file that holds pickled Python objects: refused, because unpickling runs code."""


def load_tensors(path: str | os.PathLike) -> Any:
    """The file's tensors, numbers and strings; PickledObjectsError if it holds anything else.

    torch's own message suggests `weights_only=False`: that would run whatever the file contains, so the
    refusal names the safe way out instead."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise PickledObjectsError(f"{path}: holds pickled Python objects, which pneumo-ml never loads (unpickling "
                                  f"runs code); save plain tensors instead, e.g. torch.save(model.state_dict(), "
                                  f"path), or safetensors") from None
