"""The two checks behind every prediction: 'is this a radiograph at all' and 'is it like the training images'."""
import base64

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLES
from not_xrays import NOT_XRAYS

from pneumo_ml import ood
from pneumo_ml.preprocess import decode_resized

REAL = sorted(SAMPLES.rglob("*.jpeg"))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_photos_scenes_and_text_are_not_radiographs_and_real_radiographs_are():
    for name, make in NOT_XRAYS.items():
        data = make()
        assert ood.not_a_radiograph(data, decode_resized(data, 64)) != "", name
    assert ood.not_a_radiograph(NOT_XRAYS["colour photo"](), np.zeros((8, 8))) == "it is in colour"
    for path in REAL:
        assert ood.not_a_radiograph(path, decode_resized(path, 64)) == "", path.name


def test_reference_is_the_ledoit_wolf_mahalanobis_distance():
    from sklearn.covariance import LedoitWolf
    rng = np.random.default_rng(0)
    train = rng.normal(size=(40, 60)) * np.linspace(0.1, 3, 60)  # fewer samples than features, as in training
    probe = rng.normal(size=(5, 60)) * 2
    reference = ood.Reference.fit(train)
    assert reference.distances(probe) == pytest.approx(np.sqrt(LedoitWolf().fit(train).mahalanobis(probe)), rel=1e-6)


def test_warning_sentences():
    assert ood.warning("", 0.7) == "" and ood.warning("", float("nan")) == ""
    assert ood.warning("it is in colour", 0.2).startswith(ood.NOT_RADIOGRAPH)
    unlike = ood.warning("", 1.5)
    assert ood.UNFAMILIAR in unlike and ood.NOT_RADIOGRAPH not in unlike


@pytest.fixture
def registered(trained_model, monkeypatch):
    uri, result = trained_model
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return result


def test_registered_pyfunc_flags_what_is_not_like_its_training_images(registered):
    from pneumo_ml.train import prepare_data
    model_uri = f"models:/pneumonia-classifier/{registered.version}"
    assert ood.STATS_FILE in {a.path.rsplit("/", 1)[-1] for a in
                              mlflow.MlflowClient().list_logged_model_artifacts(registered.model_uri.split("/")[-1],
                                                                                "artifacts")}
    model = mlflow.pyfunc.load_model(model_uri)
    test_paths = prepare_data(registered.config, progress=False).split.part("test")["path"].tolist()
    inputs = [make() for make in NOT_XRAYS.values()] + [p.read_bytes() for p in REAL] + \
        [open(p, "rb").read() for p in test_paths]
    out = model.predict(pd.DataFrame({"image": [b64(data) for data in inputs]}))
    n_bad, n_real = len(NOT_XRAYS), len(REAL)
    bad, real, test = out[:n_bad], out[n_bad:n_bad + n_real], out[n_bad + n_real:]
    assert (bad["warning"].str.startswith(ood.NOT_RADIOGRAPH)).all(), bad["warning"].tolist()
    assert not real["warning"].str.contains(ood.NOT_RADIOGRAPH).any(), real["warning"].tolist()
    # In distribution: the synthetic test images the model never saw are neither 'not a radiograph' nor,
    # nearly all of them, unlike its training images (the threshold sits above the validation images' 99th
    # percentile).
    assert (test["warning"] != "").mean() <= 0.2, test[["ood_score", "warning"]]
    assert not test["warning"].str.contains(ood.NOT_RADIOGRAPH).any()
    assert np.isfinite(out["ood_score"]).all() and test["ood_score"].median() < 1
    # The distance of a 2-epoch model trained on 16 images ranks the non-radiographs above most in-distribution
    # images, though not always past its flag threshold: the not-a-radiograph check above is what flags them.
    assert bad["ood_score"].median() > test["ood_score"].quantile(0.75)
    assert (out["model"] == f"pneumonia-classifier v{registered.version}").all()  # by registered name


def test_mlflow_models_evaluate_on_the_registered_model_and_a_labelled_folder(registered, tmp_path):
    from mlflow.tracking import MlflowClient

    from pneumo_ml.payload import SAMPLES as INSTALLED
    from pneumo_ml.payload import labelled_frame
    data = labelled_frame(INSTALLED)
    assert sorted(data["target"].value_counts().to_dict().items()) == [("NORMAL", 4), ("PNEUMONIA", 4)]
    with mlflow.start_run() as run:
        result = mlflow.models.evaluate(f"models:/pneumonia-classifier/{registered.version}", data, targets="target",
                                        model_type="classifier", predictions="label", model_config={"output": "label"},
                                        evaluator_config={"pos_label": "PNEUMONIA"})
    expected = mlflow.pyfunc.load_model(f"models:/pneumonia-classifier/{registered.version}").predict(data[["image"]])
    hits = (expected["label"] == data["target"]).mean()
    assert result.metrics["example_count"] == 8 and result.metrics["accuracy_score"] == pytest.approx(hits)
    assert "confusion_matrix" in result.artifacts
    assert "accuracy_score" in MlflowClient().get_run(run.info.run_id).data.metrics
