"""The suite on the real (shrunk) configuration: four children under one parent, the comparison, the aliases."""
import math

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import TINY
from pneumo_ml import tracking
from pneumo_ml.suite import load_suite, run_suite

PROTOCOL = {k: v for k, v in TINY.items()}
COMPARISON = ["comparison/results.md", "comparison/results.csv", "comparison/metrics_bar.png",
              "comparison/roc_overlay.png", "comparison/dashboard.png", "comparison/report.html"]


def suite_file(tmp_path, experiments, **promotion):
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({"experiments": experiments, "seeds": [7],
                                    "protocol": {**PROTOCOL, "pretrained": "false"},
                                    "promotion": {"metric": "val_auc", "margin": 0.0, **promotion}}))
    return path


def test_quick_suite_gives_four_children_comparison_and_aliases(tmp_path):
    result = run_suite(load_suite(suite_file(tmp_path, ["small_cnn", "resnet50_aug", "resnet50_noaug", "vit_tiny"])),
                       progress=False)
    client = MlflowClient()
    children = tracking.child_runs(result.run_id)
    assert sorted(r.data.tags["mlflow.runName"] for r in children) == \
        ["ResNet50_Aug", "ResNet50_NoAug", "SmallCNN", "ViT_Tiny"]
    assert all(r.info.status == "FINISHED" for r in children)
    split_digests = {r.data.tags["pneumo_ml.data_digest"] for r in children}
    assert len(split_digests) == 1  # one split for all
    files = {f.path for f in client.list_artifacts(result.run_id, "comparison")}
    assert set(COMPARISON) <= files
    html = open(client.download_artifacts(result.run_id, "comparison/report.html")).read()
    assert "Research use, not for diagnosis" in html and "data:image/png;base64," in html and "http" not in html
    versions = tracking.model_versions("pneumonia-classifier")
    assert len(versions) == 4 and {v.tags["experiment"] for v in versions} == \
        {"SmallCNN", "ResNet50_Aug", "ResNet50_NoAug", "ViT_Tiny"}
    aliases = tracking.model_aliases("pneumonia-classifier")
    best = max(versions, key=lambda v: (float(v.tags["val_auc"]), -float(v.tags["val_loss"]), -int(v.version)))
    assert aliases["champion"] == str(best.version)
    assert "challenger" in aliases and aliases["challenger"] != aliases["champion"]
    champion = client.get_model_version("pneumonia-classifier", aliases["champion"])
    assert champion.tags["promotion.decision"] == "promoted to @champion" and champion.tags["promotion.reason"]
    assert client.get_run(result.run_id).data.metrics["n_finished"] == 4


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
    children = {r.data.tags["mlflow.runName"]: r for r in tracking.child_runs(result.run_id)}
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
