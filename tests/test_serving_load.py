"""Load and fuzz of the serving path: `mlflow models serve` under concurrent good and bad requests, and the
pyfunc's input handling under property-based fuzzing (arbitrary and mutated real image bytes).

Bounded in count and time: one server, 6 client threads, 120 requests; ~150 fuzz examples in process.
"""
from __future__ import annotations

import base64
import io
import json
import math
import os
import random
import statistics
import struct
import threading
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
from conftest import SAMPLES, write_dicom
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow.exceptions import MlflowException
from PIL import Image
from servers import model_server

MODEL = "pneumonia-classifier"
JPEGS = sorted(SAMPLES.rglob("*.jpeg"))
MAX_ROWS = 6  # PNEUMO_ML_MAX_ROWS in the server's environment
THREADS, REQUESTS = 6, 120
OUTPUT_COLUMNS = ["label", "probability", "confidence", "threshold", "model"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png_bomb(side: int = 30_000) -> bytes:
    """A valid 8-bit grayscale PNG whose header claims side×side pixels, with a tiny compressed body."""
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    body = zlib.compress((b"\x00" + b"\x00" * side) * 64, 9)
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def frame_body(rows, params=None, column="image") -> dict:
    body = {"dataframe_split": {"columns": [column], "data": [[r] for r in rows]}}
    return {**body, "params": params} if params else body


def good_payloads() -> dict[str, dict]:
    """Requests that must succeed: 1–4 real JPEGs, with and without params."""
    jpeg = [b64(p.read_bytes()) for p in JPEGS]
    return {
        "1 jpeg": frame_body(jpeg[:1]),
        "2 jpegs": frame_body(jpeg[1:3]),
        "3 jpegs": frame_body(jpeg[3:6]),
        "4 jpegs": frame_body([jpeg[6], jpeg[7], jpeg[0], jpeg[4]]),
        "threshold 0.3": frame_body(jpeg[2:3], {"threshold": 0.3}),
        "gradcam": frame_body(jpeg[5:6], {"gradcam": True}),
    }


def bad_payloads() -> dict[str, tuple[object, str]]:
    """Requests that must be refused with 400: name -> (JSON body or raw text body, reason in the message)."""
    jpeg = JPEGS[0].read_bytes()
    good = b64(JPEGS[1].read_bytes())
    return {
        "not base64": (frame_body(["%%% not base64 %%%"]), "row 0: not valid base64"),
        "not an image": (frame_body([b64(b"hello, this is text, not an X-ray")]), "row 0: not an image"),
        "truncated JPEG": (frame_body([b64(jpeg[: len(jpeg) // 3])]), "row 0: truncated"),
        "empty": (frame_body([""]), "row 0: empty"),
        "bad second row": (frame_body([good, "!!"]), "row 1: not valid base64"),
        "too many rows": (frame_body([good] * (MAX_ROWS + 1)),
                          f"{MAX_ROWS + 1} rows in one request; the limit is {MAX_ROWS}"),
        "PNG bomb 30000x30000": (frame_body([b64(png_bomb())]), "row 0: image too large"),
        "wrong column": (frame_body([good], column="img"), "missing inputs ['image']"),
        "not JSON": ("this is { not json", "valid JSON"),
        "a path": (frame_body(["/etc/passwd"]), "row 0: not valid base64"),
        "threshold 2": (frame_body([good], {"threshold": 2.0}), "threshold 2.0 is not in [0, 1]"),
    }


def post(session: requests.Session, base: str, body) -> requests.Response:
    if isinstance(body, str):
        return session.post(f"{base}/invocations", data=body, headers={"Content-Type": "application/json"},
                            timeout=120)
    return session.post(f"{base}/invocations", json=body, timeout=120)


@pytest.fixture(scope="module")
def served(trained_model, tmp_path_factory):
    """`mlflow models serve` of the session's registered version, with a low row limit."""
    uri, result = trained_model
    folder = tmp_path_factory.mktemp("serving-load")
    with model_server(f"models:/{MODEL}/{result.version}", uri, folder, PNEUMO_ML_MAX_ROWS=MAX_ROWS) as server:
        yield server


def test_load_mixed_good_and_bad_requests(served):
    base = served.base
    good, bad = good_payloads(), bad_payloads()
    with requests.Session() as session:  # reference answers, one at a time (also the warm-up)
        reference = {}
        for name, body in good.items():
            answer = post(session, base, body)
            assert answer.status_code == 200, (name, answer.text[:500])
            reference[name] = answer.json()
            assert len(reference[name]["predictions"]) == len(body["dataframe_split"]["data"])
        for body, _ in bad.values():  # warm the error paths too
            post(session, base, body)
    rss_before = served.rss_bytes()

    rng = random.Random(0)
    jobs = [("good", name) for name in good for _ in range(12)]  # 72 good
    jobs += [("bad", name) for name in bad for _ in range(5)]    # 55 bad
    rng.shuffle(jobs)
    jobs = jobs[:REQUESTS]
    local = threading.local()

    def send(job):
        kind, name = job
        if not hasattr(local, "session"):
            local.session = requests.Session()
        body = good[name] if kind == "good" else bad[name][0]
        start = time.perf_counter()
        try:
            answer = post(local.session, base, body)
        except requests.RequestException as e:  # a lost answer: counted, never retried
            return kind, name, None, f"{e.__class__.__name__}: {e}", time.perf_counter() - start
        return kind, name, answer.status_code, answer.text, time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(THREADS) as pool:
        outcomes = list(pool.map(send, jobs))
    load_s = time.perf_counter() - start
    rss_after = served.rss_bytes()

    lost = [(name, text) for _, name, status, text, _ in outcomes if status is None]
    assert not lost, f"{len(lost)} of {len(jobs)} requests got no answer: {lost[:3]}"
    assert len(outcomes) == len(jobs)
    server_errors = [(name, status, text[:300]) for _, name, status, text, _ in outcomes if status >= 500]
    assert not server_errors, server_errors[:5]
    wrong = []
    for kind, name, status, text, _ in outcomes:
        if kind == "good":
            if status != 200 or json.loads(text) != reference[name]:
                wrong.append((name, status, text[:300]))
        else:
            reason = bad[name][1]
            if status != 400:
                wrong.append((name, status, text[:300]))
                continue
            message = json.loads(text).get("message", "")
            if reason.lower() not in message.lower():
                wrong.append((name, status, message[:300]))
    assert not wrong, f"{len(wrong)} wrong answers, e.g. {wrong[:4]}"
    growth = rss_after - rss_before
    assert growth < 300 << 20, f"server memory grew {growth / 2**20:.0f} MB under load"

    with requests.Session() as session:  # still serving, same answers
        assert session.get(f"{base}/ping", timeout=10).status_code == 200
        again = post(session, base, good["2 jpegs"])
        assert again.status_code == 200 and again.json() == reference["2 jpegs"]

    latencies = sorted(t for *_, t in outcomes)
    n_bad = sum(kind == "bad" for kind, *_ in outcomes)
    print(f"\nserving load: {len(outcomes)} requests served by 1 `mlflow models serve` to {THREADS} threads in "
          f"{load_s:.1f} s, {n_bad} bad inputs tried ({len(bad)} kinds), 0 lost, 0 5xx; "
          f"p50 latency {statistics.median(latencies) * 1000:.0f} ms, p95 "
          f"{latencies[int(0.95 * (len(latencies) - 1))] * 1000:.0f} ms; server RSS "
          f"{rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MB "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")


def test_a_path_in_the_request_is_never_read(served):
    """An `image` cell naming a file on the server is refused (400), never read and predicted."""
    sample = JPEGS[0].resolve()
    cells = ["/etc/passwd", str(sample), sample.as_uri(), "../../../../../etc/passwd", "/usr/bin/env",
             "/etc/hosts", b64(str(sample).encode()), b64(b"/etc/passwd"), f"data:image/jpeg;base64,{sample}"]
    with requests.Session() as session:
        for cell in cells:
            answer = post(session, served.base, frame_body([cell]))
            assert answer.status_code == 400, (cell, answer.text[:300])
            assert "predictions" not in answer.json(), cell
            message = answer.json()["message"]
            assert "row 0:" in message, (cell, message)
            assert "root:" not in answer.text and "localhost" not in answer.text, (cell, "file content leaked")


# ----------------------------------------------------------------------------- property-based, in process

@pytest.fixture(scope="module")
def pyfunc_model(trained_model):
    uri, result = trained_model
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        return mlflow.pyfunc.load_model(f"models:/{MODEL}/{result.version}")


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


@pytest.fixture(scope="module")
def seed_files(tmp_path_factory) -> list[bytes]:
    """Real images to mutate: a full-size sample JPEG and small JPEG/PNG/BMP/TIFF/DICOM made from a sample."""
    full = JPEGS[-1].read_bytes()
    small = Image.open(JPEGS[0]).convert("L").resize((40, 32))
    dicom = write_dicom(tmp_path_factory.mktemp("fuzz") / "x.dcm", np.asarray(small))
    return [full, _encode(small, "JPEG", quality=80), _encode(small, "JPEG", progressive=True),
            _encode(small, "PNG"), _encode(small.convert("I;16"), "PNG"), _encode(small.convert("RGB"), "BMP"),
            _encode(small, "TIFF"), _encode(small, "TIFF", compression="tiff_deflate"), dicom.read_bytes()]


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    """A real image with 1–4 bytes flipped, runs inserted or deleted, or a truncation; mostly in the header."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        n = len(data)
        at = draw(st.one_of(st.integers(0, min(n - 1, 700)), st.integers(0, n - 1)))
        op = draw(st.sampled_from(["flip", "flip", "set", "truncate", "insert", "delete"]))
        if op == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif op == "set":
            data[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80]))
        elif op == "truncate":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
        else:
            del data[at:at + draw(st.integers(1, 256))]
    return bytes(data)


def cells(seeds: list[bytes]):
    """An `image` cell: bytes as raw bytes or as base64 text (plain, wrapped, data: URL), or any text."""
    payload = st.one_of(st.binary(max_size=4096), mutated(seeds), mutated(seeds))
    as_cell = st.sampled_from(["raw", "base64", "base64", "wrapped", "data-url"])

    def encode(pair):
        data, how = pair
        if how == "raw":
            return data
        text = b64(data)
        if how == "wrapped":
            return "\n".join(text[i:i + 76] for i in range(0, len(text), 76))
        return f"data:image/png;base64,{text}" if how == "data-url" else text
    return st.one_of(st.tuples(payload, as_cell).map(encode), st.text(max_size=300))


def check_cell(model, cell) -> str:
    """A prediction (one valid row) or a clean client error naming row 0; anything else fails the test."""
    try:
        out = model.predict(pd.DataFrame({"image": [cell]}))
    except MlflowException as e:
        assert e.get_http_status_code() == 400, e.message
        assert "row 0" in e.message, e.message
        return "400"
    assert len(out) == 1 and list(out.columns)[:len(OUTPUT_COLUMNS)] == OUTPUT_COLUMNS
    row = out.iloc[0]
    assert row["label"] in ("NORMAL", "PNEUMONIA")
    assert math.isfinite(row["probability"]) and 0.0 <= row["probability"] <= 1.0
    assert 0.0 <= row["confidence"] <= 1.0
    assert (row["label"] == "PNEUMONIA") == (row["probability"] >= row["threshold"])
    return "prediction"


def test_pyfunc_input_handling_never_raises_anything_but_a_client_error(pyfunc_model, seed_files):
    seen = Counter()

    @settings(max_examples=150, deadline=None, database=None, print_blob=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                     HealthCheck.data_too_large])
    @given(cell=cells(seed_files))
    def prop(cell):
        seen[check_cell(pyfunc_model, cell)] += 1

    for seed in seed_files:  # every unmutated seed is a real image the model must predict
        assert check_cell(pyfunc_model, seed) == "prediction"
        assert check_cell(pyfunc_model, b64(seed)) == "prediction"
    prop()
    print(f"\nfuzzed the pyfunc input: {dict(seen)}")
    assert seen["400"] > 0
