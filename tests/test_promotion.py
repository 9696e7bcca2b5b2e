"""Promotion chooses on validation figures, respects the margin, and never looks at the test set."""
import math

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pneumo_ml import tracking
from pneumo_ml.errors import ConfigError
from pneumo_ml.promotion import Candidate, decide

NAME = "pneumonia-classifier"


def c(version, score, loss=0.5, experiment="X"):
    return Candidate(str(version), experiment, "", score, loss)


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


def register(client, run_id, **tags):
    if not client.search_registered_models(f"name = '{NAME}'"):
        client.create_registered_model(NAME)
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
    assert tags["promotion.decision"] == "promoted to @champion" and "by 0.0050 >= margin 0.001" in tags["promotion.reason"]


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
