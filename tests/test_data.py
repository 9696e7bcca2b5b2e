import shutil

import pandas as pd
import pytest
from conftest import SAMPLES

from pneumo_ml import data
from pneumo_ml.data import DataError, load_split, patient_id, read_manifest, sample_protocol


@pytest.mark.parametrize("name, patient", [
    ("person1946_bacteria_4874.jpeg", "person1946"),
    ("person1946_bacteria_4875.jpeg", "person1946"),
    ("person22_virus_55.jpeg", "person22"),
    ("IM-0115-0001.jpeg", "IM-0115"),
    ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427"),
    ("synth0-00012_pneumonia.png", "synth0-00012"),
    ("scan.dcm", "scan"),
])
def test_patient_ids_from_kermany_names(name, patient):
    assert patient_id(name) == patient


def kermany(root, layout: dict[str, list[str]]):
    """layout: split -> sample file names; writes ROOT/split/CLASS/name from the real samples."""
    for split, names in layout.items():
        for name in names:
            label = "PNEUMONIA" if name.startswith("person") else "NORMAL"
            dst = root / split / label / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(SAMPLES / label / name, dst)
    return root


NORMALS = sorted(p.name for p in (SAMPLES / "NORMAL").iterdir())
PNEUMONIAS = sorted(p.name for p in (SAMPLES / "PNEUMONIA").iterdir())


def test_kermany_folder_splits_are_drawn_from_their_own_folders(tmp_path):
    root = kermany(tmp_path, {"train": NORMALS[:2] + ["person1946_bacteria_4874.jpeg", "person1946_bacteria_4875.jpeg"],
                              "val": NORMALS[2:3] + ["person1947_bacteria_4876.jpeg"],
                              "test": NORMALS[3:] + ["person1951_bacteria_4882.jpeg"]})
    table = load_split(str(root), n_train=4, n_val=2, n_test=2, seed=0)
    frame = table.frame
    assert frame.groupby(["split", "label"]).size().to_dict() == {
        ("test", "NORMAL"): 1, ("test", "PNEUMONIA"): 1, ("train", "NORMAL"): 2, ("train", "PNEUMONIA"): 2,
        ("val", "NORMAL"): 1, ("val", "PNEUMONIA"): 1}
    for path, split in zip(frame["path"], frame["split"]):
        assert f"/{split}/" in path
    assert list(frame.columns) == data.SPLIT_COLUMNS
    assert set(frame["target"]) == {0, 1} and (frame["target"] == (frame["label"] == "PNEUMONIA")).all()
    assert not table.warnings


def test_leaky_kermany_split_is_reported_and_never_used(tmp_path):
    root = kermany(tmp_path, {"train": NORMALS[:2] + ["person1946_bacteria_4874.jpeg", "person1947_bacteria_4876.jpeg"],
                              "val": NORMALS[2:3] + ["person1951_bacteria_4882.jpeg"],
                              "test": NORMALS[3:] + ["person1946_bacteria_4875.jpeg"]})
    table = load_split(str(root), n_train=2, n_val=2, n_test=2, seed=0)
    assert table.warnings and "leaky" in table.warnings[0] and "person1946" in table.warnings[0]
    frame = table.frame
    assert (frame.groupby("patient_id")["split"].nunique() == 1).all()
    assert frame[frame.patient_id == "person1946"]["split"].tolist() == ["test"]


def test_folder_without_splits_is_split_by_patient(tmp_path):
    for label, names in (("NORMAL", NORMALS), ("PNEUMONIA", PNEUMONIAS)):
        (tmp_path / label).mkdir()
        for name in names:
            shutil.copy(SAMPLES / label / name, tmp_path / label / name)
    for seed in range(6):
        frame = load_split(str(tmp_path), n_train=2, n_val=2, n_test=2, seed=seed).frame
        assert (frame.groupby("patient_id")["split"].nunique() == 1).all()
        assert frame.groupby("split").size().to_dict() == {"test": 2, "train": 2, "val": 2}


def test_sampling_is_deterministic_per_seed_and_stratified():
    files = pd.DataFrame({"path": [f"/x/{i}.png" for i in range(600)],
                          "label": ["NORMAL" if i % 3 else "PNEUMONIA" for i in range(600)],
                          "patient_id": [f"p{i % 3 > 0}{i // 6}" for i in range(600)], "split": None, "mask": None})
    counts = {"train": 200, "val": 16, "test": 100}
    a = sample_protocol(files, counts, seed=1, source="x").frame
    b = sample_protocol(files, counts, seed=1, source="x").frame
    c = sample_protocol(files, counts, seed=2, source="x").frame
    pd.testing.assert_frame_equal(a, b)
    assert set(a["path"]) != set(c["path"])
    assert a.groupby(["split", "label"]).size().to_dict() == {
        ("test", "NORMAL"): 50, ("test", "PNEUMONIA"): 50, ("train", "NORMAL"): 100,
        ("train", "PNEUMONIA"): 100, ("val", "NORMAL"): 8, ("val", "PNEUMONIA"): 8}
    assert (a.groupby("patient_id")["split"].nunique() == 1).all()


def test_too_small_a_split_single_class_and_missing_source_are_clear_errors(tmp_path):
    root = kermany(tmp_path / "k", {"train": NORMALS[:2] + PNEUMONIAS[:2], "val": NORMALS[2:3] + PNEUMONIAS[2:3],
                                    "test": NORMALS[3:] + PNEUMONIAS[3:]})
    with pytest.raises(DataError, match=r"\[train\]: needs 100 NORMAL images, found 2"):
        load_split(str(root), n_train=200, n_val=2, n_test=2)
    only_normal = kermany(tmp_path / "n", {"train": NORMALS})
    with pytest.raises(DataError, match="no PNEUMONIA images"):
        load_split(str(only_normal), n_train=2, n_val=2, n_test=2)
    with pytest.raises(DataError, match="no such data folder"):
        load_split(str(tmp_path / "nowhere"), n_train=2, n_val=2, n_test=2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        load_split(str(tmp_path / "empty"), n_train=2, n_val=2, n_test=2)


def test_csv_manifest(tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    rows = []
    for label, names in (("NORMAL", NORMALS), ("PNEUMONIA", PNEUMONIAS)):
        for name in names:
            shutil.copy(SAMPLES / label / name, images / name)
            rows.append({"path": f"imgs/{name}", "label": label.lower()})
    manifest = tmp_path / "m.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    frame = load_split(str(manifest), n_train=2, n_val=2, n_test=2).frame
    assert len(frame) == 6 and set(frame["label"]) == {"NORMAL", "PNEUMONIA"}
    assert (frame.groupby("patient_id")["split"].nunique() == 1).all()

    pd.DataFrame(rows + [{"path": "imgs/gone.jpeg", "label": "NORMAL"}]).to_csv(manifest, index=False)
    with pytest.raises(DataError, match=r"1 file\(s\) not found \(row 10: .*gone.jpeg"):
        read_manifest(manifest)
    pd.DataFrame(rows + [{"path": f"imgs/{NORMALS[0]}", "label": "COVID"}]).to_csv(manifest, index=False)
    with pytest.raises(DataError, match="row 10: label 'COVID' is not NORMAL or PNEUMONIA"):
        read_manifest(manifest)
    manifest.write_text("file,class\nx,y\n")
    with pytest.raises(DataError, match="lacks column"):
        read_manifest(manifest)


def test_synthetic_source_is_generated_once_with_masks():
    a = load_split("synthetic", n_train=8, n_val=4, n_test=4, seed=0)
    manifest = data.cache_root() / "synthetic"
    stamps = {p: p.stat().st_mtime_ns for p in manifest.rglob("manifest.csv")}
    b = load_split("synthetic", n_train=8, n_val=4, n_test=4, seed=0)
    pd.testing.assert_frame_equal(a.frame, b.frame)
    assert stamps == {p: p.stat().st_mtime_ns for p in manifest.rglob("manifest.csv")}, "generated twice"
    assert len(a.frame) == 16 and all(__import__("os").path.isfile(p) for p in a.frame["path"])
    pneumonia = a.frame[a.frame.label == "PNEUMONIA"]
    assert pneumonia["mask"].map(lambda m: isinstance(m, str) and m.endswith(".png")).all()
    assert (a.frame.groupby("patient_id")["split"].nunique() == 1).all()
