"""The suite's comparison on synthetic outcomes: 100 test images (50/50), 16 validation images, four experiments."""
from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from pneumo_ml import metrics
from pneumo_ml.comparison import FILES, Comparison, Outcome, compare, write

Y_TEST = np.r_[np.zeros(50, int), np.ones(50, int)]
Y_VAL = np.r_[np.zeros(8, int), np.ones(8, int)]
# Separation d between class means of unit-variance scores gives AUC ≈ Φ(d/√2).
SEPARATION = {"ResNet50_Aug": 2.33, "ResNet50_NoAug": 2.09, "SmallCNN": 0.36}


def outcome(name: str, seed: int = 0, shift: float = 0.0) -> Outcome:
    rng = np.random.default_rng([list(SEPARATION).index(name), seed])
    d = SEPARATION[name]
    probs = {}
    for split, y in (("val", Y_VAL), ("test", Y_TEST)):
        score = d * y + rng.normal(size=len(y)) - d / 2 + shift
        probs[split] = 1 / (1 + np.exp(-score))
    history = [dict(epoch=e, train_loss=1 / e, train_accuracy=0.6 + 0.1 * e, val_loss=1.1 / e,
                    val_accuracy=0.55 + 0.1 * e, val_auc=0.6 + 0.1 * e) for e in (1, 2, 3)]
    return Outcome(name=name, seed=seed, run_id=f"run-{name}-{seed}", status="FINISHED",
                   threshold=metrics.youden_threshold(Y_VAL, probs["val"]), val_targets=Y_VAL,
                   val_probs=probs["val"], test_targets=Y_TEST, test_probs=probs["test"], history=history,
                   best_epoch=2, version=f"{seed + 1}")


def failed(name: str = "ViT_Tiny", seed: int = 0) -> Outcome:
    return Outcome(name=name, seed=seed, run_id=f"run-{name}-{seed}", status="FAILED",
                   error="RuntimeError: CUDA out of memory")


def suite(seeds=(0,)) -> list[Outcome]:
    # The good model's scores sit above 0.5 (like the seed's ResNets), so the validation threshold matters.
    return [o for s in seeds for o in (outcome("SmallCNN", s), outcome("ResNet50_Aug", s, shift=1.5),
                                      outcome("ResNet50_NoAug", s))] + [failed()]


@pytest.fixture(scope="module")
def result() -> Comparison:
    return compare(suite(), reference="ResNet50_Aug", bootstrap=500, seed=0)


def row(table, name):
    return table.set_index("experiment").loc[name]


def test_table_rows_columns_and_values_match_binary_metrics(result):
    table = result.table
    assert list(table.experiment) == ["SmallCNN", "ResNet50_Aug", "ResNet50_NoAug", "ViT_Tiny"]
    for col in ("n_seeds", "accuracy", "accuracy_ci_low", "accuracy_ci_high", "tuned_accuracy", "auc",
                "sensitivity", "tuned_sensitivity", "specificity", "tuned_specificity_ci_high", "val_auc",
                "threshold", "version", "run_id", "status", "error"):
        assert col in table.columns, col
    for o in suite()[:3]:
        r = row(table, o.name)
        at_half = metrics.binary_metrics(o.test_targets, o.test_probs, 0.5)
        tuned = metrics.binary_metrics(o.test_targets, o.test_probs, o.threshold)
        for m in ("accuracy", "auc", "sensitivity", "specificity"):
            assert r[m] == pytest.approx(at_half[m]), (o.name, m)
        for m in ("accuracy", "sensitivity", "specificity"):
            assert r[f"tuned_{m}"] == pytest.approx(tuned[m]), (o.name, m)
        assert r.val_auc == pytest.approx(metrics.roc_auc(o.val_targets, o.val_probs))
        assert (r.threshold, r.n_seeds, r.version, r.run_id) == (o.threshold, 1, "1", o.run_id)
    good = row(table, "ResNet50_Aug")
    assert 0.9 < good.auc and row(table, "SmallCNN").auc < 0.75
    assert good.tuned_accuracy > good.accuracy + 0.1  # scores above 0.5: the validation threshold rescues them
    assert result.reference == "ResNet50_Aug" and good.is_reference


def test_intervals_contain_the_point_estimates(result):
    done = result.table[result.table.n_seeds > 0]
    for m in ("accuracy", "auc", "sensitivity", "specificity", "tuned_accuracy", "tuned_sensitivity",
              "tuned_specificity"):
        assert (done[f"{m}_ci_low"] <= done[m]).all() and (done[m] <= done[f"{m}_ci_high"]).all(), m
    for m in ("accuracy", "auc", "tuned_accuracy"):  # sensitivity at 0.5 of the shifted model is 1.0, a point
        assert (done[f"{m}_ci_high"] - done[f"{m}_ci_low"] > 0.02).all(), m


def test_bad_difference_is_resolved_and_similar_is_not(result):
    tests = result.tests.set_index("experiment")
    assert set(tests.index) == {"SmallCNN", "ResNet50_NoAug"}
    bad, similar = tests.loc["SmallCNN"], tests.loc["ResNet50_NoAug"]
    good = suite()[1]
    d = metrics.delong_test(Y_TEST, suite()[0].test_probs, good.test_probs)
    assert bad.auc_diff == pytest.approx(d["diff"]) and bad.delong_p == pytest.approx(d["p_value"])
    assert bad.resolved and bad.delong_p < 0.05 and bad.auc_diff_high < 0
    assert not similar.resolved and similar.delong_p >= 0.05 and similar.auc_diff_low < 0 < similar.auc_diff_high
    assert bad.n_test == 100 and bad.only_experiment_right + bad.only_reference_right > 0
    assert 0 <= similar.tuned_mcnemar_p <= 1
    md = result.markdown
    assert re.search(r"SmallCNN vs ResNet50_Aug: AUC [\d.]+ vs [\d.]+, resolved \(p [<=] [\d.]+\)", md)
    assert re.search(r"ResNet50_NoAug vs ResNet50_Aug: .*the 100 test images cannot resolve this difference "
                     r"\(p = 0\.\d+\)", md)
    assert "Test set: 100 images (50 NORMAL, 50 PNEUMONIA); validation set: 16 images" in md
    assert "Research use, not for diagnosis." in md
    assert "| Model | Accuracy | AUC | Sensitivity | Specificity |" in md
    assert re.search(r"\| ResNet50_Aug \(reference\) \| 0\.\d\d \[0\.\d\d, [01]\.\d\d\] \|", md)


def test_failed_outcome_is_listed_and_excluded(result):
    vit = row(result.table, "ViT_Tiny")
    assert vit.status == "FAILED" and "CUDA out of memory" in vit.error and vit.n_seeds == 0
    assert [o.name for o in result.failed] == ["ViT_Tiny"]
    assert "ViT_Tiny" not in set(result.tests.experiment)
    legend = [t.get_text() for t in result.figures["roc_overlay.png"].axes[0].get_legend().get_texts()]
    assert len(legend) == 3 and not any("ViT" in t for t in legend)
    assert "ViT_Tiny (seed 0, run run-ViT_Tiny-0): FAILED — RuntimeError: CUDA out of memory" in result.markdown


def test_write_produces_every_file(result, tmp_path):
    paths = write(result, tmp_path / "comparison")
    assert [p.name for p in paths] == list(FILES) and all(p.is_file() for p in paths)
    for name, min_size in (("metrics_bar.png", (500, 350)), ("roc_overlay.png", (500, 450)),
                           ("dashboard.png", (1100, 1500))):
        with Image.open(tmp_path / "comparison" / name) as image:
            image.load()
            assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1], (name, image.size)
    page = (tmp_path / "comparison" / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3
    assert "<table" in page and "ResNet50_NoAug" in page and "Research use, not for diagnosis." in page
    assert "CUDA out of memory" in page and "<style>" in page
    assert not re.search(r"https?://|<script|<link", page)
    csv = (tmp_path / "comparison" / "results.csv").read_text()
    assert csv.startswith("experiment,") and "ViT_Tiny" in csv
    assert (tmp_path / "comparison" / "tests.csv").read_text().count("\n") == 3


def test_several_seeds_give_mean_and_std():
    outcomes = suite(seeds=(0, 1, 2))
    c = compare(outcomes, reference="ResNet50_Aug", bootstrap=200)
    r = row(c.table, "SmallCNN")
    per_seed = [metrics.binary_metrics(o.test_targets, o.test_probs)["auc"] for o in outcomes
                if o.name == "SmallCNN"]
    assert r.n_seeds == 3 and r.seeds == "0, 1, 2" and r.version == "1, 2, 3"
    assert r.auc == pytest.approx(np.mean(per_seed)) and r.auc_std == pytest.approx(np.std(per_seed, ddof=1))
    per_seed_low = [metrics.bootstrap_ci(o.test_targets, o.test_probs, 0.5, n_boot=200, seed=0)["auc"][0]
                    for o in outcomes if o.name == "SmallCNN"]
    assert r.auc_ci_low == pytest.approx(np.mean(per_seed_low))
    assert len(c.tests) == 6 and sorted(c.tests.seed) == [0, 0, 1, 1, 2, 2]
    assert re.search(r"\| SmallCNN \| 0\.\d\d ± 0\.\d\d \[", c.markdown)
    assert "mean of the per-seed bootstrap bounds" in c.markdown


def test_reference_falls_back_when_the_chosen_one_failed():
    c = compare(suite(), reference="ViT_Tiny", bootstrap=100)
    assert c.reference == "SmallCNN"
    assert "The requested reference ViT_Tiny failed; falling back to SmallCNN" in c.markdown
    assert set(c.tests.experiment) == {"ResNet50_Aug", "ResNet50_NoAug"}
    assert (c.tests.reference == "SmallCNN").all()
    assert compare(suite(), reference="Missing", bootstrap=100).reference == "SmallCNN"


def test_nothing_finished_still_writes_a_report(tmp_path):
    c = compare([failed(), failed("SmallCNN")], reference="SmallCNN", bootstrap=100)
    assert c.reference == "" and c.tests.empty and len(c.failed) == 2
    assert all(p.is_file() for p in write(c, tmp_path))
