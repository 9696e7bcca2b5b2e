"""Interrupted runs end KILLED with their last epoch's checkpoint, and resume to the uninterrupted result."""
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import TINY, cli_args
from mlflow.tracking import MlflowClient

from pneumo_ml import config, tracking
from pneumo_ml.train import run_experiment

SLOW = dict(TINY, epochs=4, image_size=32, n_train=24, batch_size=8)
PAUSE_SCRIPT = Path(__file__).resolve().parent / "pause_at_epoch.py"


@pytest.fixture(autouse=True)
def no_strays():
    """Whatever happens in a test, none of its processes outlive it."""
    yield
    for proc in STARTED:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    STARTED.clear()


STARTED: list[subprocess.Popen] = []


def start(*args) -> subprocess.Popen:
    return _spawn([sys.executable, "-m", "pneumo_ml", *args])


def start_held(marker: Path, epoch: int, run_name: str, *args) -> subprocess.Popen:
    """The command, held once run `run_name` has logged `epoch` epochs (tests/pause_at_epoch.py)."""
    return _spawn([sys.executable, str(PAUSE_SCRIPT), str(marker), str(epoch), run_name, *args])


def _spawn(command: list[str]) -> subprocess.Popen:
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    STARTED.append(proc)
    return proc


def wait_for(predicate, proc, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(f"process ended early:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError("timed out")


def run_named(name: str) -> str:
    client = MlflowClient()
    runs = client.search_runs([tracking.experiment_id()],
                              filter_string=f"tags.`{tracking.EXPERIMENT_TAG}` = '{name}'")
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0].info.run_id


@pytest.mark.parametrize("sig", [signal.SIGTERM])
def test_killed_training_resumes_to_the_uninterrupted_result(sig, tmp_path):
    held = tmp_path / "held"
    proc = start_held(held, 2, "*", "train", "--model", "small_cnn", *cli_args(SLOW), "--no-register", "--quiet")
    wait_for(held.exists, proc)
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    client = MlflowClient()
    run_id = run_named("SmallCNN")
    killed = client.get_run(run_id)
    assert killed.info.status == "KILLED", output
    assert "checkpoints/last.pt" in {a.path for a in client.list_artifacts(run_id, "checkpoints")}
    assert max(m.step for m in client.get_metric_history(run_id, "val_loss")) == 2

    resumed = start("train", "--resume", run_id, "--quiet")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run_id, "train_loss")
    assert sorted({m.step for m in history}) == list(range(1, SLOW["epochs"] + 1))

    reference = run_experiment(config.load(config.experiment_path("small_cnn"), **SLOW, register=False),
                               progress=False)
    for key in ("test_auc", "test_accuracy", "best_val_auc", "val_threshold"):
        a, b = tracking.run_metric(run, key), reference.metrics[key]
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-5), key
    final_losses = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert final_losses[-1] == pytest.approx(reference.history[-1]["train_loss"], rel=1e-4)


def test_nan_loss_fails_the_run_and_registers_nothing():
    cfg = config.load(config.experiment_path("small_cnn"), **TINY, lr=1e30)
    from pneumo_ml.engine import NonFiniteLossError
    with pytest.raises(NonFiniteLossError, match="the training loss became"):
        run_experiment(cfg, progress=False)
    client = MlflowClient()
    run = client.search_runs([tracking.experiment_id()])[0]
    assert run.info.status == "FAILED" and "NonFiniteLossError" in run.data.tags["pneumo_ml.error"]
    assert not client.search_registered_models()


def test_interrupted_suite_keeps_finished_children_and_resumes_the_killed_one(tmp_path):
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "slow.yaml").write_text("# a longer run to interrupt\nname: Slow\nmodel: small_cnn\n"
                                                         "pretrained: 'false'\nepochs: 5\n")
    protocol = {k: v for k, v in SLOW.items() if k != "epochs"}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump({"experiments": ["small_cnn", "slow"], "protocol": protocol}))
    held = tmp_path / "held"
    proc = start_held(held, 2, "Slow", "suite", "--config", str(tmp_path / "suite.yaml"), "--quiet")
    wait_for(held.exists, proc)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    client = MlflowClient()
    slow_id = run_named("Slow")
    parent_id = client.get_run(slow_id).data.tags["mlflow.parentRunId"]
    assert client.get_run(parent_id).info.status == "KILLED"
    children = {r.data.tags[tracking.EXPERIMENT_TAG]: r for r in tracking.child_runs(parent_id)}
    assert children["SmallCNN"].info.status == "FINISHED" and children["Slow"].info.status == "KILLED"
    first_small = children["SmallCNN"].info.run_id

    resumed = start("suite", "--resume", parent_id, "--quiet")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    children = {r.data.tags[tracking.EXPERIMENT_TAG]: r for r in tracking.child_runs(parent_id)}
    assert len(children) == 2 and children["SmallCNN"].info.run_id == first_small
    assert children["Slow"].info.run_id == slow_id and children["Slow"].info.status == "FINISHED"
    steps = sorted({m.step for m in client.get_metric_history(slow_id, "val_loss")})
    assert steps == list(range(1, 6))
    assert client.get_run(parent_id).info.status == "FINISHED"
    assert "comparison/report.html" in {a.path for a in client.list_artifacts(parent_id, "comparison")}
