"""The pyfunc in process, and behind a real `mlflow models serve` on a loopback port."""
import base64
import io
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import requests
from conftest import SAMPLES, free_port, write_dicom
from mlflow.exceptions import MlflowException
from not_xrays import colour_photo

from pneumo_ml.io import read_xray
from pneumo_ml.ood import NOT_RADIOGRAPH
from pneumo_ml.vocabulary import PREDICTION_FIELDS

JPEGS = sorted(SAMPLES.rglob("*.jpeg"))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png_bomb(side: int = 30_000) -> bytes:
    """A valid 8-bit grayscale PNG header claiming side×side pixels, with a tiny compressed body."""
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    row = b"\x00" + b"\x00" * side
    body = zlib.compress(row * 64, 9)
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def bad_rows(tmp_path):
    """(name, cell, reason substring) for each kind of bad input the endpoint must answer with 400."""
    jpeg = JPEGS[0].read_bytes()
    return [
        ("not base64", "%%% not base64 %%%", "row 0: not valid base64"),
        ("not an image", b64(b"hello, this is text"), "row 0: not an image"),
        ("truncated", b64(jpeg[: len(jpeg) // 3]), "row 0: truncated"),
        ("empty", "", "row 0: empty"),
        ("bomb", b64(png_bomb()), "row 0: image too large"),
        ("a path", "/etc/passwd", "row 0: not valid base64"),
    ]


@pytest.fixture
def pyfunc(trained_model, monkeypatch):
    uri, result = trained_model
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return mlflow.pyfunc.load_model(f"models:/pneumonia-classifier/{result.version}"), result


def test_pyfunc_predicts_jpegs_and_dicom_and_names_bad_rows(pyfunc, tmp_path):
    model, result = pyfunc
    dicom = write_dicom(tmp_path / "x.dcm", read_xray(JPEGS[1]))
    frame = pd.DataFrame({"image": [b64(JPEGS[1].read_bytes()), b64(dicom.read_bytes())]})
    out = model.predict(frame)
    assert out["probability"][0] == pytest.approx(out["probability"][1], abs=0.02)  # same pixels, two formats
    assert list(out.columns) == list(PREDICTION_FIELDS)  # the one schema: predictor, pyfunc, signature, batch CSV
    assert [c.name for c in model.metadata.signature.outputs.inputs][:len(PREDICTION_FIELDS)] == list(out.columns)
    for name, cell, reason in bad_rows(tmp_path):
        bad = pd.DataFrame({"image": [cell, b64(JPEGS[0].read_bytes())]})
        with pytest.raises(MlflowException, match=reason) as info:
            model.predict(bad)
        assert info.value.get_http_status_code() == 400, name
    good_then_bad = pd.DataFrame({"image": [b64(JPEGS[0].read_bytes()), "!!", b64(b"xx")]})
    with pytest.raises(MlflowException, match=r"row 1: .*; row 2: "):
        model.predict(good_then_bad)


def test_threshold_and_gradcam_params(pyfunc):
    model, result = pyfunc
    frame = pd.DataFrame({"image": [b64(JPEGS[0].read_bytes())]})
    p = model.predict(frame)["probability"][0]
    low = model.predict(frame, params={"threshold": max(0.0, p - 0.01)})
    high = model.predict(frame, params={"threshold": min(1.0, p + 0.01)})
    assert low["label"][0] == "PNEUMONIA" and high["label"][0] == "NORMAL"
    cam = model.predict(frame, params={"gradcam": True})
    png = base64.b64decode(cam["gradcam_png"][0])
    from PIL import Image
    assert Image.open(io.BytesIO(png)).format == "PNG"
    with pytest.raises(MlflowException, match="threshold 2.0 is not in"):
        model.predict(frame, params={"threshold": 2.0})


def test_row_limit(pyfunc, monkeypatch):
    model, _ = pyfunc
    monkeypatch.setenv("PNEUMO_ML_MAX_ROWS", "2")
    frame = pd.DataFrame({"image": [b64(JPEGS[0].read_bytes())] * 3})
    with pytest.raises(MlflowException, match="3 rows in one request; the limit is 2"):
        model.predict(frame)


@pytest.fixture
def server(trained_model, tmp_path):
    uri, result = trained_model
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m",
                             f"models:/pneumonia-classifier/{result.version}", "--env-manager", "local",
                             "-p", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if requests.get(f"{base}/ping", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if proc.poll() is not None:
                raise AssertionError((tmp_path / "serve.log").read_text()[-3000:])
            time.sleep(0.5)
        else:
            raise AssertionError("mlflow models serve did not answer /ping in 60 s")
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def invoke(base, rows=None, params=None, body=None):
    payload = body if body is not None else {"dataframe_split": {"columns": ["image"], "data": [[r] for r in rows]},
                                             **({"params": params} if params else {})}
    data = payload if isinstance(payload, (str, bytes)) else None
    return requests.post(f"{base}/invocations", json=None if data is not None else payload, data=data,
                         headers={"Content-Type": "application/json"}, timeout=60)


def test_rest_endpoint_serves_jpegs_and_dicom_and_survives_bad_input(server, trained_model, tmp_path):
    good = [b64(p.read_bytes()) for p in JPEGS[:2]]
    dicom = write_dicom(tmp_path / "x.dcm", read_xray(JPEGS[2]), monochrome1=True)
    answer = invoke(server, good + [b64(dicom.read_bytes())])
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert len(predictions) == 3
    assert {"label", "probability", "confidence", "threshold", "model", "ood_score", "warning"} <= set(predictions[0])
    assert {p["model"] for p in predictions} == {f"pneumonia-classifier v{trained_model[1].version}"}  # registry name
    reference = answer.json()
    for name, cell, reason in bad_rows(tmp_path):
        bad = invoke(server, [cell])
        assert bad.status_code == 400, (name, bad.text)
        # The reason leads, and the request is not echoed back (MLflow's "Failed to predict data '...'").
        assert bad.json()["message"].startswith(f"bad request: {reason}"), (name, bad.text)
        assert "Failed to predict" not in bad.text and (len(cell) < 8 or cell[:40] not in bad.text), name
    wrong_column = invoke(server, body={"dataframe_split": {"columns": ["img"], "data": [[good[0]]]}})
    not_json = invoke(server, body="this is not json")
    assert wrong_column.status_code == 400 and not_json.status_code == 400
    assert invoke(server, good + [b64(dicom.read_bytes())]).json() == reference  # still serving, same answers
    with_cam = invoke(server, good[:1], params={"gradcam": True, "threshold": 0.3})
    assert with_cam.status_code == 200 and with_cam.json()["predictions"][0]["threshold"] == 0.3
    assert base64.b64decode(with_cam.json()["predictions"][0]["gradcam_png"])[:8] == b"\x89PNG\r\n\x1a\n"
    import json

    from pneumo_ml.payload import request_body  # what `pneumo-ml request FILE` prints
    body = invoke(server, body=json.dumps(request_body([SAMPLES / "PNEUMONIA"], {"threshold": 0.3})))
    assert body.status_code == 200 and len(body.json()["predictions"]) == 4
    photo = invoke(server, [b64(colour_photo())], params={"threshold": 0.3})
    assert photo.status_code == 200 and photo.json()["predictions"][0]["warning"].startswith(NOT_RADIOGRAPH)


def test_rest_errors_row_answers_every_row(server):
    good = b64(JPEGS[0].read_bytes())
    answer = invoke(server, [good, "not base64!!", b64(colour_photo())], params={"errors": "row"})
    assert answer.status_code == 200, answer.text
    first, broken, photo = answer.json()["predictions"]
    assert first["error"] == "" and first["label"] in ("NORMAL", "PNEUMONIA")
    assert broken["error"] == "row 1: not valid base64" and broken["label"] is None
    assert photo["error"] == "" and photo["warning"].startswith(NOT_RADIOGRAPH)
    rejected = invoke(server, [good, "not base64!!"])  # the default is unchanged: one bad row fails the request
    assert rejected.status_code == 400 and rejected.json()["message"] == "bad request: row 1: not valid base64"
    unknown = invoke(server, [good], params={"errors": "skip"})
    assert unknown.status_code == 400 and "errors 'skip' is not one of request, row" in unknown.text
