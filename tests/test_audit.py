"""Tests for pneumo_ml.audit on Kermany-layout folders built in tmp_path from the real sample radiographs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pneumo_ml.audit import AuditReport, audit_folder, format_report
from pneumo_ml.cli import main

SAMPLES = Path(__file__).parent.parent / "pneumo_ml" / "samples"
# Each patient in one split (person1946's two images both in train).
CLEAN = {
    "train/NORMAL": ["NORMAL2-IM-1431-0001.jpeg", "NORMAL2-IM-1436-0001.jpeg"],
    "train/PNEUMONIA": ["person1946_bacteria_4874.jpeg", "person1946_bacteria_4875.jpeg"],
    "val/NORMAL": ["NORMAL2-IM-1437-0001.jpeg"],
    "val/PNEUMONIA": ["person1947_bacteria_4876.jpeg"],
    "test/NORMAL": ["NORMAL2-IM-1438-0001.jpeg"],
    "test/PNEUMONIA": ["person1951_bacteria_4882.jpeg"],
}


def sample(name: str) -> Path:
    return next(SAMPLES.glob(f"*/{name}"))


def build(root: Path, layout: dict[str, list[str]]) -> Path:
    for folder, names in layout.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copyfile(sample(name), root / folder / name)
    return root


def cli(*args: str):
    return CliRunner().invoke(main, ["data", "audit", *args], catch_exceptions=False)


@pytest.fixture
def clean(tmp_path) -> Path:
    return build(tmp_path / "clean", CLEAN)


def test_clean_layout_is_not_leaky(clean):
    report = audit_folder(clean, progress=False)
    assert not report.leaky
    assert report.leaking_patients == {} and report.cross_split_duplicates == [] == report.within_split_duplicates
    assert report.counts.to_dict(orient="index") == {
        "train": {"NORMAL": 2, "PNEUMONIA": 2}, "val": {"NORMAL": 1, "PNEUMONIA": 1},
        "test": {"NORMAL": 1, "PNEUMONIA": 1}}
    result = cli(str(clean))
    assert result.exit_code == 0, result.stdout
    assert "no leakage across splits" in result.stdout
    assert "patients in more than one split: none" in result.stdout


def test_patient_in_two_splits_is_leakage(tmp_path):
    layout = {**CLEAN, "train/PNEUMONIA": ["person1946_bacteria_4874.jpeg"],
              "test/PNEUMONIA": ["person1946_bacteria_4875.jpeg", "person1951_bacteria_4882.jpeg"]}
    root = build(tmp_path, layout)
    report = audit_folder(root, progress=False)
    assert report.leaky
    assert report.leaking_patients == {"person1946": ["train/PNEUMONIA/person1946_bacteria_4874.jpeg",
                                                      "test/PNEUMONIA/person1946_bacteria_4875.jpeg"]}
    assert report.cross_split_duplicates == []
    result = cli(str(root))
    assert result.exit_code == 1
    assert "person1946: train/PNEUMONIA/person1946_bacteria_4874.jpeg, test/PNEUMONIA/person1946_bacteria_4875.jpeg" \
        in result.stdout
    assert "LEAKY" in result.stdout


def test_identical_file_in_two_splits_is_leakage(clean):
    shutil.copyfile(sample("NORMAL2-IM-1436-0001.jpeg"), clean / "test/NORMAL/scan_0042.jpeg")
    report = audit_folder(clean, progress=False)
    assert report.leaky and report.leaking_patients == {}
    assert report.cross_split_duplicates == [["train/NORMAL/NORMAL2-IM-1436-0001.jpeg", "test/NORMAL/scan_0042.jpeg"]]
    result = cli(str(clean))
    assert result.exit_code == 1
    assert "train/NORMAL/NORMAL2-IM-1436-0001.jpeg = test/NORMAL/scan_0042.jpeg" in result.stdout


def test_identical_files_within_one_split_are_a_note(clean):
    shutil.copyfile(sample("person1947_bacteria_4876.jpeg"), clean / "val/PNEUMONIA/scan_0042.jpeg")
    report = audit_folder(clean, progress=False)
    assert not report.leaky and report.cross_split_duplicates == []
    assert report.within_split_duplicates == [["val/PNEUMONIA/person1947_bacteria_4876.jpeg",
                                               "val/PNEUMONIA/scan_0042.jpeg"]]
    result = cli(str(clean))
    assert result.exit_code == 0
    assert "note: identical files within one split: 1 group(s)" in result.stdout
    assert "val/PNEUMONIA/person1947_bacteria_4876.jpeg = val/PNEUMONIA/scan_0042.jpeg" in result.stdout


def test_size_shortcut_of_the_real_samples_is_flagged(clean):
    report = audit_folder(clean, progress=False)
    assert report.shortcut_auc >= 0.75
    assert report.shortcut_feature in {"width", "height", "file_size"}
    assert report.feature_aucs[report.shortcut_feature] < 0.5  # NORMAL larger
    assert audit_folder(clean, progress=False).shortcut_auc == report.shortcut_auc  # deterministic
    text = format_report(report)
    assert "WARNING" in text and "a model can tell the classes apart from metadata and global statistics alone" in text
    assert f"most telling feature: {report.shortcut_feature} (higher in NORMAL" in text


def test_no_shortcut_when_both_classes_hold_the_same_images(tmp_path):
    # Renamed copies: identical metadata in both classes; CV must keep twins together or it anti-learns.
    for label in ("NORMAL", "PNEUMONIA"):
        (tmp_path / label).mkdir()
        for path in sorted(SAMPLES.glob("*/*.jpeg")):
            shutil.copyfile(path, tmp_path / label / f"{label.lower()}_{path.name}")
    report = audit_folder(tmp_path, progress=False)
    assert report.shortcut_auc == pytest.approx(0.5, abs=0.1)
    text = format_report(report)
    assert "WARNING" not in text and "a model can tell" not in text


def test_unreadable_files_are_listed_not_fatal(clean):
    data = sample("NORMAL2-IM-1437-0001.jpeg").read_bytes()
    (clean / "val/NORMAL/cut.jpeg").write_bytes(data[: len(data) // 3])
    (clean / "test/PNEUMONIA/notes.jpeg").write_text("not an x-ray\n")
    report = audit_folder(clean, progress=False)
    reasons = dict(report.unreadable)
    assert set(reasons) == {"val/NORMAL/cut.jpeg", "test/PNEUMONIA/notes.jpeg"}
    assert "truncated" in reasons["val/NORMAL/cut.jpeg"]
    assert "not an image" in reasons["test/PNEUMONIA/notes.jpeg"]
    assert report.counts.loc["val", "NORMAL"] == 2  # counted as files ...
    assert report.stats.loc["NORMAL", "n"] == 4  # ... but left out of the statistics
    result = cli(str(clean))
    assert result.exit_code == 0
    assert "Unreadable files: 2" in result.stdout
    assert "val/NORMAL/cut.jpeg: truncated" in result.stdout


def test_folder_without_splits(tmp_path):
    build(tmp_path, {"NORMAL": [p.name for p in SAMPLES.glob("NORMAL/*.jpeg")],
                     "PNEUMONIA": [p.name for p in SAMPLES.glob("PNEUMONIA/*.jpeg")]})
    report = audit_folder(tmp_path, progress=False)
    assert not report.has_splits and not report.leaky
    assert report.leaking_patients == {}  # person1946's two images are no leak without splits
    assert report.counts.to_dict(orient="index") == {"all": {"NORMAL": 4, "PNEUMONIA": 4}}
    widths = [Image.open(p).size[0] for p in SAMPLES.glob("NORMAL/*.jpeg")]
    sizes = [p.stat().st_size for p in SAMPLES.glob("PNEUMONIA/*.jpeg")]
    assert report.stats.loc["NORMAL", ["width_median", "width_min", "width_max"]].tolist() == \
        [np.median(widths), min(widths), max(widths)]
    assert report.stats.loc["PNEUMONIA", ["file_size_min", "file_size_max"]].tolist() == [min(sizes), max(sizes)]
    assert report.stats.loc["NORMAL", "modes"] == "L 4"
    result = cli(str(tmp_path))
    assert result.exit_code == 0
    assert "no train/val/test subfolders: no cross-split leakage to find" in result.stdout
    assert "Image statistics per class" in result.stdout


def test_too_few_images_for_a_shortcut_estimate(tmp_path):
    build(tmp_path, {"NORMAL": ["NORMAL2-IM-1431-0001.jpeg"], "PNEUMONIA": ["person1947_bacteria_4876.jpeg"]})
    report = audit_folder(tmp_path, progress=False)
    assert report.shortcut_auc is None and report.shortcut_feature is None
    assert "too few readable images" in format_report(report)


def test_dicom_header_gives_size_and_mode(tmp_path):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    build(tmp_path, {"NORMAL": ["NORMAL2-IM-1431-0001.jpeg"]})
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 30, 40, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.arange(1200, dtype=np.uint16).reshape(30, 40).tobytes()
    (tmp_path / "PNEUMONIA").mkdir()
    ds.save_as(tmp_path / "PNEUMONIA" / "scan.dcm", enforce_file_format=True)
    report = audit_folder(tmp_path, progress=False)
    assert report.unreadable == []
    assert report.stats.loc["PNEUMONIA", ["width_min", "height_min", "modes"]].tolist() == [40, 30, "DICOM 1"]


def test_json_holds_the_findings(tmp_path):
    layout = {**CLEAN, "train/PNEUMONIA": ["person1946_bacteria_4874.jpeg"],
              "test/PNEUMONIA": ["person1946_bacteria_4875.jpeg", "person1951_bacteria_4882.jpeg"]}
    root = build(tmp_path / "data", layout)
    (root / "val/NORMAL/notes.jpeg").write_text("hello")
    out = tmp_path / "audit.json"
    result = cli(str(root), "--json", str(out))
    assert result.exit_code == 1
    found = json.loads(out.read_text())
    assert found["leaky"] is True
    assert list(found["leaking_patients"]) == ["person1946"]
    assert found["counts"]["test"] == {"NORMAL": 1, "PNEUMONIA": 2}
    assert found["unreadable"][0]["path"] == "val/NORMAL/notes.jpeg"
    assert found["shortcut_auc"] >= 0.75 and found["shortcut_feature"]
    assert found["stats"]["NORMAL"]["n"] == 4
    assert AuditReport.__dataclass_fields__.keys() - {"has_splits", "feature_aucs"} <= found.keys()


def test_shortcut_figure_is_the_intensity_baseline_on_the_same_images(tmp_path):
    """The audit's intensity figure is pneumo_ml.baseline's cross-validated AUC on the files as written."""
    from pneumo_ml import synthetic
    from pneumo_ml.baseline import cross_validated_auc, feature_matrix
    from pneumo_ml.io import read_xray

    manifest = synthetic.write_dataset(tmp_path / "s", n_train=12, n_val=4, n_test=12, seed=3, size=96,
                                       progress=False)
    report = audit_folder(tmp_path / "s", progress=False)
    images = [read_xray(tmp_path / "s" / path) for path in manifest["path"]]
    expected = cross_validated_auc(feature_matrix(images), (manifest["label"] == "PNEUMONIA").to_numpy(int))
    assert report.intensity_auc == round(expected, 4)
    assert report.shortcut_auc is not None and report.metadata_auc is not None
    assert "global intensity statistics" in format_report(report)


def test_a_brightness_shortcut_is_flagged(tmp_path):
    """Same files, but every PNEUMONIA image brighter: metadata alike, intensity statistics give it away."""
    for label, lift in (("NORMAL", 0), ("PNEUMONIA", 40)):
        (tmp_path / label).mkdir()
        for path in sorted(SAMPLES.glob("*/*.jpeg")):
            pixels = np.asarray(Image.open(path).convert("L"), dtype=int)
            Image.fromarray(np.clip(pixels + lift, 0, 255).astype(np.uint8)).save(
                tmp_path / label / f"{label.lower()}_{path.stem}.png")
    report = audit_folder(tmp_path, progress=False)
    assert report.intensity_auc >= 0.9 and report.shortcut_auc >= 0.75
    assert "WARNING" in format_report(report)
