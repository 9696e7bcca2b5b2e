"""The procedural radiograph generator: determinism, what separates the classes (local lesions, never global
statistics), exact lesion masks, the difficulty knob, and the data set writer."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.ndimage import binary_dilation

from pneumo_ml import synthetic as S
from pneumo_ml.baseline import cross_validated_auc, feature_matrix

SMALL = 128  # renders at this size keep the test file fast


def auc(scores, labels):
    """Probability that a random positive scores above a random negative (ties count half)."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    pos, neg = scores[labels], scores[~labels]
    return ((pos[:, None] > neg).sum() + 0.5 * (pos[:, None] == neg).sum()) / (len(pos) * len(neg))


@pytest.fixture(scope="module")
def small_set():
    """60 cases as write_dataset draws them (one index per case, alternating classes), with their masks."""
    cases = [S.render_case(7, index, index % 2 == 1, size=SMALL) for index in range(60)]
    return [img for img, _ in cases], [mask for _, mask in cases], np.arange(60) % 2


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
        assert 0.08 < (mask > 0).mean() < 0.6  # two lung fields, a sizeable part of the image


def test_global_intensity_statistics_carry_no_label(small_set):
    """The IntensityBaseline's straight line, cross-validated, stays near chance."""
    images, _, labels = small_set
    assert cross_validated_auc(feature_matrix(images), labels) <= 0.65


def test_a_lesion_local_statistic_separates_the_classes():
    """Where the PNEUMONIA twin's lesion is, the PNEUMONIA image is brighter than the surrounding lung; the
    NORMAL twin (same patient, same nuisance, as much added density elsewhere) is not."""
    contrast, labels = [], []
    for index in range(24):
        _, mask = S.render_case(8, index, True, size=SMALL)
        lesion = mask == S.MASK_LESION
        ring = binary_dilation(lesion, iterations=6) & ~lesion & (mask > 0)
        for pneumonia in (False, True):
            img, _ = S.render_case(8, index, pneumonia, size=SMALL)
            contrast.append(img[lesion].mean() - img[ring].mean())
            labels.append(pneumonia)
    assert auc(contrast, labels) >= 0.85


@pytest.mark.parametrize("index", range(4))
def test_mask_marks_the_pixels_the_lesion_visibly_changes(index):
    sick, mask, info = S.render_case(1, index, True, size=256, return_info=True)
    bare, bare_mask = S.render_case(1, index, True, size=256, opacity=False)
    assert info["pattern"] in S.PATTERNS and info["shadow"] is None
    assert not ((bare_mask > 0) & (mask == 0)).any()  # the lung fields are anatomy: the lesion only adds to them
    lesion, change = mask == S.MASK_LESION, np.abs(sick.astype(int) - bare)
    assert lesion.sum() > 20
    # outside the mask the lesion changes the film by less than one grey level: at most a rounding flip ...
    assert change[~lesion].max() <= 1 and (change[~lesion] > 0).mean() < 0.01
    assert (change[lesion] > 0).mean() > 0.9  # ... and inside it nearly every pixel changes
    assert (sick[lesion].astype(int) - bare[lesion]).mean() > 0


@pytest.mark.parametrize("index", range(4))
def test_normal_twin_adds_as_much_brightness_without_a_lesion(index):
    well, well_mask, well_info = S.render_case(2, index, False, size=SMALL, return_info=True)
    _, _, sick_info = S.render_case(2, index, True, size=SMALL, return_info=True)
    bare, _ = S.render_case(2, index, False, size=SMALL, opacity=False)
    assert well_info["pattern"] is None and set(well_info["shadow"].split("+")) <= set(S.SHADOWS)
    assert not (well_mask == S.MASK_LESION).any()
    assert not np.array_equal(well, bare)  # the matched opacity is there ...
    assert sick_info["added"] > 0
    assert well_info["added"] == pytest.approx(sick_info["added"], rel=0.05)  # ... and weighs what the lesion does


def test_bare_render_ignores_difficulty_and_label():
    easy, _ = S.render_case(2, 5, False, size=SMALL, difficulty=0.0, opacity=False)
    hard, _ = S.render_case(2, 5, True, size=SMALL, difficulty=1.0, opacity=False)
    assert np.array_equal(easy, hard)


def test_size_and_exposure_carry_no_class_signal(small_set):
    """Frame size and brightness outside the lungs are nuisance, drawn alike for both classes."""
    images, masks, labels = small_set
    features = np.array([(img.shape[0], img.shape[1], img.shape[0] / img.shape[1], img[mask == 0].mean())
                         for img, mask in zip(images, masks)])
    for name, column in zip(("height", "width", "aspect", "mean outside lungs"), features.T):
        assert abs(auc(column, labels) - 0.5) < 0.2, name


def test_every_lesion_pattern_and_shadow_occurs():
    patterns = {S.render_case(0, index, True, size=96, return_info=True)[2]["pattern"] for index in range(30)}
    shadows = {kind for index in range(30)
               for kind in S.render_case(0, index, False, size=96, return_info=True)[2]["shadow"].split("+")}
    assert patterns == set(S.PATTERNS) and shadows == set(S.SHADOWS)


def lesion_contrast_and_area(index, difficulty):
    sick, mask = S.render_case(4, index, True, size=SMALL, difficulty=difficulty)
    bare, _ = S.render_case(4, index, True, size=SMALL, difficulty=difficulty, opacity=False)
    lesion = mask == S.MASK_LESION
    return sick[lesion].astype(float).mean() - bare[lesion].mean(), lesion.sum() / max(1, (mask > 0).sum())


def test_difficulty_lowers_lesion_conspicuity_and_size():
    measured = {d: np.mean([lesion_contrast_and_area(i, d) for i in range(6)], axis=0) for d in (0.0, 0.5, 1.0)}
    contrast = {d: m[0] for d, m in measured.items()}
    area = {d: m[1] for d, m in measured.items()}
    assert contrast[0.0] > contrast[0.5] > contrast[1.0] > 0
    assert area[0.0] > area[0.5] > area[1.0] > 0


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
