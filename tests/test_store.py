"""The default SQLite store survives parallel first use, says how to repair a half-migrated file, and fails at
once where SQLite cannot open it."""
import os
import sqlite3
import subprocess
import sys

from mlflow.tracking import MlflowClient

from pneumo_ml import store, tracking

FAST = ["--model", "small_cnn", "--epochs", "1", "--image-size", "32", "--batch-size", "8", "--n-train", "16",
        "--n-val", "8", "--n-test", "8", "--device", "cpu", "--quiet", "--set", "workers=1", "--set", "bootstrap=10",
        "--set", "gradcam_images=0"]


def pneumo_ml(*args, cwd, env=None, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "pneumo_ml", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, **kwargs)


def default_store_env() -> dict:
    """MLflow's default tracking URI: sqlite:///mlflow.db in the working folder."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def test_four_first_runs_at_once_in_an_empty_folder_all_finish(tmp_path):
    env = default_store_env()
    procs = [pneumo_ml("train", *FAST, "--seed", str(seed), cwd=tmp_path, env=env) for seed in range(4)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("pneumonia-detection")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(int(v.version) for v in client.search_model_versions("name = 'pneumonia-classifier'")) == [1, 2, 3, 4]
    later = subprocess.run([sys.executable, "-m", "pneumo_ml", "promote"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
    assert later.returncode == 0, later.stderr


def test_a_half_migrated_store_is_named_with_its_repair(tmp_path):
    env = default_store_env()
    tracking.experiment_id()  # creates and migrates the store (the same file as the default URI in this folder)
    with sqlite3.connect(tmp_path / "mlflow.db") as db:  # what a migration killed half-way leaves behind
        db.execute("CREATE TABLE _alembic_tmp_experiments AS SELECT * FROM experiments")
    broken = subprocess.run([sys.executable, "-m", "pneumo_ml", "promote"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert broken.returncode == 1
    lines = broken.stderr.strip().splitlines()
    assert len(lines) == 1 and "_alembic_tmp_experiments" in lines[0] and "pneumo-ml store repair" in lines[0]
    repaired = subprocess.run([sys.executable, "-m", "pneumo_ml", "store", "repair"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
    assert repaired.returncode == 0 and "dropped _alembic_tmp_experiments" in repaired.stdout, repaired.stderr
    assert not store.leftover_tables(tmp_path / "mlflow.db")
    assert MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_experiment_by_name("pneumonia-detection")


def test_an_unwritable_working_folder_fails_at_once_naming_it():
    # /proc refuses new files to every user, root included (a chmod-ed folder would not stop root).
    proc = pneumo_ml("train", *FAST, cwd="/proc", env=default_store_env())
    out, _ = proc.communicate(timeout=120)  # MLflow alone retries for about two minutes, then "unable to open"
    assert proc.returncode == 1
    last = out.strip().splitlines()[-1]
    assert last.startswith("error: tracking store /proc/mlflow.db") and "not writable" in last, out[-2000:]
    assert "Traceback" not in out
