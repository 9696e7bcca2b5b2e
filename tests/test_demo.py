"""The Gradio demo: in-process (the functions behind the buttons, the model picker, launch's defaults) and for
real (`python -m pneumo_ml demo` in a subprocess, driven by headless Chromium and by gradio_client).

Nothing is downloaded: analytics off, no share link, Debian's Chromium (never `playwright install`).
The browser test fails, not skips, when Chromium or Playwright is missing: CI installs both.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from browser import CHROMIUM_ARGS, chromium_path
from conftest import SAMPLES, write_dicom
from not_xrays import colour_photo
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
MODEL = "pneumonia-classifier"
SAMPLE_PNEUMONIA = SAMPLES / "PNEUMONIA" / "person1946_bacteria_4874.jpeg"
SAMPLE_NORMAL = SAMPLES / "NORMAL" / "NORMAL2-IM-1438-0001.jpeg"
STARTUP_S = 90


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def version_uri(version) -> str:
    return f"models:/{MODEL}/{version}"


def expected(path: Path | bytes, uri: str) -> dict:
    """What Predictor.predict says for the file, in-process (the reference the page must agree with)."""
    from pneumo_ml.tracking import load_predictor
    predictor = load_predictor(uri)
    data = path if isinstance(path, bytes) else path.read_bytes()
    image, not_radiograph = predictor.read(data)
    return predictor.predict(image[None], not_radiograph=[not_radiograph])[0]


def dicom_bytes(source: Path) -> bytes:
    """A 12-bit MONOCHROME2 DICOM carrying a sample radiograph's pixels."""
    import tempfile

    from pneumo_ml.io import read_xray
    with tempfile.TemporaryDirectory() as tmp:
        return write_dicom(Path(tmp) / "x.dcm", read_xray(source), bits=12).read_bytes()


# ---------------------------------------------------------------- in-process

def test_dicom_and_bad_files_through_the_predict_function(trained_model, server, monkeypatch, tmp_path):
    # `server` only starts the demo subprocess here, so that it boots while the in-process tests run.
    from pneumo_ml import demo
    uri, result = trained_model
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model_uri = version_uri(result.version)

    dcm = tmp_path / "chest.dcm"
    dcm.write_bytes(dicom_bytes(SAMPLE_PNEUMONIA))
    shown, label, details, gradcam, error = demo.predict_file(str(dcm), model_uri)
    want = expected(dcm, model_uri)
    assert error == ""
    assert label.splitlines()[-1] == f"## {want['label']}" and want["label"] in ("NORMAL", "PNEUMONIA")
    assert (want["warning"] != "") == ("⚠️" in label)  # a warning, when there is one, stands above the label
    assert f"{want['probability']:.4f}" in details and f"{want['threshold']:.4f}" in details
    assert "research use, not for diagnosis" in details.lower()
    assert f"v{result.version}" in details and "SmallCNN" in details
    assert shown.dtype == np.uint8 and shown.ndim == 2 and max(shown.shape) <= demo.DISPLAY_MAX
    assert gradcam.dtype == np.uint8 and gradcam.shape[0] == shown.shape[0] and gradcam.shape[1] > shown.shape[1]
    assert gradcam.shape[2] == 3 and gradcam[:, shown.shape[1]:].std() > 20  # the colour bar beside the overlay
    preview = demo.preview_file(str(dcm))
    assert np.array_equal(preview[0], shown) and preview[1:] == ("", "", None, "")

    text = tmp_path / "notes.jpeg"
    text.write_text("this is not a radiograph")
    for outputs in (demo.predict_file(str(text), model_uri), demo.preview_file(str(text))):
        image, label, details, gradcam, error = outputs
        assert "This file could not be read" in error and "notes.jpeg" in error and "not an image" in error
        assert image is None and gradcam is None and label == details == ""
        assert str(tmp_path) not in error  # the server's folders are not shown to the user

    photo = tmp_path / "photo.jpeg"
    photo.write_bytes(colour_photo())
    _, label, details, _, error = demo.predict_file(str(photo), model_uri)
    assert error == "" and label.index("does not look like a chest radiograph") < label.index("\n## ")
    assert "Distance from the training images" in details

    _, label, _, _, error = demo.predict_file(None, model_uri)
    assert label == "" and "Upload a chest X-ray first" in error
    _, label, _, _, error = demo.predict_file(str(dcm), f"models:/{MODEL}/999")
    assert label == "" and "could not be loaded" in error
    _, label, _, _, error = demo.predict_file(str(dcm), None)
    assert label == "" and "pneumo-ml suite" in error


def test_model_picker_lists_versions_and_aliases(trained_model, monkeypatch, tmp_path):
    from pneumo_ml import demo, tracking
    uri, result = trained_model
    # A copy of the session store (the artifacts stay where they are): more versions and aliases here only.
    shutil.copy(uri.removeprefix("sqlite:///"), tmp_path / "store.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store.db'}")
    first = str(result.version)
    for experiment, architecture in (("ViT_Tiny", "vit_tiny"), ("ResNet50_Aug", "resnet50")):
        tracking.register(result.model_uri, tags={"experiment": experiment, "architecture": architecture,
                                                  "val_auc": "0.9"})
    versions = sorted(int(v.version) for v in tracking.model_versions(MODEL))
    assert len(versions) == 3
    newest, vit = versions[-1], versions[-2]

    entries, default, status = demo.model_choices(MODEL)
    labels = [e.label for e in entries]
    assert labels == [f"v{newest} ResNet50_Aug · val AUC 0.900", f"v{vit} ViT_Tiny · val AUC 0.900",
                      labels[2]] and labels[2].startswith(f"v{first} SmallCNN")
    assert default == version_uri(newest)  # no champion: the newest version
    assert "3 registered versions" in status

    tracking.set_alias(MODEL, "challenger", str(vit))
    tracking.set_alias(MODEL, "champion", first)
    entries, default, _ = demo.model_choices(MODEL)
    assert [e.label for e in entries[:2]] == [f"@champion → v{first} (SmallCNN)",
                                               f"@challenger → v{vit} (ViT_Tiny)"]
    assert [e.uri for e in entries[:2]] == [f"models:/{MODEL}@champion", f"models:/{MODEL}@challenger"]
    assert default == f"models:/{MODEL}@champion"

    app = demo.build_app(MODEL)  # the champion is what the page preselects
    picker = next(b for b in app.blocks.values() if getattr(b, "elem_id", None) == "model-picker")
    assert picker.value == default
    assert [c[0] for c in picker.choices] == [e.label for e in entries]

    # An alias is resolved when predicting: moving @champion needs no restart, and the page says which version.
    _, label, details, _, error = demo.predict_file(str(SAMPLE_NORMAL), f"models:/{MODEL}@champion")
    assert error == "" and label.splitlines()[-1] in ("## NORMAL", "## PNEUMONIA")
    assert f"v{first} \\(@champion\\), SmallCNN" in details
    tracking.set_alias(MODEL, "champion", str(vit))
    _, _, details, _, error = demo.predict_file(str(SAMPLE_NORMAL), f"models:/{MODEL}@champion")
    assert error == "" and f"v{vit} \\(@champion\\), ViT\\_Tiny" in details  # Markdown-escaped


def test_no_registered_model_still_starts_with_a_hint(monkeypatch, tmp_path):
    from pneumo_ml import demo
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'empty.db'}")
    entries, default, status = demo.model_choices(MODEL)
    assert entries == [] and default is None
    assert "No model is registered" in status and "pneumo-ml suite" in status
    app = demo.build_app(MODEL)
    shown = [b.value for b in app.blocks.values() if getattr(b, "elem_id", None) == "model-status"]
    assert shown == [status]
    _, label, _, _, error = demo.predict_file(str(SAMPLE_NORMAL), default)
    assert label == "" and "pneumo-ml suite" in error


def test_launch_binds_loopback_without_share_link_by_default(monkeypatch):
    import gradio as gr
    from click.testing import CliRunner

    from pneumo_ml import cli, demo
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    seen = {}
    monkeypatch.setattr(demo, "build_app", lambda model_name: gr.Blocks(analytics_enabled=False))
    monkeypatch.setattr(gr.Blocks, "launch",
                        lambda self, **kwargs: seen.update(kwargs, analytics=self.analytics_enabled))
    demo.launch()
    assert seen["server_name"] == "127.0.0.1" and seen["share"] is False and seen["analytics"] is False
    seen.clear()
    outcome = CliRunner().invoke(cli.main, ["demo", "--port", "7861"])  # the command's own defaults
    assert outcome.exit_code == 0, outcome.output
    assert seen["server_name"] == "127.0.0.1" and seen["server_port"] == 7861 and seen["share"] is False


# ---------------------------------------------------------------- for real: subprocess, browser, client

class DemoServer:
    def __init__(self, tracking_uri: str, root: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.temp = root / "gradio-tmp"
        self.temp.mkdir()
        self.log = root / "demo.log"
        env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "GRADIO_TEMP_DIR": str(self.temp),
               "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        env.pop("MLFLOW_RUN_ID", None)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "pneumo_ml", "demo", "--port", str(self.port)],
                                         cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the demo exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        pytest.fail(f"the demo did not answer within {STARTUP_S} s:\n{self.output()}")

    def listening_addresses(self) -> set[str]:
        """Local addresses of this port's listening TCP sockets, from /proc/net/tcp{,6} (Linux)."""
        found = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, port = local.rsplit(":", 1)
                if state == "0A" and int(port, 16) == self.port:  # 0A: LISTEN
                    found.add(address)
        return found

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server(trained_model, tmp_path_factory):
    """`python -m pneumo_ml demo --port N` on the session store, started now, waited for by the test."""
    uri, _ = trained_model
    running = DemoServer(uri, tmp_path_factory.mktemp("demo"))
    yield running
    running.stop()


def test_browser_upload_predict_gradcam_and_bad_file(server, trained_model, monkeypatch, tmp_path):
    from playwright.sync_api import expect, sync_playwright
    executable = chromium_path()
    uri, result = trained_model
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model_uri = version_uri(result.version)
    want = expected(SAMPLE_PNEUMONIA, model_uri)  # computed while the server starts
    dcm = tmp_path / "normal.dcm"
    dcm.write_bytes(dicom_bytes(SAMPLE_NORMAL))
    want_dicom = expected(dcm, model_uri)
    truncated = tmp_path / "truncated.jpeg"
    truncated.write_bytes(SAMPLE_PNEUMONIA.read_bytes()[:20_000])
    photo = tmp_path / "photo.jpeg"
    photo.write_bytes(colour_photo())
    want_photo = expected(photo, model_uri)
    server.wait_ready()
    # Bound to loopback only (the default), IPv4 127.0.0.1 as /proc/net/tcp spells it.
    assert server.listening_addresses() == {"0100007F"}, server.listening_addresses()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            requests = []
            page.on("request", lambda r: requests.append(r.url))
            page.set_default_timeout(120_000)  # generous: every wait is for a condition, CI runs under load
            page.goto(server.url)
            expect(page.locator("#research-note")).to_be_visible()
            expect(page.locator("#research-note")).to_contain_text("research use, not for diagnosis",
                                                                   ignore_case=True)
            picker = page.locator("#model-picker input")
            assert picker.input_value().startswith(f"v{result.version} SmallCNN"), picker.input_value()

            file_input = page.locator("#xray-upload input[type=file]")
            clear = page.locator("#xray-upload button[aria-label=Clear]")

            def upload(path: Path, *, replacing: bool) -> None:
                """Into the empty drop zone, or, when a file is shown, after clearing it: each step waits
                for the element it needs, so a page still rendering is never mistaken for either state."""
                if replacing:
                    clear.click()
                expect(file_input).to_be_attached()
                file_input.set_input_files(str(path))
                expect(clear).to_be_visible()  # the upload landed: the component now shows the file

            def predict_shows(label: str, probability: float) -> None:
                page.locator("#predict-button").click()
                # the first prediction loads and verifies the model: minutes on a loaded 2-core machine
                expect(page.locator("#result-label h2")).to_have_text(label, timeout=180_000)
                expect(page.locator("#result-details")).to_contain_text(f"{probability:.4f}")
                expect(page.locator("#result-details")).to_contain_text("research use, not for diagnosis",
                                                                        ignore_case=True)
                cam = page.locator("#gradcam-image img")
                expect(cam).to_be_visible()
                page.wait_for_function("i => i.complete && i.naturalWidth > 0", arg=cam.element_handle())
                expect(page.locator("#error-box")).to_have_text("")

            upload(SAMPLE_PNEUMONIA, replacing=False)
            expect(page.locator("#input-image img")).to_be_visible()  # the decoded radiograph, before predicting
            predict_shows(want["label"], want["probability"])
            assert any(server.temp.rglob(SAMPLE_PNEUMONIA.name))  # uploads land in GRADIO_TEMP_DIR only

            ARTIFACTS.mkdir(exist_ok=True)
            shot = ARTIFACTS / "demo.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            with Image.open(shot) as image:
                assert image.width >= 800 and image.height >= 600

            upload(truncated, replacing=True)
            expect(page.locator("#error-box")).to_contain_text("This file could not be read")
            expect(page.locator("#error-box")).to_contain_text("truncated.jpeg: truncated JPEG")
            expect(page.locator("#result-label")).to_have_text("")  # the previous result is gone
            expect(page.locator("#gradcam-image img")).to_have_count(0)
            page.locator("#predict-button").click()  # predicting the broken file: the same message
            expect(page.locator("#error-box")).to_contain_text("This file could not be read")
            assert "Traceback" not in page.content()

            upload(dcm, replacing=True)  # and the app still answers: a good upload, a DICOM this time
            expect(page.locator("#error-box")).to_have_text("")
            expect(page.locator("#input-image img")).to_be_visible()
            predict_shows(want_dicom["label"], want_dicom["probability"])

            upload(photo, replacing=True)  # a colour photograph: the warning stands above the label
            page.locator("#predict-button").click()
            expect(page.locator("#result-label h3")).to_contain_text("does not look like a chest radiograph")
            expect(page.locator("#result-label h2")).to_have_text(want_photo["label"])
            assert page.locator("#result-label h3").bounding_box()["y"] < \
                page.locator("#result-label h2").bounding_box()["y"]

            page.locator("#examples").get_by_text(f"PNEUMONIA: {SAMPLE_PNEUMONIA.stem}").click()  # an example
            expect(page.locator("#result-label")).to_have_text("")
            expect(page.locator("#input-image img")).to_be_visible()
            predict_shows(want["label"], want["probability"])
        finally:
            browser.close()
    outside = [u for u in requests if u.startswith(("http:", "https:", "ws:", "wss:"))
               and not u.startswith(server.url)]
    assert outside == []  # the page calls nothing but the demo (no fonts, analytics or CDN)
    assert server.proc.poll() is None, server.output()


def test_gradio_client_predicts_a_dicom(server, trained_model, monkeypatch, tmp_path):
    from gradio_client import Client, handle_file
    uri, result = trained_model
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    dcm = tmp_path / "chest.dcm"
    dcm.write_bytes(dicom_bytes(SAMPLE_NORMAL))
    want = expected(dcm, version_uri(result.version))
    server.wait_ready()
    client = Client(server.url, verbose=False, analytics_enabled=False, download_files=str(tmp_path / "dl"))
    shown, label, details, gradcam, error = client.predict(handle_file(str(dcm)), version_uri(result.version),
                                                           api_name="/predict")
    assert error == "" and label.splitlines()[-1] == f"## {want['label']}"
    assert f"{want['probability']:.4f}" in details
    with Image.open(gradcam) as cam, Image.open(shown) as image:
        assert cam.mode == "RGB" and cam.height == image.height and cam.width > image.width  # + colour bar
    picked, status = client.predict(api_name="/models")  # the Refresh button
    assert picked["value"] == version_uri(result.version) and "1 registered version" in status
    assert [label.split(" · ")[0] for label, _ in picked["choices"]] == [f"v{result.version} SmallCNN"]
