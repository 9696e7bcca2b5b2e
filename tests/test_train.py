"""One experiment end to end on the real (shrunk) configuration, against a real SQLite tracking store."""
import base64

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLES
from mlflow.tracking import MlflowClient
from PIL import Image

from pneumo_ml import tracking
from pneumo_ml.train import run_experiment

CONTRACT_METRICS = ["test_accuracy", "test_auc", "test_sensitivity", "test_specificity", "test_f1"]
EPOCH_METRICS = ["train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_auc"]
ARTIFACTS = ["plots/confusion_matrix.png", "plots/roc_curve.png", "plots/training_curves.png", "plots/gradcam.png",
             "plots/pr_curve.png", "plots/calibration.png", "predictions/test_predictions.csv", "data/split.csv",
             "config.yaml"]


def artifact_paths(client, run_id, path=None):
    out = []
    for item in client.list_artifacts(run_id, path):
        out += artifact_paths(client, run_id, item.path) if item.is_dir else [item.path]
    return out


@pytest.mark.parametrize("model", ["small_cnn", "resnet50", "vit_tiny", "densenet121"])
def test_one_run_logs_what_the_contract_lists(tiny_config, model):
    cfg = tiny_config(model=model, name=f"tiny-{model}", epochs=2 if model == "small_cnn" else 1,
                      pretrained="false", register=model == "small_cnn")
    result = run_experiment(cfg, progress=False)
    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "pneumonia-detection"
    params = run.data.params
    assert params["model"] == model and params["weights_source"] == "random" and params["epochs"] == str(cfg.epochs)
    for name in EPOCH_METRICS:
        history = client.get_metric_history(result.run_id, name)
        assert sorted(m.step for m in history) == list(range(1, cfg.epochs + 1)), name
    for name in CONTRACT_METRICS:
        value = run.data.metrics[name]
        assert 0 <= value <= 1
        if name != "test_auc" or not np.isnan(value):
            assert run.data.metrics[f"{name}_ci_low"] <= value + 1e-9 <= run.data.metrics[f"{name}_ci_high"] + 2e-9
    assert 0 <= run.data.metrics["at_val_threshold/threshold"] <= 1
    # the UI's first (ungrouped) section holds the headline figures; everything else sits in a section
    ungrouped = {k for k in run.data.metrics if "/" not in k}
    assert {k.removesuffix("_ci_low").removesuffix("_ci_high") for k in ungrouped if not k.startswith("cam_")} <= \
        set(tracking.HEADLINE_METRICS)
    assert {"at_val_threshold/sensitivity", "at_val_threshold/sensitivity_ci_low", "best/val_auc", "best/epoch",
            "test/brier", "data/n_skipped", "time/epoch_s"} <= set(run.data.metrics)
    files = artifact_paths(client, result.run_id)
    for name in ARTIFACTS:
        assert name in files, name
        if name.startswith("plots/"):
            assert name.replace(".png", ".svg") in files, name  # a vector copy beside every plot
            with Image.open(client.download_artifacts(result.run_id, name)) as png:
                assert round(png.info["dpi"][0]) == 200, name
    overlays = [f for f in files if f.startswith("gradcam/") and f.endswith(".png")]
    assert overlays and all(f.replace(".png", ".svg") in files for f in overlays)
    split = pd.read_csv(client.download_artifacts(result.run_id, "data/split.csv"))
    assert split.groupby("split").size().to_dict() == {"test": 12, "train": 16, "val": 8}
    predictions = pd.read_csv(client.download_artifacts(result.run_id, "predictions/test_predictions.csv"))
    assert len(predictions) == 12 and predictions["probability"].between(0, 1).all()
    assert run.inputs.dataset_inputs and run.inputs.dataset_inputs[0].dataset.digest
    if model == "small_cnn":
        assert "cam_pointing_game" in run.data.metrics and "cam_pointing_game_uniform" in run.data.metrics
        version = client.get_model_version("pneumonia-classifier", result.version)
        assert version.tags["run_id"] == result.run_id and version.tags["experiment"] == f"tiny-{model}"
        assert version.tags["val_auc"] == f"{run.data.metrics['best/val_auc']:.4f}"  # rounded for reading
        m = run.data.metrics
        assert f"Test AUC {m['test_auc']:.3f} [{m['test_auc_ci_low']:.3f}, {m['test_auc_ci_high']:.3f}]" in \
            version.description and "weights: random" in version.description.lower()
        assert "research use, not for diagnosis" in version.description.lower()
        described = client.get_registered_model("pneumonia-classifier").description
        assert "NORMAL vs PNEUMONIA" in described and "@champion" in described and "not for diagnosis" in described


def test_registered_pyfunc_reloads_and_matches_the_in_process_model(trained_model, monkeypatch):
    uri, result = trained_model
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model_uri = f"models:/pneumonia-classifier/{result.version}"
    pyfunc = mlflow.pyfunc.load_model(model_uri)
    jpegs = sorted(SAMPLES.rglob("*.jpeg"))[:3]
    frame = pd.DataFrame({"image": [base64.b64encode(p.read_bytes()).decode() for p in jpegs]})
    out = pyfunc.predict(frame)
    assert list(out.columns) == ["label", "probability", "confidence", "threshold", "model", "ood_score",
                                 "warning"]
    assert out["label"].isin(["NORMAL", "PNEUMONIA"]).all()
    np.testing.assert_allclose(out["threshold"], result.threshold)
    # The same image through the in-process path: read_xray -> resize -> BatchTransform -> model.
    predictor = tracking.load_predictor(model_uri)
    direct = predictor.probabilities(np.stack([predictor.decode(p) for p in jpegs]))
    np.testing.assert_allclose(out["probability"].to_numpy(), direct, rtol=1e-5, atol=1e-6)
    expected = np.where(out["label"] == "PNEUMONIA", out["probability"], 1 - out["probability"])
    np.testing.assert_allclose(out["confidence"], expected)
    assert ((out["probability"] >= out["threshold"]) == (out["label"] == "PNEUMONIA")).all()
    raw = pyfunc.predict(pd.DataFrame({"image": [jpegs[0].read_bytes()]}))
    assert raw["probability"][0] == pytest.approx(out["probability"][0])


def test_model_is_logged_with_weights_signature_example_and_explicit_requirements(trained_model, monkeypatch):
    uri, result = trained_model
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    from mlflow.models import get_model_info
    info = get_model_info(result.model_uri)
    assert info.signature.inputs.input_names() == ["image"]
    assert {p.name for p in info.signature.params.params} == {"threshold", "gradcam", "errors", "output"}
    local = mlflow.artifacts.download_artifacts(result.model_uri)
    from pathlib import Path
    files = {p.relative_to(local).as_posix() for p in Path(local).rglob("*") if p.is_file()}
    assert "artifacts/weights.pt" in files and "artifacts/model_card.json" in files
    assert any(f.endswith("python_model.py") or f.endswith("pyfunc_model.py") for f in files)
    requirements = (Path(local) / "requirements.txt").read_text()
    assert "torch==" in requirements and "pillow==" in requirements
    import torch
    state = torch.load(Path(local) / "artifacts" / "weights.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def _kermany_with_broken_files(root):
    import shutil
    for split, count in (("train", 3), ("val", 1), ("test", 1)):
        for label in ("NORMAL", "PNEUMONIA"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i, sample in enumerate(sorted((SAMPLES / label).glob("*.jpeg"))[:count]):
                shutil.copy(sample, folder / f"{split}-{i}-{sample.name}")
    (root / "train" / "NORMAL" / "IM-9001-0001.jpeg").write_bytes(b"")
    (root / "train" / "PNEUMONIA" / "person9002_bacteria_1.jpeg").write_text("not an image")
    return root


def test_unreadable_training_files_stop_the_run_before_any_epoch_listing_them_all(tiny_config, tmp_path):
    from pneumo_ml.errors import DataError
    root = _kermany_with_broken_files(tmp_path / "data")
    cfg = tiny_config(data=str(root), n_train=0, n_val=0, n_test=0, register=False)
    with pytest.raises(DataError) as info:
        run_experiment(cfg, progress=False)
    message = str(info.value)
    assert "2 unreadable image(s)" in message and "--skip-bad" in message
    assert "IM-9001-0001.jpeg: empty file" in message and "person9002_bacteria_1.jpeg: not an image" in message
    assert not MlflowClient().search_experiments(filter_string="name = 'pneumonia-detection'") or \
        not MlflowClient().search_runs([tracking.experiment_id()])  # no run was started


def test_skip_bad_skips_counts_and_logs_the_unreadable_files(tiny_config, tmp_path):
    root = _kermany_with_broken_files(tmp_path / "data")
    result = run_experiment(tiny_config(data=str(root), n_train=0, n_val=0, n_test=0, register=False,
                                        skip_bad=True, allow_leaks=True),  # its splits reuse the same samples
                            progress=False)
    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.data.metrics["data/n_skipped"] == 2
    skipped = pd.read_csv(client.download_artifacts(result.run_id, "data/skipped.csv"))
    assert sorted(skipped["path"].map(lambda p: p.rsplit("/", 1)[-1])) == ["IM-9001-0001.jpeg",
                                                                            "person9002_bacteria_1.jpeg"]
    split = pd.read_csv(client.download_artifacts(result.run_id, "data/split.csv"))
    assert len(split) == 10 and not split["path"].isin(skipped["path"]).any()


def test_logged_test_probabilities_are_what_the_served_model_returns(trained_model, monkeypatch):
    """Final evaluation runs in float32 through the serving preprocessing, so the threshold chosen on
    validation applies to exactly the probabilities the pyfunc serves."""
    uri, result = trained_model
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    logged = pd.read_csv(MlflowClient().download_artifacts(result.run_id, "predictions/test_predictions.csv"))
    pyfunc = mlflow.pyfunc.load_model(f"models:/pneumonia-classifier/{result.version}")
    images = [base64.b64encode(open(path, "rb").read()).decode() for path in logged["path"]]
    served = pyfunc.predict(pd.DataFrame({"image": images}))
    np.testing.assert_allclose(served["probability"].to_numpy(), logged["probability"].to_numpy(), rtol=0, atol=1e-6)
    labels = np.where(logged["probability"] >= result.threshold, "PNEUMONIA", "NORMAL")
    assert (served["label"].to_numpy() == labels).all()
    assert (logged["predicted_at_val_threshold"].to_numpy() == labels).all()
