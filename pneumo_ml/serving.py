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

from .io import ImageReadError, decoded_pixels, max_image_pixels
from .predictor import Predictor

MAX_ROWS = 64  # per request; PNEUMO_ML_MAX_ROWS overrides. Pixels per image: pneumo_ml.io.MAX_PIXELS.
# Decoded pixels per request; PNEUMO_ML_MAX_REQUEST_PIXELS overrides. 64 chest films of up to 4 MP pass; the
# decoding work one request can ask for stays bounded (a 50 MP PNG costs over a second of CPU).
MAX_REQUEST_PIXELS = 256_000_000
OUTPUT_COLUMNS = ["label", "probability", "confidence", "threshold", "model"]
REQUEST_PARAMS = {"threshold": ("double", None), "gradcam": ("boolean", False)}  # name: (MLflow type, default)


class BadRequest(ValueError):
    """A request the client must fix; becomes HTTP 400 through mlflow models serve."""


def max_rows() -> int:
    return int(os.environ.get("PNEUMO_ML_MAX_ROWS", MAX_ROWS))


def max_request_pixels() -> int:
    return int(os.environ.get("PNEUMO_ML_MAX_REQUEST_PIXELS", MAX_REQUEST_PIXELS))


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
    cells, errors = [], []
    for row, value in enumerate(frame["image"].tolist()):
        try:
            cells.append((row, row_bytes(value, row)))
        except BadRequest as e:
            errors.append(str(e))
    _check_pixel_budget([data for _, data in cells], predictor.card.image_size)
    images = []
    for row, data in cells:
        try:
            images.append(predictor.decode(data, name=f"row {row}"))
        except ImageReadError as e:
            errors.append(str(e))
    return images, sorted(errors, key=_row_number)


def _check_pixel_budget(cells: list[bytes], image_size: int) -> None:
    """Refuse, from the headers alone, a request whose images would decode to more pixels than the budget."""
    sizes = [decoded_pixels(data, draft_size=image_size) for data in cells]
    total = sum(n for n in sizes if n <= max_image_pixels())  # a bigger image is its row's own error
    budget = max_request_pixels()
    if total > budget:
        raise BadRequest(f"the request's images decode to {total:,} pixels; the limit is {budget:,} per request "
                         f"(PNEUMO_ML_MAX_REQUEST_PIXELS): send fewer or smaller images per request")


def _row_number(error: str) -> int:
    text = error.removeprefix("row ").split(":", 1)[0]
    return int(text) if text.isdigit() else -1


def guard_scoring_server() -> None:
    """What `mlflow models serve` does before the model sees a request: a JSON body nested too deeply makes its
    parser raise RecursionError (HTTP 500), and params the signature does not know are dropped with a log line
    the client never sees. Both become a 400 that says why. Installed when the model loads in the server."""
    from mlflow.pyfunc import scoring_server
    decode, split = getattr(scoring_server, "_decode_json_input", None), getattr(scoring_server,
                                                                                  "_split_data_and_params", None)
    if decode is None or split is None or getattr(decode, "pneumo_ml_guard", False):
        return  # another MLflow version, or installed already

    def decode_json_input(json_input):
        try:
            return decode(json_input)
        except RecursionError:
            raise _bad_request("the JSON body is nested too deeply") from None

    def split_data_and_params(json_input):
        data, params = split(json_input)
        unknown = sorted(set(params or {}) - set(REQUEST_PARAMS)) if isinstance(params, dict) else []
        if unknown:
            raise _bad_request(f"unknown param(s) {', '.join(map(repr, unknown))}; known: "
                               f"{', '.join(REQUEST_PARAMS)}")
        return data, params

    decode_json_input.pneumo_ml_guard = True
    scoring_server._decode_json_input, scoring_server._split_data_and_params = decode_json_input, split_data_and_params


def release_freed_memory() -> None:
    """Return freed heap pages to the OS (glibc's malloc_trim). Large decodes are freed at once but glibc keeps
    their pages in per-thread arenas, so a server's memory would ratchet up to the worst request each of its
    threads ever served; trimming keeps it near what is in use."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes
            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc: nothing to trim
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


def _bad_request(message: str) -> MlflowException:
    return MlflowException(f"bad request: {message}", error_code=INVALID_PARAMETER_VALUE)


class PneumoniaClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        config = getattr(context, "model_config", None) or {}
        device = config.get("inference_device") or os.environ.get("PNEUMO_ML_DEVICE", "cpu")
        self.predictor = Predictor.from_files(context.artifacts["weights"], context.artifacts["model_card"], device)
        guard_scoring_server()

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        params = params or {}
        try:
            images, errors = decode_rows(self.predictor, model_input)
            if errors:
                raise BadRequest("; ".join(errors))
        except BadRequest as e:
            raise _bad_request(str(e)) from None
        threshold = params.get("threshold")
        if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
            raise MlflowException(f"bad request: threshold {threshold} is not in [0, 1]",
                                  error_code=INVALID_PARAMETER_VALUE)
        stack = np.stack(images) if images else np.zeros((0, 1, 1), dtype=np.uint8)
        release_freed_memory()  # the full-size decodes are gone: hand their pages back before the model runs
        rows = self.predictor.predict(stack, threshold=threshold, gradcam=bool(params.get("gradcam", False)))
        columns = OUTPUT_COLUMNS + (["gradcam_png"] if params.get("gradcam") else [])
        return pd.DataFrame(rows, columns=columns)
