"""The suite on the real (shrunk) configuration: four children under one parent, the comparison, the aliases."""
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import TINY
from mlflow.tracking import MlflowClient

from pneumo_ml import tracking
from pneumo_ml.promotion import SPLIT_DIGEST_TAG
from pneumo_ml.suite import load_suite, run_suite, summary

PROTOCOL = {k: v for k, v in TINY.items()}
COMPARISON = ["comparison/results.md", "comparison/results.csv", "comparison/metrics_bar.png",
              "comparison/roc_overlay.png", "comparison/per_experiment.png", "comparison/dashboard.png",
              "comparison/report.html"]


def suite_file(tmp_path, experiments, seeds=(7,), protocol=None, ensemble=False, **promotion):
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({"experiments": experiments, "seeds": list(seeds), "ensemble": ensemble,
                                    "protocol": {**PROTOCOL, "pretrained": "false", **(protocol or {})},
                                    "promotion": {"metric": "val_auc", "margin": 0.0, **promotion}}))
    return path


def test_quick_suite_gives_four_children_an_ensemble_comparison_and_aliases(tmp_path):
    result = run_suite(load_suite(suite_file(tmp_path, ["small_cnn", "resnet50_aug", "resnet50_noaug", "vit_tiny"],
                                             ensemble=True)), progress=False)
    client = MlflowClient()
    children = tracking.child_runs(result.run_id)
    assert sorted(r.data.tags[tracking.EXPERIMENT_TAG] for r in children) == \
        ["Ensemble", "ResNet50_Aug", "ResNet50_NoAug", "SmallCNN", "ViT_Tiny"]
    assert all(r.info.status == "FINISHED" for r in children)
    # run names that tell runs apart: model, size, epochs, seed; the parent says quick or not, and when
    assert sorted(r.info.run_name for r in children) == ["Ensemble-4models-s7", "ResNet50_Aug-32px-e1-s7",
                                                         "ResNet50_NoAug-32px-e1-s7", "SmallCNN-32px-e1-s7",
                                                         "ViT_Tiny-32px-e1-s7"]
    assert re.fullmatch(r"suite-\d{4}-\d\d-\d\d-\d{6}", client.get_run(result.run_id).info.run_name)
    split_digests = {r.data.tags["pneumo_ml.data_digest"] for r in children}
    assert len(split_digests) == 1  # one split for all
    files = {f.path for f in client.list_artifacts(result.run_id, "comparison")}
    assert set(COMPARISON) <= files
    html = open(client.download_artifacts(result.run_id, "comparison/report.html")).read()
    assert "Research use, not for diagnosis" in html and "data:image/png;base64," in html and "http" not in html
    versions = tracking.model_versions("pneumonia-classifier")
    assert len(versions) == 5 and {v.tags["experiment"] for v in versions} == \
        {"SmallCNN", "ResNet50_Aug", "ResNet50_NoAug", "ViT_Tiny", "Ensemble"}
    ensemble = next(v for v in versions if v.tags["experiment"] == "Ensemble")
    members = {str(v.version) for v in versions if v.tags["experiment"] != "Ensemble"}
    assert set(ensemble.tags["ensemble_members"].split(",")) == members
    ensemble_run = next(r for r in children if r.data.tags[tracking.EXPERIMENT_TAG] == "Ensemble")
    assert ensemble_run.data.params["model"] == "ensemble" and "test_auc" in ensemble_run.data.metrics
    aliases = tracking.model_aliases("pneumonia-classifier")
    best = max(versions, key=lambda v: (float(v.tags["val_auc"]), -float(v.tags["val_loss"]), -int(v.version)))
    assert aliases["champion"] == str(best.version)
    assert "challenger" in aliases and aliases["challenger"] != aliases["champion"]
    champion = client.get_model_version("pneumonia-classifier", aliases["champion"])
    assert champion.tags["promotion.decision"] == "promoted to @champion" and champion.tags["promotion.reason"]
    assert client.get_run(result.run_id).data.metrics["n_finished"] == 5
    table = pd.read_csv(client.download_artifacts(result.run_id, "comparison/results.csv"))
    assert {"IntensityBaseline", "Ensemble"} <= set(table.experiment) and "weights_source" in table.columns
    assert set(table.set_index("experiment").weights_source.drop(["IntensityBaseline", "Ensemble"])) == {"random"}
    # the ensemble's test probabilities are its members' mean, read back from what they logged
    logged = {r.data.tags[tracking.EXPERIMENT_TAG]: pd.read_csv(client.download_artifacts(
        r.info.run_id, "predictions/test_predictions.csv")) for r in children}
    mean = np.mean([logged[n].probability for n in ("SmallCNN", "ResNet50_Aug", "ResNet50_NoAug", "ViT_Tiny")], 0)
    np.testing.assert_allclose(logged["Ensemble"].probability, mean, rtol=1e-6)
    auc = table.set_index("experiment").loc["Ensemble", "auc"]
    assert auc == pytest.approx(ensemble_run.data.metrics["test_auc"])
    for run in children:  # the page's figures and intervals are those each run logged
        row = table.set_index("experiment").loc[run.data.tags[tracking.EXPERIMENT_TAG]]
        for key in ("test_auc_ci_low", "test_accuracy_ci_high", "test_tuned_sensitivity_ci_low"):
            column = key.removeprefix("test_")
            assert row[column] == pytest.approx(tracking.run_metric(run, key), abs=1e-9), (run.info.run_name, key)
    # the command line ends with the page, the aliases it moved and how to look at it
    text = summary(result)
    assert f"@champion -> v{aliases['champion']} (was unset)" in text
    assert f"@challenger -> v{aliases['challenger']} (was unset)" in text
    page = re.search(r"^report: (.+)$", text, re.M).group(1)
    assert Path(page).is_file() and "Research use, not for diagnosis" in Path(page).read_text()
    assert "mlflow ui --backend-store-uri sqlite:///" in text
    # the page stands alone: what was run, what the aliases became, where each child run is
    for needle in ("What was run", "Data: synthetic (16/8/12", "Run: the full protocol", "32 px, 1 epoch(s)",
                   "SmallCNN: random", "Machine: ", f"@champion: v{aliases['champion']} (was unset)",
                   *(f"Run: {r.data.tags[tracking.EXPERIMENT_TAG]}: run {r.info.run_id}" for r in children)):
        assert needle in html, needle
    assert len({v.tags[SPLIT_DIGEST_TAG] for v in versions}) == 1  # one split: every version comparable


def test_two_seeds_promote_the_experiment_with_the_best_mean(tmp_path):
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "small_cnn_fast.yaml").write_text(
        "# SmallCNN with a ten times larger learning rate\nname: SmallCNN_FastLR\nmodel: small_cnn\nlr: 0.01\n")
    suite = load_suite(suite_file(tmp_path, ["small_cnn", "small_cnn_fast"], seeds=[1, 2],
                                  protocol={"gradcam_images": 0}))
    result = run_suite(suite, progress=False)
    finished = [o for o in result.outcomes if o.status == "FINISHED"]
    assert sorted((o.name, o.seed) for o in finished) == [("SmallCNN", 1), ("SmallCNN", 2),
                                                          ("SmallCNN_FastLR", 1), ("SmallCNN_FastLR", 2)]
    client = MlflowClient()
    tags = {o.version: client.get_model_version("pneumonia-classifier", o.version).tags for o in finished}
    by_experiment = {}
    for o in finished:
        by_experiment.setdefault(o.name, []).append(
            (float(tags[o.version]["val_auc"]), float(tags[o.version]["val_loss"]), o.version))
    means = {name: (np.mean([v[0] for v in vs]), np.mean([v[1] for v in vs])) for name, vs in by_experiment.items()}
    winner = min(means, key=lambda n: (-means[n][0], means[n][1]))
    best_of_winner = min(by_experiment[winner], key=lambda v: (-v[0], v[1], int(v[2])))[2]
    assert tracking.model_aliases("pneumonia-classifier")["champion"] == best_of_winner
    assert result.comparison.reference == winner and f"{winner} has the best mean" in result.decision.reason
    table = pd.read_csv(client.download_artifacts(result.run_id, "comparison/results.csv")).set_index("experiment")
    assert list(table.index) == ["SmallCNN", "SmallCNN_FastLR", "IntensityBaseline"]
    assert (table.n_seeds == 2).all() and table.loc[winner, "val_auc"] == pytest.approx(means[winner][0])
    assert "weights_source" in table.columns and pd.isna(table.loc["IntensityBaseline", "beats_baseline"])
    md = open(client.download_artifacts(result.run_id, "comparison/results.md")).read()
    assert re.search(r"\| SmallCNN_FastLR[^|]* \| [\d.]+ ± [\d.]+ \[", md)


def test_a_failing_child_leaves_the_others_and_the_report_intact(tmp_path, capsys):
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "broken.yaml").write_text(
        "# a run that cannot start: its weights file does not exist\nname: Broken\nmodel: small_cnn\n"
        "weights: no-such-weights.pt\n")
    result = run_suite(load_suite(suite_file(tmp_path, ["small_cnn", "broken"])), progress=True)
    printed = capsys.readouterr().err
    assert "[1/2] SmallCNN" in printed and "[2/2] Broken" in printed  # a header per child
    assert "epoch 1/1: train loss " in printed and ", val AUC " in printed  # a line per finished epoch
    statuses = {o.name: o.status for o in result.outcomes}
    assert statuses == {"SmallCNN": "FINISHED", "Broken": "FAILED"}
    broken = next(o for o in result.outcomes if o.name == "Broken")
    assert "no-such-weights.pt: weights file not found" in broken.error
    children = {r.data.tags[tracking.EXPERIMENT_TAG]: r for r in tracking.child_runs(result.run_id)}
    assert children["Broken"].info.status == "FAILED"
    assert "weights file not found" in children["Broken"].data.tags["pneumo_ml.error"]
    md = open(MlflowClient().download_artifacts(result.run_id, "comparison/results.md")).read()
    assert "Broken" in md and "FAILED" in md and "SmallCNN" in md
    assert tracking.model_aliases("pneumonia-classifier")["champion"] == result.outcomes[0].version


def test_suite_config_errors_are_caught_before_any_work(tmp_path):
    from pneumo_ml.errors import ConfigError
    bad = tmp_path / "s.yaml"
    bad.write_text("experiments: [small_cnn]\nprotocl: {}\n")
    with pytest.raises(ConfigError, match="unknown suite key"):
        load_suite(bad)
    bad.write_text("experiments: [small_cnn]\npromotion: {metric: test_auc}\n")
    with pytest.raises(ConfigError, match="validation metrics only"):
        load_suite(bad)
    bad.write_text("experiments: [no_such_experiment]\n")
    with pytest.raises(ConfigError, match="no experiment config 'no_such_experiment'"):
        load_suite(bad)
    assert load_suite("experiments/suite.yaml" if False else __import__("pneumo_ml.config").config.experiment_path(
        "suite")).experiments == ("small_cnn", "resnet50_aug", "resnet50_noaug", "vit_tiny")
