"""Request bodies for the REST endpoint and labelled frames for mlflow.models.evaluate, from image files."""
from __future__ import annotations

import base64
from pathlib import Path

import pandas as pd

from .errors import DataError
from .inputs import expand_paths
from .vocabulary import CLASSES

SAMPLES = Path(__file__).resolve().parent / "samples"  # real radiographs installed with the package


def _files(paths) -> list[Path]:
    files, missing = expand_paths(paths)
    if missing:
        raise DataError(f"{missing[0]}: no such file or folder")
    if not files:
        raise DataError(f"no images found in {', '.join(map(str, paths))}")
    return files


def image_cells(paths) -> list[str]:
    """The `image` column: each file's bytes, base64-encoded."""
    return [base64.b64encode(path.read_bytes()).decode("ascii") for path in _files(paths)]


def request_body(paths, params: dict | None = None) -> dict:
    """The JSON body `mlflow models serve` answers at /invocations."""
    body = {"dataframe_split": {"columns": ["image"], "data": [[cell] for cell in image_cells(paths)]}}
    return {**body, "params": params} if params else body


def labelled_frame(root) -> pd.DataFrame:
    """`image` (base64) and `target` (the folder name) for every image under ROOT/NORMAL and ROOT/PNEUMONIA."""
    folders = [Path(root) / label for label in CLASSES]
    missing = [str(f) for f in folders if not f.is_dir()]
    if missing:
        raise DataError(f"{root}: expected the folders {', '.join(CLASSES)} (missing: {', '.join(missing)})")
    rows = [(cell, label) for label, folder in zip(CLASSES, folders) for cell in image_cells([folder])]
    return pd.DataFrame(rows, columns=["image", "target"])
