"""The edges of bad input: every file access goes through the guarded reader (so --skip-bad covers unreadable,
non-regular and vanished files), symlinks are images, and training checks its own split before the first epoch."""
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY

from pneumo_ml import config
from pneumo_ml.audit import audit_folder, format_report
from pneumo_ml.cache import DecodedCache
from pneumo_ml.data import DataError, ensure_synthetic, load_split
from pneumo_ml.train import prepare_data

UNREADABLE = "/proc/self/mem"  # a regular file that nobody, root included, can read from its start


@pytest.fixture
def synthetic_root() -> Path:
    return ensure_synthetic(n_train=16, n_val=8, n_test=12, seed=0, difficulty=None)


@pytest.fixture
def no_hang():
    """A read that blocks (a FIFO opened for reading) fails the test instead of hanging it."""
    def expire(signum, frame):
        raise TimeoutError("blocked reading a file")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def manifest_of(root: Path) -> pd.DataFrame:
    frame = pd.read_csv(root / "manifest.csv", dtype=str, keep_default_na=False)
    frame["path"] = [str(root / p) for p in frame["path"]]
    return frame[["path", "label", "patient_id", "split"]]


def write_manifest(frame: pd.DataFrame, folder: Path) -> str:
    path = folder / "manifest.csv"
    frame.to_csv(path, index=False)
    return str(path)


def cfg(data: str, **overrides):
    return config.load(config.experiment_path("small_cnn"),
                       **{**TINY, "data": data, "n_train": 0, "n_val": 0, "n_test": 0, **overrides})


def test_the_cache_reports_fifos_vanished_and_unreadable_files_as_failures(tmp_path, synthetic_root, no_hang):
    fifo = tmp_path / "scan.png"
    os.mkfifo(fifo)
    good = manifest_of(synthetic_root)["path"][0]
    paths = [good, str(fifo), str(tmp_path / "vanished.png"), UNREADABLE]
    _, failures = DecodedCache().load(paths, 32, workers=1, progress=False)
    reasons = {f.path: f.reason for f in failures}
    assert set(reasons) == set(paths[1:])
    assert reasons[str(fifo)] == "not a regular file (a FIFO)"
    assert reasons[paths[2]] == "file not found"
    assert reasons[UNREADABLE].startswith("cannot read file")


def test_skip_bad_skips_what_cannot_be_read_and_says_why_once(tmp_path, synthetic_root, no_hang):
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    bad = pd.DataFrame({"path": [str(fifo), UNREADABLE], "label": ["NORMAL", "PNEUMONIA"],
                        "patient_id": ["fifo", "mem"], "split": ["train", "train"]})
    manifest = write_manifest(pd.concat([manifest_of(synthetic_root), bad]), tmp_path)
    with pytest.raises(DataError, match="2 unreadable image") as stopped:
        prepare_data(cfg(manifest), progress=False)
    assert f"{fifo}: not a regular file (a FIFO)" in str(stopped.value)
    data = prepare_data(cfg(manifest, skip_bad=True), progress=False)
    assert set(data.skipped["path"]) == {str(fifo), UNREADABLE}
    assert not any(path in reason for path, reason in zip(data.skipped["path"], data.skipped["reason"]))


def test_data_check_refuses_a_fifo_without_reading_it(tmp_path):
    fifo = tmp_path / "f.jpeg"
    os.mkfifo(fifo)
    done = subprocess.run([sys.executable, "-m", "pneumo_ml", "data", "check", str(fifo)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1 and f"FAIL {fifo}: not a regular file (a FIFO)" in done.stdout


def linked_folder(tmp_path: Path, synthetic_root: Path) -> Path:
    """A Kermany-layout folder made only of symlinks to files outside it (a symlink farm), masks included."""
    root = tmp_path / "farm"
    for row in pd.read_csv(synthetic_root / "manifest.csv", dtype=str, keep_default_na=False).itertuples():
        for rel in filter(None, (row.path, row.mask)):
            link = root / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(synthetic_root / rel)
    return root


def test_symlinks_to_files_outside_the_root_are_images_with_their_masks(tmp_path, synthetic_root):
    root = linked_folder(tmp_path, synthetic_root)
    split = load_split(str(root), n_train=0, n_val=0, n_test=0)
    assert all(Path(p).is_symlink() and Path(p).is_relative_to(root.resolve()) for p in split.frame["path"])
    masked = split.frame.dropna(subset=["mask"])
    assert len(masked) and all(m.startswith(str(root.resolve() / "masks")) for m in masked["mask"])
    report = audit_folder(root, progress=False)
    assert not report.leaky and len(report.links_outside) == len(split.frame)
    assert f"note: {len(split.frame)} symlink(s) point outside" in format_report(report)


def test_training_stops_on_a_leaky_split_naming_the_files_unless_allowed(tmp_path, synthetic_root):
    files = manifest_of(synthetic_root)
    train, test = files[files["split"] == "train"], files[files["split"] == "test"]
    copy = tmp_path / "copy_of_train_0.png"
    shutil.copy(train["path"].iloc[0], copy)  # the same bytes under another name, in test
    same_path = train.iloc[[1]].assign(split="test", patient_id="other-patient")
    two_labels = train.iloc[[2]].assign(label="PNEUMONIA" if train["label"].iloc[2] == "NORMAL" else "NORMAL",
                                        patient_id="third-patient")
    leaky = pd.concat([files, same_path, two_labels,
                       test.iloc[[0]].assign(path=str(copy), patient_id="copy-patient")])
    manifest = write_manifest(leaky, tmp_path)
    with pytest.raises(DataError, match="the split leaks: 3 problem") as stopped:
        prepare_data(cfg(manifest), progress=False)
    message = str(stopped.value)
    assert f"{train['path'].iloc[1]}: listed in test and train" in message
    assert f"{train['path'].iloc[2]}: listed with two labels (NORMAL, PNEUMONIA)" in message
    assert "identical content across splits" in message and str(copy) in message

    from mlflow.tracking import MlflowClient

    from pneumo_ml.train import run_experiment
    result = run_experiment(cfg(manifest, allow_leaks=True, register=False, gradcam_images=0), progress=False)
    run = MlflowClient().get_run(result.run_id)
    assert run.data.params["allow_leaks"] == "true" and run.data.tags["pneumo_ml.allowed_leaks"] == "3"
    leaks = Path(MlflowClient().download_artifacts(result.run_id, "data/leaks.txt", str(tmp_path)))
    assert "two labels" in leaks.read_text()


def test_data_synth_output_honours_the_umask(tmp_path):
    from pneumo_ml import synthetic
    previous = os.umask(0o022)
    try:
        synthetic.write_dataset(tmp_path / "set", n_train=2, n_val=2, n_test=2, seed=0, size=64, workers=1)
    finally:
        os.umask(previous)
    assert (tmp_path / "set").stat().st_mode & 0o777 == 0o755  # not mkdtemp's private 0700
