"""Promotion chooses on validation figures, respects the margin, and never looks at the test set."""
import math

import pytest
from mlflow.tracking import MlflowClient

from pneumo_ml import tracking
from pneumo_ml.errors import ConfigError
from pneumo_ml.promotion import (
    IMAGE_SIZE_TAG,
    SPLIT_DIGEST_TAG,
    SPLIT_SIZES_TAG,
    VAL_PREVALENCE_TAG,
    Candidate,
    comparability_tags,
    decide,
    split_of,
)

NAME = "pneumonia-classifier"
SPLIT = comparability_tags("abc123", 224, {"train": 200, "val": 16, "test": 100}, 0.5)
SMALL_VAL = comparability_tags("def456", 224, {"train": 200, "val": 4, "test": 100}, 0.5)


def c(version, score, loss=0.5, experiment="X", split=SPLIT):
    return Candidate(str(version), experiment, "", score, loss, split_of(split))


def test_decide_margin_ties_and_refusals():
    cands = [c(1, 0.90), c(2, 0.93), c(3, 0.93, loss=0.2)]
    first = decide(cands, None, metric="val_auc")
    assert first.promote and first.winner.version == "3" and first.runner_up.version == "2"  # tie -> lower loss
    kept = decide(cands, "2", metric="val_auc", margin=0.01)
    assert not kept.promote and kept.winner.version == "2" and "does not beat" in kept.reason
    moved = decide([c(1, 0.90), c(2, 0.95)], "1", metric="val_auc", margin=0.01)
    assert moved.promote and moved.winner.version == "2" and "beats champion v1" in moved.reason
    lower_is_better = decide([c(1, 0.4), c(2, 0.3)], None, metric="val_loss")
    assert lower_is_better.winner.version == "2"
    same = decide([c(1, 0.9)], "1", metric="val_auc")
    assert not same.promote and "already champion" in same.reason
    with pytest.raises(ConfigError, match="validation metrics only"):
        decide(cands, None, metric="test_auc")
    assert decide([c(1, math.nan)], None, metric="val_auc").winner is None


def test_only_versions_on_the_champions_split_compete():
    decision = decide([c(1, 0.77), c(2, 1.00, split=SMALL_VAL), c(3, 0.80)], "1", metric="val_auc")
    assert decision.promote and decision.winner.version == "3"
    assert ("left out as not comparable with champion v1: v2 (another split digest, split sizes 200/4/100, "
            "not 200/16/100)") in decision.reason
    kept = decide([c(1, 0.77), c(2, 1.00, split=SMALL_VAL)], "1", metric="val_auc")
    assert not kept.promote and kept.winner.version == "1" and kept.runner_up is None
    assert "comparable" in kept.reason and "v2" in kept.reason and "\n" not in kept.reason
    image_size = comparability_tags("abc123", 64, {"train": 200, "val": 16, "test": 100}, 0.5)
    assert "image size 64, not 224" in decide([c(1, 0.7), c(2, 0.9, split=image_size)], "1", metric="val_auc").reason


def test_without_a_champion_the_newest_split_is_the_field():
    decision = decide([c(1, 0.95), c(2, 0.80, split=SMALL_VAL), c(3, 0.70, split=SMALL_VAL)], None, metric="val_auc")
    assert decision.promote and decision.winner.version == "2"
    assert "no current champion: candidates are those of the newest split (v3's)" in decision.reason
    assert "v1 (another split digest" in decision.reason


def test_an_untagged_champion_is_kept_and_untagged_versions_never_compete():
    untagged = Candidate("1", "X", "", 0.5, 0.5, None)
    decision = decide([untagged, c(2, 0.99)], "1", metric="val_auc")
    assert not decision.promote and "champion v1 has no split tags, so no version is comparable" in decision.reason
    alone = decide([untagged, c(2, 0.6)], None, metric="val_auc")
    assert alone.winner.version == "2" and "v1 (no split tags)" in alone.reason


def test_a_suite_promotes_the_best_version_of_the_experiment_with_the_best_mean():
    # The example: A wins on one lucky seed (0.97), B on the mean (0.85 vs 0.69).
    versions = [c(1, 0.97), c(2, 0.56), c(3, 0.53), c(4, 0.84), c(5, 0.86), c(6, 0.86, loss=0.4), c(7, 0.99)]
    suite = {"1": "A", "2": "A", "3": "A", "4": "B", "5": "B", "6": "B"}  # v7: another suite's, not a contender
    decision = decide(versions, None, metric="val_auc", experiments=suite)
    assert decision.winner.version == "6" and decision.winner.experiment == "B"
    assert decision.runner_up.version == "1" and "B has the best mean over its 3 version(s) (0.8533)" in decision.reason


def register(client, run_id, **tags):
    if not client.search_registered_models(f"name = '{NAME}'"):
        client.create_registered_model(NAME)
    tags = {**SPLIT, **tags}
    return str(client.create_model_version(NAME, f"runs:/{run_id}/model", run_id=run_id,
                                       tags={k: str(v) for k, v in tags.items()}).version)


def test_promote_in_the_real_registry_ignores_test_figures_and_respects_the_margin():
    client = MlflowClient()
    run_id = client.create_run(tracking.experiment_id()).info.run_id
    # v1 wins on validation; v2 wins on test: the test set must not matter.
    v1 = register(client, run_id, experiment="ViT_Tiny", val_auc=0.95, val_loss=0.3, test_auc=0.80)
    v2 = register(client, run_id, experiment="ResNet50_Aug", val_auc=0.90, val_loss=0.4, test_auc=0.99)
    decision = tracking.promote(NAME, metric="val_auc")
    assert decision.promote and tracking.alias_version(NAME, "champion") == v1
    assert tracking.alias_version(NAME, "challenger") == v2
    # A newcomer that beats the champion by less than the margin does not take the alias.
    v3 = register(client, run_id, experiment="SmallCNN", val_auc=0.955, val_loss=0.2)
    assert not tracking.promote(NAME, metric="val_auc", margin=0.01).promote
    assert tracking.alias_version(NAME, "champion") == v1
    assert tracking.alias_version(NAME, "challenger") == v3
    assert tracking.promote(NAME, metric="val_auc", margin=0.001).promote
    assert tracking.alias_version(NAME, "champion") == v3
    tags = client.get_model_version(NAME, v3).tags
    assert tags["promotion.decision"] == "promoted to @champion"
    assert "by 0.0050 >= margin 0.001" in tags["promotion.reason"]


def test_promote_cli(tmp_path):
    from click.testing import CliRunner

    from pneumo_ml.cli import main
    client = MlflowClient()
    empty = CliRunner().invoke(main, ["promote"])
    assert empty.exit_code == 1 and "no registered versions" in empty.output
    run_id = client.create_run(tracking.experiment_id()).info.run_id
    register(client, run_id, experiment="SmallCNN", val_auc=0.8, val_loss=0.5)
    v = register(client, run_id, experiment="ViT_Tiny", val_auc=0.9, val_loss=0.5)
    result = CliRunner().invoke(main, ["promote", "--metric", "val_auc"])
    assert result.exit_code == 0 and f"@champion -> v{v}" in result.output


def test_a_version_validated_on_another_split_never_displaces_the_champion():
    """The issue's reproduction, on tiny real runs: v2 has the better validation AUC on 2 + 2 images."""
    from click.testing import CliRunner
    from conftest import TINY

    from pneumo_ml import config
    from pneumo_ml.cli import main
    from pneumo_ml.train import run_experiment

    def train(seed, **overrides):
        cfg = config.load(config.experiment_path("small_cnn"), **{**TINY, "gradcam_images": 0, "seed": seed,
                                                                   **overrides})
        return run_experiment(cfg, progress=False)

    def promote():
        result = CliRunner().invoke(main, ["promote", "--margin", "0.01"])
        assert result.exit_code == 0, result.output
        return result.output

    v1 = train(4)  # seeds picked so the scenario holds on the embedded data: asserted below, not assumed
    assert "@champion -> v1" in promote()
    v2 = train(8, n_val=4)
    assert v2.metrics["best_val_auc"] > v1.metrics["best_val_auc"] + 0.01  # the figure that used to win
    out = promote()
    assert tracking.alias_version(NAME, "champion") == "1"
    assert "not comparable with champion v1: v2 (another split digest, split sizes 16/4/12, not 16/8/12)" in out
    v3 = train(8)
    assert v3.metrics["best_val_auc"] > v1.metrics["best_val_auc"] + 0.01
    out = promote()
    assert tracking.alias_version(NAME, "champion") == "3" and "beats champion v1" in out and "v2 (" in out
    tags = MlflowClient().get_model_version(NAME, "3").tags
    assert (tags[SPLIT_SIZES_TAG], tags[IMAGE_SIZE_TAG], tags[VAL_PREVALENCE_TAG]) == ("16/8/12", "32", "0.5000")
    assert tags[SPLIT_DIGEST_TAG] == MlflowClient().get_model_version(NAME, "1").tags[SPLIT_DIGEST_TAG]
