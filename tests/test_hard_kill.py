"""A hard kill (kill -9) loses at most the epoch in progress: the run resumes from its per-epoch checkpoint to the
uninterrupted result, its decoder workers leave with it, and --resume never damages a run it refuses."""
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import TINY, cli_args
from mlflow.tracking import MlflowClient

from pneumo_ml import checkpoints, cli, config, tracking
from pneumo_ml.train import run_experiment

HARD = dict(TINY, epochs=3, n_train=16, gradcam_images=0)
PAUSE_EPOCH = 2  # killed at the start of the third epoch, two checkpoints in


def wait_for(predicate, proc=None, timeout=300):
    """Poll a condition (never a fixed sleep); fail if the process under test ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended early:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError("timed out waiting for a condition")


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def running(pids: set[int]) -> set[int]:
    from pneumo_ml.procs import alive
    return {pid for pid in pids if alive(pid)}


def checkpoint_epoch(path: Path) -> int:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)["epoch"] if path.is_file() else 0
    except Exception:  # replaced while being read: try again
        return 0


def resume_in_process(run_id: str):
    return CliRunner().invoke(cli.main, ["train", "--resume", run_id, "--quiet"])


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the decoder workers through /proc")
def test_kill_9_mid_training_loses_one_epoch_at_most_and_resumes_to_the_uninterrupted_result(tmp_path):
    marker = tmp_path / "paused"
    hook = Path(__file__).with_name("pause_at_epoch.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(hook), str(marker), str(PAUSE_EPOCH), "*", "train", "--model",
                             "small_cnn", *cli_args(HARD),
                             "--set", "workers=2", "--no-register", "--quiet"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(marker.exists, proc)
        client = MlflowClient()
        (run,) = client.search_runs([tracking.experiment_id()])
        run_id = run.info.run_id
        wait_for(lambda: checkpoint_epoch(checkpoints.local_path(run_id)) == PAUSE_EPOCH, proc)
        assert run.data.tags[tracking.PROCESS_TAG].split()[1] == str(proc.pid)

        refused = resume_in_process(run_id)  # its process is alive: refused, and the run is left alone
        assert refused.exit_code == 1 and "still running" in refused.output, refused.output
        assert client.get_run(run_id).info.status == "RUNNING"

        workers = descendants(proc.pid)
        assert len(workers) >= 2, "the decoder pool should be running (workers=2)"
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wait_for(lambda: not running(workers), timeout=120)  # the decoder workers leave with their parent
    assert client.get_run(run_id).info.status == "RUNNING"  # nobody closed it: a hard kill

    resumed = subprocess.run([sys.executable, "-m", "pneumo_ml", "train", "--resume", run_id, "--quiet"],
                             capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run_id, "val_loss")
    assert sorted(m.step for m in history) == [1, 2, 3]  # every epoch once: none lost, none repeated
    assert not checkpoints.local_path(run_id).exists()

    reference = run_experiment(config.load(config.experiment_path("small_cnn"), **HARD, register=False),
                               progress=False)
    for key in ("test_auc", "test_accuracy", "best_val_auc", "val_threshold"):
        a, b = tracking.run_metric(run, key), reference.metrics[key]
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-5), key
    losses = [m.value for m in sorted(client.get_metric_history(run_id, "train_loss"), key=lambda m: m.step)]
    assert losses == pytest.approx([row["train_loss"] for row in reference.history], rel=1e-4)

    again = resume_in_process(run_id)  # finished: refused, and the run stays as it is
    assert again.exit_code == 1 and "already finished" in again.output, again.output
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "pneumo_ml.error" not in run.data.tags


def test_a_resume_refused_for_its_checkpoint_leaves_the_run_as_it_was(tmp_path, tiny_config):
    result = run_experiment(tiny_config(register=False), progress=False)
    client = MlflowClient()
    client.set_terminated(result.run_id, "KILLED")  # as if interrupted, but with a damaged checkpoint
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"not a checkpoint")
    client.log_artifact(result.run_id, str(bad), "checkpoints")
    outcome = resume_in_process(result.run_id)
    assert outcome.exit_code == 1
    assert "cannot resume run" in outcome.output and "unreadable checkpoint" in outcome.output, outcome.output
    run = client.get_run(result.run_id)
    assert run.info.status == "KILLED" and "pneumo_ml.error" not in run.data.tags


def test_a_running_run_is_resumable_only_once_its_process_is_gone():
    """What `suite --resume` asks of each child, and `train --resume` of its run."""
    import socket

    from pneumo_ml import procs
    client = MlflowClient()
    run_id = client.create_run(tracking.experiment_id()).info.run_id
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = f"{socket.gethostname()} {int(ended.stdout)} 1"  # that pid has exited (and a reuse would start later)
    for token, resumable in ((procs.owner_token(), False), (gone, True), ("another-host 1 1", False)):
        client.set_tag(run_id, tracking.PROCESS_TAG, token)
        assert tracking.resumable(client.get_run(run_id)) is resumable, token
    client.set_tag(run_id, tracking.PROCESS_TAG, "another-host 1 1")
    with pytest.raises(tracking.TrackingError, match="RUNNING on host another-host; .* resume it there"):
        tracking.check_resumable(run_id)
