"""`mlflow run . -P ...` on the MLproject itself: the entry point joins the run MLflow opened."""
import os
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parent.parent


def test_mlflow_run_main_entry_point_joins_the_run_and_logs_the_contract():
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    params = dict(model="small_cnn", aug="true", epochs=1, batch_size=8, image_size=32, n_train=16, n_val=8,
                  n_test=12, device="cpu", lr=0.001)
    cmd = [sys.executable, "-m", "mlflow", "run", str(ROOT), "--env-manager", "local",
           "--experiment-name", "pneumonia-detection"]
    for key, value in params.items():
        cmd += ["-P", f"{key}={value}"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("pneumonia-detection").experiment_id])
    assert len(runs) == 1, "the entry point must join the run mlflow opened, not start another"
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "SmallCNN-32px-e1-s42"  # not the random name mlflow run gave it
    assert run.data.params["aug"] == "true" and run.data.params["lr"] == "0.001"  # as mlflow logged them
    assert run.data.params["weights_source"] == "random" and run.data.params["name"] == "SmallCNN"
    assert {"test_auc", "test_accuracy_ci_low", "at_val_threshold/threshold"} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "plots", "data", "predictions", "gradcam"} <= artifacts
    assert client.get_model_version("pneumonia-classifier", "1").run_id == run.info.run_id
