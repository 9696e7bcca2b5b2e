"""Tests shrink the real configuration (tiny images, a few dozen synthetic radiographs, 1-2 epochs, CPU)
and use a real SQLite tracking store in a temporary folder; nothing is mocked and nothing is downloaded."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # never reach for the hub in tests
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

SAMPLES = Path(__file__).resolve().parent.parent / "pneumo_ml" / "samples"
TINY = dict(epochs=1, batch_size=8, image_size=32, n_train=16, n_val=8, n_test=12, bootstrap=100,
            gradcam_images=4, device="cpu", workers=1)


def cli_args(values: dict) -> list[str]:
    """A TINY-style dict as pneumo-ml train options (keys without an option of their own through --set)."""
    args = []
    for key, value in values.items():
        if key in ("bootstrap", "gradcam_images", "workers"):
            args += ["--set", f"{key}={value}"]
        else:
            args += [f"--{key.replace('_', '-')}", str(value)]
    return args


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("session")


@pytest.fixture(autouse=True)
def isolated(tmp_path, session_dir, monkeypatch):
    """Each test: its own working folder and SQLite tracking store; one shared data cache per session."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PNEUMO_ML_CACHE", str(session_dir / "cache"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    yield


@pytest.fixture
def tiny_config():
    """The real config, shrunk: small_cnn at 32 px on 36 synthetic radiographs for one epoch."""
    from pneumo_ml import config
    def make(**overrides):
        return config.load(config.experiment_path("small_cnn"), **{**TINY, **overrides})
    return make


@pytest.fixture(scope="session")
def trained_model(session_dir, tmp_path_factory):
    """One small_cnn run logged and registered in a session-wide SQLite store: (tracking URI, result)."""
    from pneumo_ml import config
    from pneumo_ml.train import run_experiment
    store = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{store / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("PNEUMO_ML_CACHE", str(session_dir / "cache"))
        mp.chdir(store)
        cfg = config.load(config.experiment_path("small_cnn"), **{**TINY, "epochs": 2, "image_size": 48})
        result = run_experiment(cfg, progress=False)
    return uri, result


def write_dicom(path, pixels, monochrome1: bool = False, bits: int = 8):
    """A real DICOM file (Secondary Capture, explicit VR little endian): uint8 `pixels`, or with bits=12 the
    same picture stored as 12-bit values in 16-bit words (as CR/DX scanners write them)."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    allocated = 8 if bits == 8 else 16
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = \
        1, allocated, bits, bits - 1, 0
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    data = (255 - pixels) if monochrome1 else pixels
    data = data.astype(np.uint16) << (bits - 8) if bits > 8 else data
    ds.PixelData = np.ascontiguousarray(data, dtype=f"<u{allocated // 8}").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
