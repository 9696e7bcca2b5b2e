"""The suite's comparison on synthetic outcomes: 100 test images (50/50), 16 validation images, four experiments."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pneumo_ml import metrics
from pneumo_ml.comparison import BASELINE, BASELINE_WEIGHTS, FILES, Comparison, Outcome, _adjust, compare, write

Y_TEST = np.r_[np.zeros(50, int), np.ones(50, int)]
Y_VAL = np.r_[np.zeros(8, int), np.ones(8, int)]
# Separation d between class means of unit-variance scores gives AUC ≈ Φ(d/√2).
SEPARATION = {"ResNet50_Aug": 2.33, "ResNet50_NoAug": 2.09, "SmallCNN": 0.36, "IntensityBaseline": 0.5}
PATHS = np.array([f"test/{'PNEUMONIA' if y else 'NORMAL'}/{i}.png" for i, y in enumerate(Y_TEST)])


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
                   best_epoch=2, version=None if name == BASELINE else f"{seed + 1}", test_paths=PATHS,
                   weights_source=BASELINE_WEIGHTS if name == BASELINE else "random")


def failed(name: str = "ViT_Tiny", seed: int = 0) -> Outcome:
    return Outcome(name=name, seed=seed, run_id=f"run-{name}-{seed}", status="FAILED",
                   error="RuntimeError: CUDA out of memory")


def suite(seeds=(0,), baseline=False) -> list[Outcome]:
    # The good model's scores sit above 0.5 (like the study's ResNets), so the validation threshold matters.
    return [o for s in seeds for o in (outcome("SmallCNN", s), outcome("ResNet50_Aug", s, shift=1.5),
                                      outcome("ResNet50_NoAug", s))] + [failed()] + \
        ([outcome(BASELINE, s) for s in seeds] if baseline else [])


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
    assert re.search(r"SmallCNN vs ResNet50_Aug: AUC [\d.]+ vs [\d.]+, resolved \(adjusted p [<=] [\d.]+\)", md)
    assert re.search(r"ResNet50_NoAug vs ResNet50_Aug: .*the 100 test images cannot resolve this difference "
                     r"\(adjusted p = [\d.]+\)", md)
    assert "Test set: 100 images (50 NORMAL, 50 PNEUMONIA) from 100 patients; validation set: 16 images" in md
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
                           ("per_experiment.png", (1100, 1000)), ("dashboard.png", (1100, 1500))):
        with Image.open(tmp_path / "comparison" / name) as image:
            image.load()
            assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1], (name, image.size)
    page = (tmp_path / "comparison" / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3
    # the page shows the bars and the ROC once each; below them, what they do not show (not the whole dashboard)
    assert re.findall(r'<img alt="([\w.]+)"', page) == ["metrics_bar.png", "roc_overlay.png", "per_experiment.png"]
    titles = [ax.get_title() for ax in result.figures["per_experiment.png"].axes]
    assert any(t.endswith(": loss") for t in titles) and any("(test)" in t for t in titles)
    assert not any("ROC" in t or "Test accuracy" in t for t in titles)
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
    # each run's interval as its training logged it: bootstrapped with that run's own seed
    per_seed_low = [metrics.bootstrap_ci(o.test_targets, o.test_probs, 0.5, n_boot=200, seed=o.seed)["auc"][0]
                    for o in outcomes if o.name == "SmallCNN"]
    assert r.auc_ci_low == pytest.approx(np.mean(per_seed_low))
    assert len(c.tests) == 6 and sorted(c.tests.seed) == [0, 0, 1, 1, 2, 2]
    assert re.search(r"\| ResNet50_Aug \(reference\) \| [\d.]+ ± [\d.]+ \| [\d.]+ ± [\d.]+ \[", c.markdown)
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


@pytest.fixture(scope="module")
def with_baseline() -> Comparison:
    return compare(suite(baseline=True), reference="ResNet50_Aug", bootstrap=300, seed=0)


def test_the_baseline_is_a_row_with_its_own_tests_and_a_verdict_per_model(with_baseline, tmp_path):
    c = with_baseline
    base = row(c.table, BASELINE)
    assert base.n_seeds == 1 and base.weights_source == BASELINE_WEIGHTS and not base.is_reference
    assert base.auc_ci_low <= base.auc <= base.auc_ci_high
    against_reference = c.tests[(c.tests.experiment == BASELINE) & (c.tests.reference == "ResNet50_Aug")]
    assert len(against_reference) == 1 and against_reference.resolved.iloc[0]
    against_baseline = c.tests[c.tests.reference == BASELINE]
    assert set(against_baseline.experiment) == {"SmallCNN", "ResNet50_NoAug"}
    verdict = c.table.set_index("experiment").beats_baseline
    assert verdict["ResNet50_Aug"] == "yes" and verdict["ResNet50_NoAug"] == "yes" and verdict["SmallCNN"] == "no"
    assert "ResNet50_Aug beats the IntensityBaseline" in c.markdown
    assert "SmallCNN is not shown to beat the IntensityBaseline" in c.markdown
    write(c, tmp_path)
    csv = pd.read_csv(tmp_path / "results.csv")
    assert BASELINE in set(csv.experiment) and "weights_source" in csv.columns
    assert set(csv.weights_source.dropna()) == {"random", BASELINE_WEIGHTS}
    page = (tmp_path / "report.html").read_text()
    assert "Weights" in page and "Validation AUC (selection statistic)" in page and BASELINE_WEIGHTS in page


def test_resolved_means_a_holm_adjusted_p_value_over_the_whole_report(with_baseline):
    tests = with_baseline.tests
    family = np.concatenate([tests[c].to_numpy(float) for c in ("delong_p", "mcnemar_p", "tuned_mcnemar_p")])
    np.testing.assert_allclose(tests.delong_p_holm, metrics.holm(family)[:len(tests)])
    assert (tests.resolved == (tests.delong_p_holm < 0.05)).all()
    assert (tests.delong_p_holm >= tests.delong_p).all()
    two = pd.DataFrame({"delong_p": [0.03, 0.001], "mcnemar_p": [0.5, 0.5], "tuned_mcnemar_p": [0.5, 0.5]})
    adjusted = _adjust(two)  # six tests: 0.03 raw would have been "resolved" before the correction
    assert adjusted.delong_p_holm.tolist() == pytest.approx([0.15, 0.006])
    assert adjusted.resolved.tolist() == [False, True]
    assert "Holm-adjusted p < 0.05" in with_baseline.markdown


def test_the_same_test_images_guard_compares_paths():
    moved = outcome("SmallCNN")
    moved.test_paths = np.array([p.replace("test/", "other/") for p in PATHS])  # same labels, other images
    c = compare([moved, outcome("ResNet50_Aug", shift=1.5)], reference="ResNet50_Aug", bootstrap=100)
    assert c.tests.empty and "SmallCNN (seed 0) was not tested against ResNet50_Aug: its test images differ" \
        in c.markdown


def test_intervals_and_paired_tests_resample_patients():
    # Each patient contributes two images with the same score: twice the images, not twice the evidence.
    def doubled(o: Outcome, patients: bool) -> Outcome:
        return Outcome(o.name, 0, o.run_id, "FINISHED", threshold=o.threshold, val_targets=o.val_targets,
                       val_probs=o.val_probs, test_targets=np.repeat(o.test_targets, 2),
                       test_probs=np.repeat(o.test_probs, 2), test_paths=np.repeat(PATHS, 2),
                       test_groups=np.repeat(np.arange(100), 2) if patients else None)
    pair = [outcome("SmallCNN"), outcome("ResNet50_NoAug")]
    naive = compare([doubled(o, False) for o in pair], reference="ResNet50_NoAug", bootstrap=400)
    clustered = compare([doubled(o, True) for o in pair], reference="ResNet50_NoAug", bootstrap=400)
    single_ci = metrics.bootstrap_ci(Y_TEST, pair[0].test_probs, 0.5, n_boot=400)["auc"]
    single_p = metrics.delong_test(Y_TEST, pair[0].test_probs, pair[1].test_probs)["p_value"]
    width = {k: (lambda r: r.auc_ci_high - r.auc_ci_low)(row(c.table, "SmallCNN"))
             for k, c in (("naive", naive), ("clustered", clustered))}
    single = single_ci[1] - single_ci[0]
    assert width["naive"] < 0.8 * single and width["clustered"] == pytest.approx(single, rel=0.2)
    p = {k: c.tests.delong_p.iloc[0] for k, c in (("naive", naive), ("clustered", clustered))}
    assert p["clustered"] == pytest.approx(single_p, rel=0.05) and p["naive"] < single_p
    assert clustered.tests.n_patients.iloc[0] == 100 and "from 100 patients" in clustered.markdown


def test_a_zero_variance_delong_is_p_one_with_a_note():
    perfect = outcome("ResNet50_Aug")
    perfect.test_probs = np.where(Y_TEST == 1, 0.9, 0.1)
    flat = outcome("SmallCNN")
    flat.test_probs = np.full(100, 0.5)
    c = compare([flat, perfect], reference="ResNet50_Aug", bootstrap=0)
    t = c.tests.iloc[0]
    assert t.delong_p == 1.0 and not t.resolved and "zero estimated variance" in t.delong_note
    assert "zero estimated variance" in c.markdown


def test_one_colour_per_model_in_every_figure_and_one_loss_scale():
    from matplotlib.colors import to_hex

    outcomes = suite()
    outcomes[1].history = [dict(r, train_loss=3 * r["train_loss"], val_loss=3 * r["val_loss"])
                           for r in outcomes[1].history]
    figures = compare(outcomes, reference="ResNet50_Aug", bootstrap=50, seed=0).figures
    roc = {line.get_label().split(" (")[0]: to_hex(line.get_color())
           for line in figures["roc_overlay.png"].axes[0].lines if "(AUC" in line.get_label()}
    bars = [p for p in figures["metrics_bar.png"].axes[0].patches if to_hex(p.get_facecolor()) != "#999999"]  # keys
    finished = ["SmallCNN", "ResNet50_Aug", "ResNet50_NoAug"]
    per_metric = [bars[i * len(finished):(i + 1) * len(finished)] for i in range(3)]
    for patches in per_metric:  # the same model, the same colour, whatever the metric
        assert [to_hex(p.get_facecolor()) for p in patches] == [roc[n] for n in finished]
    assert len(set(roc.values())) == len(finished)
    dashboard = figures["dashboard.png"]
    assert {to_hex(line.get_color()) for line in dashboard.axes[-1].lines if "(AUC" in line.get_label()} == \
        set(roc.values())
    losses = [ax for ax in dashboard.axes if ax.get_title().endswith(": loss")]
    assert len(losses) == 3 and len({ax.get_ylim() for ax in losses}) == 1
