"""A model is trusted only as far as it was logged: its card is checked field by field, its files against the
SHA-256 manifest training recorded; outputs are checked to be writable before any work."""
import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner
from conftest import SAMPLES
from mlflow.tracking import MlflowClient

from pneumo_ml import cli, tracking
from pneumo_ml.errors import TrackingError
from pneumo_ml.train import run_experiment
from pneumo_ml.vocabulary import CLASSES

JPEG = str(next(SAMPLES.rglob("*.jpeg")))


@pytest.fixture
def model_folder(trained_model, tmp_path, monkeypatch) -> Path:
    """A local copy of the session's logged model (a local folder carries no integrity record)."""
    uri, result = trained_model
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=result.model_uri, dst_path=str(tmp_path / "m")))


@pytest.mark.parametrize("field, value", [("threshold", float("nan")), ("threshold", 1.5), ("image_size", 0),
                                          ("image_size", -5), ("image_size", 40000), ("mean", [float("nan")]),
                                          ("std", [0.0]), ("architecture", "resnet9000")])
def test_a_tampered_model_card_is_refused_naming_the_field(model_folder, field, value):
    card_path = model_folder / "artifacts" / "model_card.json"
    card = json.loads(card_path.read_text())
    card[field] = value
    card_path.write_text(json.dumps(card))
    with pytest.raises(TrackingError, match=f"model_card.json: field '{field}'"):
        tracking.load_predictor(str(model_folder))


def test_predict_refuses_a_nan_threshold_in_one_line(model_folder):
    card_path = model_folder / "artifacts" / "model_card.json"
    card_path.write_text(json.dumps({**json.loads(card_path.read_text()), "threshold": float("nan")}))
    outcome = CliRunner().invoke(cli.main, ["predict", "--model-uri", str(model_folder), JPEG])
    assert outcome.exit_code == 1
    assert "field 'threshold' = nan is not a finite number in [0, 1]" in outcome.output


def test_outputs_are_checked_before_any_work():
    # /proc takes no new files, whoever runs the test; the model URI is never reached
    outcome = CliRunner().invoke(cli.main, ["predict", "--model-uri", "models:/none@nothing", JPEG,
                                            "--out", "/proc/preds.csv"])
    assert outcome.exit_code == 1 and "--out /proc/preds.csv" in outcome.output and "none" not in outcome.output
    outcome = CliRunner().invoke(cli.main, ["explain", "--model-uri", "models:/none@nothing", JPEG,
                                            "--out", "/proc/cams"])
    assert outcome.exit_code == 1 and "--out /proc/cams" in outcome.output


def test_a_model_file_changed_after_training_is_refused_before_it_runs(tiny_config, tmp_path):
    result = run_experiment(tiny_config(gradcam_images=0), progress=False)
    client = MlflowClient()
    version = client.get_model_version("pneumonia-classifier", result.version)
    assert version.tags["model_sha256"] == client.get_run(result.run_id).data.tags[tracking.INTEGRITY_TAG]
    uri = f"models:/pneumonia-classifier/{result.version}"
    assert tracking.load_predictor(uri).card.architecture == "small_cnn"  # untouched: loads

    stored = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path / "probe")))
    assert (stored / "pyfunc_model.py").is_file()
    location = Path(client.get_logged_model(result.model_uri.split("/")[-1]).artifact_location.removeprefix("file://"))
    marker = tmp_path / "ran"
    with open(location / "pyfunc_model.py", "a") as f:  # what someone who can write the artifact store could do
        f.write(f"\nopen({str(marker)!r}, 'w').write('code in the artifact ran')\n")
    with pytest.raises(TrackingError, match="file pyfunc_model.py differs from what training logged"):
        tracking.load_predictor(uri)
    outcome = CliRunner().invoke(cli.main, ["predict", "--model-uri", uri, JPEG])
    assert outcome.exit_code == 1 and "refusing to load it" in outcome.output
    assert not marker.exists()


def test_the_logged_model_carries_the_modules_it_imports_and_runs_on_them_alone(model_folder, tmp_path):
    code = model_folder / "code" / "pneumo_ml"
    carried = {p.stem for p in code.glob("*.py")}
    assert {"pyfunc_model", "serving", "predictor", "explain", "vocabulary"} <= carried
    assert not carried & {"cli", "bench", "demo", "audit", "train", "suite", "comparison"}, carried
    # a fresh interpreter that loads the model imports pneumo_ml from the model's own copy: nothing is missing
    script = (
        "import base64, sys, mlflow, pandas as pd\n"
        f"model = mlflow.pyfunc.load_model({str(model_folder)!r})\n"
        "import pneumo_ml\n"
        f"assert pneumo_ml.__file__.startswith({str(code)!r}), pneumo_ml.__file__\n"
        f"image = base64.b64encode(open({JPEG!r}, 'rb').read()).decode('ascii')\n"
        "out = model.predict(pd.DataFrame({'image': [image]}), params={'gradcam': True})\n"
        "print(out.label[0], len(out.gradcam_png[0]))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    label, png_chars = done.stdout.split()[-2:]
    assert label in CLASSES and int(png_chars) > 1000
