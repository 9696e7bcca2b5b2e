"""The pyfunc behind `mlflow models serve`: base64 (or raw) image bytes in, one prediction per row out.

Every row is decoded from the request itself, never from a path; a bad row fails the request with HTTP 400
naming the row and the reason, and the server goes on serving.
"""
from __future__ import annotations

import base64
import binascii
import os

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from .io import ImageReadError
from .predictor import Predictor

MAX_ROWS = 64  # per request; PNEUMO_ML_MAX_ROWS overrides. Pixels per image: pneumo_ml.io.MAX_PIXELS.
OUTPUT_COLUMNS = ["label", "probability", "confidence", "threshold", "model"]


class BadRequest(ValueError):
    """A request the client must fix; becomes HTTP 400 through mlflow models serve."""


def max_rows() -> int:
    return int(os.environ.get("PNEUMO_ML_MAX_ROWS", MAX_ROWS))


def row_bytes(value, row: int) -> bytes:
    """A cell of the `image` column: raw bytes, or base64 text (a data: URL prefix is allowed)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("data:") and "," in text:
            text = text.split(",", 1)[1]
        try:
            data = base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"row {row}: not valid base64") from None
    else:
        raise BadRequest(f"row {row}: expected base64 text or bytes, got {type(value).__name__}")
    if not data:
        raise BadRequest(f"row {row}: empty image")
    return data


def decode_rows(predictor: Predictor, frame: pd.DataFrame):
    """(images, errors): every row is tried, so the error names all the bad rows at once."""
    if not isinstance(frame, pd.DataFrame) or "image" not in frame.columns:
        found = list(frame.columns) if isinstance(frame, pd.DataFrame) else type(frame).__name__
        raise BadRequest(f"expected a column 'image' with base64-encoded image bytes, got {found}")
    if len(frame) > max_rows():
        raise BadRequest(f"{len(frame)} rows in one request; the limit is {max_rows()} (PNEUMO_ML_MAX_ROWS)")
    images, errors = [], []
    for row, value in enumerate(frame["image"].tolist()):
        try:
            images.append(predictor.decode(row_bytes(value, row), name=f"row {row}"))
        except (BadRequest, ImageReadError) as e:
            errors.append(str(e))
    return images, errors


class PneumoniaClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        config = getattr(context, "model_config", None) or {}
        device = config.get("inference_device") or os.environ.get("PNEUMO_ML_DEVICE", "cpu")
        self.predictor = Predictor.from_files(context.artifacts["weights"], context.artifacts["model_card"], device)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        params = params or {}
        try:
            images, errors = decode_rows(self.predictor, model_input)
            if errors:
                raise BadRequest("; ".join(errors))
        except BadRequest as e:
            raise MlflowException(f"bad request: {e}", error_code=INVALID_PARAMETER_VALUE) from None
        threshold = params.get("threshold")
        if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
            raise MlflowException(f"bad request: threshold {threshold} is not in [0, 1]",
                                  error_code=INVALID_PARAMETER_VALUE)
        stack = np.stack(images) if images else np.zeros((0, 1, 1), dtype=np.uint8)
        rows = self.predictor.predict(stack, threshold=threshold, gradcam=bool(params.get("gradcam", False)))
        columns = OUTPUT_COLUMNS + (["gradcam_png"] if params.get("gradcam") else [])
        return pd.DataFrame(rows, columns=columns)
