"""`pneumo-ml ensemble`: members of different input sizes combined, evaluated on their split, logged as one
pyfunc, registered, served (real JPEGs, Grad-CAM) and read by predict/explain; members of different splits
refused. Real training (shrunk), a real SQLite store, nothing mocked."""
import base64
import io
import re

import mlflow
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import SAMPLES, TINY
from mlflow.tracking import MlflowClient
from PIL import Image

from pneumo_ml import cli, config, tracking
from pneumo_ml.train import run_experiment

MODEL = "pneumonia-classifier"
JPEGS = sorted(SAMPLES.glob("*/*.jpeg"))[:4]


@pytest.fixture(scope="module")
def ensemble_store(tmp_path_factory, session_dir):
    """Two small_cnn members at 32 and 48 px on one split (versions 1, 2), and their ensemble (version 3)."""
    store = tmp_path_factory.mktemp("ensemble")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
        mp.setenv("PNEUMO_ML_CACHE", str(session_dir / "cache"))
        mp.chdir(store)
        for size, seed in ((32, 1), (48, 2)):
            run_experiment(config.load(config.experiment_path("small_cnn"),
                                       **{**TINY, "image_size": size, "seed": seed, "gradcam_images": 0}),
                           progress=False)
        out = CliRunner().invoke(cli.main, ["ensemble", "--model-uri", f"models:/{MODEL}/1", "--model-uri",
                                            f"models:/{MODEL}/2", "--bootstrap", "50"])
    assert out.exit_code == 0, out.output
    return store, out.output


@pytest.fixture
def in_store(ensemble_store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{ensemble_store[0] / 'mlflow.db'}")
    return ensemble_store


def b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def test_the_command_logs_evaluates_and_registers_the_mean_of_its_members(in_store):
    _, output = in_store
    client = MlflowClient()
    version = client.get_model_version(MODEL, "3")
    assert version.tags["ensemble_members"] == "1,2" and version.tags["experiment"] == "Ensemble"
    assert float(version.tags["val_auc"]) >= 0 and version.tags["image_size"] == "48"
    run = client.get_run(version.run_id)
    assert run.data.params["model"] == "ensemble" and "test_auc_ci_low" in run.data.metrics
    assert "registered version 3" in output and "research use, not for diagnosis" in output
    members = [pd.read_csv(client.download_artifacts(client.get_model_version(MODEL, v).run_id,
                                                     "predictions/test_predictions.csv")) for v in ("1", "2")]
    mine = pd.read_csv(client.download_artifacts(run.info.run_id, "predictions/test_predictions.csv"))
    np.testing.assert_allclose(mine.probability, (members[0].probability + members[1].probability) / 2, rtol=1e-6)
    assert list(mine.path) == list(members[0].path)
    assert {"plots/roc_curve.png", "plots/confusion_matrix.png"} <= {
        f.path for f in client.list_artifacts(run.info.run_id, "plots")}


def test_the_registered_ensemble_serves_real_jpegs_with_gradcam_decoding_each_once(in_store):
    ensemble = mlflow.pyfunc.load_model(f"models:/{MODEL}/3")
    frame = pd.DataFrame({"image": [b64(p) for p in JPEGS]})
    out = ensemble.predict(frame, params={"gradcam": True})
    assert list(out.model) == [f"{MODEL} v3"] * len(JPEGS)
    assert set(out.label) <= {"NORMAL", "PNEUMONIA"} and out.warning.map(lambda w: "not a radiograph" not in w).all()
    heat = Image.open(io.BytesIO(base64.b64decode(out.gradcam_png[0])))
    assert heat.size[0] > 48
    members = [mlflow.pyfunc.load_model(f"models:/{MODEL}/{v}").predict(frame).probability for v in ("1", "2")]
    # each member sees the image through its own card's size (here resized from the one 48 px decode)
    np.testing.assert_allclose(out.probability, (members[0] + members[1]) / 2, atol=0.02)


def test_predict_and_explain_accept_the_ensemble(in_store, tmp_path):
    runner = CliRunner()
    out = runner.invoke(cli.main, ["predict", "--model-uri", f"models:/{MODEL}/3", *map(str, JPEGS), "--quiet"])
    assert out.exit_code == 0, out.output
    table = pd.read_csv(io.StringIO(out.stdout))
    assert len(table) == len(JPEGS) and set(table.model) == {f"{MODEL} v3"}
    shown = runner.invoke(cli.main, ["explain", "--model-uri", f"models:/{MODEL}/3", str(JPEGS[0]),
                                     "--out", str(tmp_path / "cam")])
    assert shown.exit_code == 0, shown.output
    assert len(list((tmp_path / "cam").glob("*.png"))) == 1


def test_members_of_different_splits_are_refused_naming_them(in_store, tmp_path):
    store, _ = in_store
    run_experiment(config.load(config.experiment_path("small_cnn"),
                               **{**TINY, "n_test": 10, "gradcam_images": 0}), progress=False)  # version 4
    out = CliRunner().invoke(cli.main, ["ensemble", "--model-uri", f"models:/{MODEL}/1", "--model-uri",
                                        f"models:/{MODEL}/4", "--no-register"])
    assert out.exit_code == 1
    assert re.search(f"{MODEL} v1 and {MODEL} v4 were evaluated on different (val|test) splits", out.output)
    assert "Traceback" not in out.output
    assert len(tracking.model_versions(MODEL)) == 4  # nothing registered


def test_an_ensemble_needs_two_distinct_members(in_store):
    out = CliRunner().invoke(cli.main, ["ensemble", "--model-uri", f"models:/{MODEL}/1"])
    assert out.exit_code == 1 and "at least two members" in out.output


def test_the_demo_predicts_with_the_ensemble(in_store):
    from pneumo_ml import demo
    shown, label, details, gradcam, error = demo.predict_file(str(JPEGS[0]), f"models:/{MODEL}/3")
    assert error == "" and label.splitlines()[-1] in ("## NORMAL", "## PNEUMONIA")
    assert "v3" in details and "ensemble" in details and "research use, not for diagnosis" in details.lower()
    assert gradcam.ndim == 3 and gradcam.shape[0] == shown.shape[0]


def test_mlflow_models_serve_serves_the_ensemble_over_rest(in_store, tmp_path):
    import requests
    from servers import model_server
    store, _ = in_store
    rows = [[b64(p)] for p in JPEGS[:2]]
    with model_server(f"models:/{MODEL}/3", f"sqlite:///{store / 'mlflow.db'}", tmp_path) as server:
        answer = requests.post(f"{server.base}/invocations", timeout=120, json={
            "dataframe_split": {"columns": ["image"], "data": rows}, "params": {"gradcam": True}})
        bad = requests.post(f"{server.base}/invocations", timeout=60, json={
            "dataframe_split": {"columns": ["image"], "data": [["not base64!!"]]}})
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert [p["model"] for p in predictions] == [f"{MODEL} v3"] * 2 and all(p["gradcam_png"] for p in predictions)
    assert bad.status_code == 400 and "row 0: not valid base64" in bad.json()["message"]
