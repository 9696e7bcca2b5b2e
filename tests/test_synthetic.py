"""The procedural radiograph generator: determinism, class independence, data set writer, difficulty."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.ndimage import binary_dilation

from pneumo_ml import synthetic as S

SMALL = 160  # renders at this size keep the test file fast


def auc(scores, labels):
    """Probability that a random positive scores above a random negative (ties count half)."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    pos, neg = scores[labels], scores[~labels]
    return ((pos[:, None] > neg).sum() + 0.5 * (pos[:, None] == neg).sum()) / (len(pos) * len(neg))


def lesion_contrast(seed, index, difficulty):
    sick, mask = S.render_case(seed, index, True, size=SMALL, difficulty=difficulty)
    well, _ = S.render_case(seed, index, False, size=SMALL, difficulty=difficulty)
    lesion = mask == S.MASK_LESION
    return sick[lesion].mean() - well[lesion].astype(float).mean()


def test_render_is_deterministic_per_seed_and_index():
    a_img, a_mask = S.render_case(3, 11, True, size=SMALL)
    b_img, b_mask = S.render_case(3, 11, True, size=SMALL)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)
    other, _ = S.render_case(4, 11, True, size=SMALL)
    assert other.shape != a_img.shape or not np.array_equal(other, a_img)
    neighbour, _ = S.render_case(3, 12, True, size=SMALL)
    assert neighbour.shape != a_img.shape or not np.array_equal(neighbour, a_img)


def test_output_types_sizes_and_mask_values():
    for index in range(6):
        img, mask = S.render_case(0, index, index % 2 == 1)
        assert img.dtype == np.uint8 and mask.dtype == np.uint8 and img.ndim == 2
        assert img.shape == mask.shape
        assert 0.85 * S.DEFAULT_SIZE - 1 <= max(img.shape) <= S.DEFAULT_SIZE
        assert 0.79 <= img.shape[0] / img.shape[1] <= 1.06
        assert set(np.unique(mask)) <= {0, S.MASK_LUNG, S.MASK_LESION}
        assert 0.1 < (mask > 0).mean() < 0.6  # two lung fields, a sizeable part of the image


@pytest.mark.parametrize("index", range(6))
def test_normal_and_pneumonia_twins_differ_only_inside_the_lesion(index):
    sick, sick_mask, info = S.render_case(1, index, True, return_info=True)
    well, well_mask, well_info = S.render_case(1, index, False, return_info=True)
    assert sick.shape == well.shape
    assert well_info["pattern"] is None and info["pattern"] in S.PATTERNS
    assert not (well_mask == S.MASK_LESION).any()
    lesion = sick_mask == S.MASK_LESION
    assert lesion.sum() > 100
    # lung fields are anatomy: the same in both renders
    assert np.array_equal(well_mask > 0, sick_mask > 0)
    # blur and upsampling spread the lesion by a few pixels, nothing else may change
    near = binary_dilation(lesion, iterations=10)
    assert np.array_equal(sick[~near], well[~near])
    assert (sick[lesion].astype(int) - well[lesion]).mean() > 0


def test_normal_render_ignores_difficulty():
    easy, _ = S.render_case(2, 5, False, size=SMALL, difficulty=0.0)
    hard, _ = S.render_case(2, 5, False, size=SMALL, difficulty=1.0)
    assert np.array_equal(easy, hard)


def test_size_and_exposure_carry_no_class_signal():
    """Cases as write_dataset draws them (one index per case): frame and brightness outside the lungs."""
    features, labels = [], []
    for index in range(120):
        pneumonia = index % 2 == 1
        img, mask = S.render_case(5, index, pneumonia, size=SMALL)
        h, w = img.shape
        features.append((h, w, h / w, img[mask == 0].mean()))
        labels.append(pneumonia)
    features = np.array(features)
    for name, column in zip(("height", "width", "aspect", "mean outside lungs"), features.T):
        assert abs(auc(column, labels) - 0.5) < 0.15, name


def test_all_three_lesion_patterns_occur():
    seen = {S.render_case(0, index, True, size=96, return_info=True)[2]["pattern"] for index in range(30)}
    assert seen == set(S.PATTERNS)


def test_lesion_contrast_decreases_with_difficulty():
    contrast = {d: np.mean([lesion_contrast(4, i, d) for i in range(6)]) for d in (0.0, 0.5, 1.0)}
    assert contrast[0.0] > contrast[0.5] > contrast[1.0] > 0
    assert contrast[0.0] > 3 * contrast[1.0]


def read_tree(root):
    return {p.relative_to(root).as_posix(): np.asarray(Image.open(p)) for p in sorted(root.rglob("*.png"))}


def test_write_dataset_layout_manifest_and_masks(tmp_path):
    out = tmp_path / "synth"
    manifest = S.write_dataset(out, n_train=6, n_val=2, n_test=5, seed=9, size=96, progress=False)
    on_disk = pd.read_csv(out / "manifest.csv", dtype=str)
    assert list(on_disk.columns) == ["path", "label", "patient_id", "split", "mask"]
    pd.testing.assert_frame_equal(on_disk, manifest.astype(str))
    counts = manifest.groupby(["split", "label"]).size().to_dict()
    assert counts == {("train", "NORMAL"): 3, ("train", "PNEUMONIA"): 3, ("val", "NORMAL"): 1,
                      ("val", "PNEUMONIA"): 1, ("test", "NORMAL"): 2, ("test", "PNEUMONIA"): 3}
    assert manifest["patient_id"].is_unique
    for row in manifest.itertuples():
        assert row.path == f"{row.split}/{row.label}/{row.patient_id}_{row.label.lower()}.png"
        assert row.mask == f"masks/{row.path}"
        img, mask = np.asarray(Image.open(out / row.path)), np.asarray(Image.open(out / row.mask))
        assert img.shape == mask.shape
        assert (mask == S.MASK_LESION).any() == (row.label == "PNEUMONIA")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth"]  # no temporary folder left behind


def test_write_dataset_in_parallel_matches_serial(tmp_path):
    args = dict(n_train=4, n_val=2, n_test=2, seed=1, size=96, progress=False)
    serial = S.write_dataset(tmp_path / "one", workers=1, **args)
    parallel = S.write_dataset(tmp_path / "two", workers=2, **args)
    pd.testing.assert_frame_equal(serial, parallel)
    one, two = read_tree(tmp_path / "one"), read_tree(tmp_path / "two")
    assert one.keys() == two.keys() and all(np.array_equal(one[k], two[k]) for k in one)


def test_write_dataset_jpeg_and_refuses_to_overwrite(tmp_path):
    manifest = S.write_dataset(tmp_path / "j", n_train=2, n_val=0, n_test=2, size=96, image_format="jpeg",
                               progress=False)
    assert all(p.endswith(".jpeg") for p in manifest["path"]) and all(m.endswith(".png") for m in manifest["mask"])
    with Image.open(tmp_path / "j" / manifest["path"][0]) as im:
        assert im.format == "JPEG" and im.mode == "L"
    with pytest.raises(FileExistsError):
        S.write_dataset(tmp_path / "j", n_train=2, n_val=0, n_test=0, size=96, progress=False)
    with pytest.raises(ValueError):
        S.write_dataset(tmp_path / "k", n_train=2, n_val=0, n_test=0, image_format="tiff", progress=False)
