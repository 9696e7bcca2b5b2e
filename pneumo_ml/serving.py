"""The pyfunc behind `mlflow models serve`: base64 (or raw) image bytes in, one prediction per row out.

Every row is decoded from the request itself, never from a path; a bad row fails the request with HTTP 400
naming the row and the reason, and the server goes on serving.
"""
from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from .io import ImageReadError, decoded_pixels, max_image_pixels
from .ood import Reference
from .predictor import Predictor
from .vocabulary import PREDICTION_FIELDS

MAX_ROWS = 64  # per request; PNEUMO_ML_MAX_ROWS overrides. Pixels per image: pneumo_ml.io.MAX_PIXELS.
# Decoded pixels per request; PNEUMO_ML_MAX_REQUEST_PIXELS overrides. 64 chest films of up to 4 MP pass; the
# decoding work one request can ask for stays bounded (a 50 MP PNG costs over a second of CPU).
MAX_REQUEST_PIXELS = 256_000_000
OUTPUT_COLUMNS = list(PREDICTION_FIELDS)
ERROR_MODES = ("request", "row")  # param `errors`: one bad row fails the request (default), or only its own row
OUTPUTS = ("table", "label")  # param `output`: every column (default), or the labels alone (mlflow.models.evaluate)
# name: (MLflow type, default)
REQUEST_PARAMS = {"threshold": ("double", None), "gradcam": ("boolean", False), "errors": ("string", "request"),
                  "output": ("string", None)}


class BadRequest(ValueError):
    """A request the client must fix; becomes HTTP 400 through mlflow models serve."""


class RequestError(MlflowException):
    """HTTP 400 whose message is the reason alone. MLflow's scoring server rewrites the message of any
    MlflowException into "Failed to predict data '<the whole request>'. Error: ..." (scoring_server.invocations),
    which buries the reason under a dump of the data; this message keeps its first value."""

    def __init__(self, reason: str):
        super().__init__(f"bad request: {reason}", error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._reason

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_reason"):
            self._reason = value


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
    """(decoded, errors) per row: (image, why it is not a radiograph) or None, and the row's error or ''.
    Every row is tried, so an error names all the bad rows at once."""
    if not isinstance(frame, pd.DataFrame) or "image" not in frame.columns:
        found = list(frame.columns) if isinstance(frame, pd.DataFrame) else type(frame).__name__
        raise BadRequest(f"expected a column 'image' with base64-encoded image bytes, got {found}")
    if len(frame) > max_rows():
        raise BadRequest(f"{len(frame)} rows in one request; the limit is {max_rows()} (PNEUMO_ML_MAX_ROWS)")
    cells, errors = [], []
    for row, value in enumerate(frame["image"].tolist()):
        try:
            cells.append(row_bytes(value, row))
            errors.append("")
        except BadRequest as e:
            cells.append(None)
            errors.append(str(e))
    _check_pixel_budget([data for data in cells if data is not None], predictor.card.image_size)
    decoded = []
    for row, data in enumerate(cells):
        try:
            decoded.append(None if data is None else predictor.read(data, name=f"row {row}"))
        except ImageReadError as e:
            decoded.append(None)
            errors[row] = str(e)
    return decoded, errors


def _check_pixel_budget(cells: list[bytes], image_size: int) -> None:
    """Refuse, from the headers alone, a request whose images would decode to more pixels than the budget."""
    sizes = [decoded_pixels(data, draft_size=image_size) for data in cells]
    total = sum(n for n in sizes if n <= max_image_pixels())  # a bigger image is its row's own error
    budget = max_request_pixels()
    if total > budget:
        raise BadRequest(f"the request's images decode to {total:,} pixels; the limit is {budget:,} per request "
                         f"(PNEUMO_ML_MAX_REQUEST_PIXELS): send fewer or smaller images per request")


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
            raise RequestError("the JSON body is nested too deeply") from None

    def split_data_and_params(json_input):
        data, params = split(json_input)
        unknown = sorted(set(params or {}) - set(REQUEST_PARAMS)) if isinstance(params, dict) else []
        if unknown:
            raise RequestError(f"unknown param(s) {', '.join(map(repr, unknown))}; known: "
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


class PneumoniaClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        config = getattr(context, "model_config", None) or {}
        device = config.get("inference_device") or os.environ.get("PNEUMO_ML_DEVICE", "cpu")
        self.output = config.get("output") or "table"  # the `output` param's default (see OUTPUTS)
        artifacts = context.artifacts
        if "ensemble" in artifacts:
            from .ensemble import EnsemblePredictor
            self.predictor = EnsemblePredictor.from_folder(artifacts["ensemble"], device)
        else:
            self.predictor = Predictor.from_files(artifacts["weights"], artifacts["model_card"], device)
            self.predictor.reference = Reference.load(artifacts.get("ood_stats"))
        self.predictor.card.name = registered_name(artifacts.get("weights") or artifacts["ensemble"]) \
            or self.predictor.card.name
        guard_scoring_server()

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        params = params or {}
        per_row = params.get("errors") or "request"
        if per_row not in ERROR_MODES:
            raise RequestError(f"errors {per_row!r} is not one of {', '.join(ERROR_MODES)}")
        output = params.get("output") or getattr(self, "output", "table")
        if output not in OUTPUTS:
            raise RequestError(f"output {output!r} is not one of {', '.join(OUTPUTS)}")
        try:
            decoded, errors = decode_rows(self.predictor, model_input)
        except BadRequest as e:
            raise RequestError(str(e)) from None
        if any(errors) and per_row == "request":
            raise RequestError("; ".join(e for e in errors if e))
        threshold = params.get("threshold")
        if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
            raise RequestError(f"threshold {threshold} is not in [0, 1]")
        good = [i for i, d in enumerate(decoded) if d is not None]
        stack = np.stack([decoded[i][0] for i in good]) if good else np.zeros((0, 1, 1), dtype=np.uint8)
        release_freed_memory()  # the full-size decodes are gone: hand their pages back before the model runs
        rows = self.predictor.predict(stack, threshold=threshold, gradcam=bool(params.get("gradcam", False)),
                                      not_radiograph=[decoded[i][1] for i in good])
        columns = OUTPUT_COLUMNS + (["gradcam_png"] if params.get("gradcam") else [])
        if per_row == "request":
            frame = pd.DataFrame(rows, columns=columns)
        else:
            merged = [{"error": e} for e in errors]
            for i, row in zip(good, rows):
                merged[i] = {**row, "error": ""}
            frame = pd.DataFrame(merged, columns=columns + ["error"])
            frame = frame.astype(object).where(frame.notna(), None)  # a failed row's cells: null in JSON, not NaN
        # MLflow's classifier evaluator takes the model's output as one 1-D array of labels.
        return frame["label"] if output == "label" else frame


def registered_name(artifact_path: str) -> str:
    """'name vN' when the model was loaded from the registry: MLflow writes `registered_model_meta` next to
    the MLmodel file it downloads for a models:/ URI (alias or version); artifacts sit in artifacts/."""
    meta = Path(artifact_path).parent.parent / "registered_model_meta"
    if not meta.is_file():
        return ""
    import yaml
    info = yaml.safe_load(meta.read_text()) or {}
    return f"{info['model_name']} v{info['model_version']}" if info.get("model_name") else ""
