"""torchrun --nproc_per_node 2 on CPU (gloo) gives the one-process result and exactly one MLflow run."""
import os
import subprocess
import sys

import pytest
from conftest import TINY, cli_args
from mlflow.tracking import MlflowClient

from pneumo_ml import config, tracking
from pneumo_ml.train import run_experiment

# vit_tiny has no BatchNorm and no dropout, so two ranks with half batches each compute exactly the gradient of
# one process with the whole batch; augmentation is off because its random draws follow the batch layout.
ARGS = dict(TINY, model="vit_tiny", pretrained="false", aug="false", epochs=2, n_train=16, batch_size=8)


def test_two_processes_match_one_and_log_one_run():
    args = cli_args(ARGS)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "pneumo_ml", "train", *args, "--no-register", "--quiet"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert run.stdout.count("ViT_Tiny: run") == 1  # rank 0 alone reports
    client = MlflowClient()
    runs = client.search_runs([tracking.experiment_id()])
    assert len(runs) == 1
    ddp = runs[0]
    assert ddp.data.params["world_size"] == "2" and ddp.info.status == "FINISHED"

    single = run_experiment(config.load(config.experiment_path("vit_tiny"), **ARGS, register=False), progress=False)
    ddp_losses = sorted(client.get_metric_history(ddp.info.run_id, "train_loss"), key=lambda m: m.step)
    assert [m.value for m in ddp_losses] == pytest.approx([r["train_loss"] for r in single.history], rel=1e-4)
    ddp_val = sorted(client.get_metric_history(ddp.info.run_id, "val_loss"), key=lambda m: m.step)
    assert [m.value for m in ddp_val] == pytest.approx([r["val_loss"] for r in single.history], rel=1e-4)
    for key in ("best_val_auc", "test_auc", "test_accuracy", "test_brier"):
        assert tracking.run_metric(ddp, key) == pytest.approx(single.metrics[key], abs=1e-4), key
    split = client.download_artifacts(ddp.info.run_id, "predictions/test_predictions.csv")
    import pandas as pd
    assert len(pd.read_csv(split)) == ARGS["n_test"]  # every test image once, gathered from both ranks
