"""Concurrency against a real tracking server.

A team's `mlflow server` (SQLite backend, artifacts proxied through the server) receives four trainings started
at the same time as separate `pneumo-ml train` processes, then two `pneumo-ml promote` processes racing each
other. Nothing is mocked: the runs are real (tiny: small_cnn at 32 px on 36 synthetic radiographs, 2 epochs).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import resource
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from conftest import TINY
from mlflow.tracking import MlflowClient
from servers import child_env, tracking_server

MODEL = "pneumonia-classifier"
EXPERIMENT = "pneumonia-detection"
SEEDS = (11, 12, 13, 14)
EPOCHS = 2
EPOCH_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_auc")
RUN_ARTIFACTS = ("plots/confusion_matrix.png", "plots/roc_curve.png", "plots/training_curves.png",
                 "plots/gradcam.png", "predictions/test_predictions.csv", "data/split.csv", "config.yaml")
MODEL_FILES = ("MLmodel", "artifacts/weights.pt", "artifacts/model_card.json")


def train_command(seed: int) -> list[str]:
    return [sys.executable, "-m", "pneumo_ml", "train", "--model", "small_cnn", "--epochs", str(EPOCHS),
            "--batch-size", str(TINY["batch_size"]), "--image-size", str(TINY["image_size"]),
            "--n-train", str(TINY["n_train"]), "--n-val", str(TINY["n_val"]), "--n-test", str(TINY["n_test"]),
            "--seed", str(seed), "--device", "cpu", "--quiet",
            "--set", f"bootstrap={TINY['bootstrap']}", "--set", f"gradcam_images={TINY['gradcam_images']}",
            "--set", f"workers={TINY['workers']}"]


@dataclass
class Team:
    uri: str
    folder: Path
    client: MlflowClient
    outcomes: dict[int, tuple[int, str]] = field(default_factory=dict)  # seed -> (exit status, output tail)
    wall_s: float = 0.0
    cpu_s: float = 0.0  # user + system time of the four training processes

    def env(self, **extra) -> dict[str, str]:
        env = child_env(MLFLOW_TRACKING_URI=self.uri, **extra)
        env.pop("MLFLOW_RUN_ID", None)
        return env


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_together(commands: dict, env: dict, folder: Path, timeout: float = 300.0) -> dict:
    """Start every command at once (each in its own working folder); (exit status, output tail) by key."""
    procs = {}
    for key, cmd in commands.items():
        cwd = folder / f"proc-{key}"
        cwd.mkdir(parents=True, exist_ok=True)
        log = open(cwd / "output.log", "w")
        procs[key] = (subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL), log, cwd / "output.log")
    deadline = time.monotonic() + timeout
    results = {}
    try:
        for key, (proc, log, path) in procs.items():
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
            results[key] = (proc.returncode, path.read_text(errors="replace")[-3000:])
    finally:
        for proc, log, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    return results


@pytest.fixture(scope="module")
def team(tmp_path_factory, session_dir):
    """A tracking server, and four trainings run against it in parallel (data set prepared once before)."""
    folder = tmp_path_factory.mktemp("team")
    cache = session_dir / "cache"
    with tracking_server(folder) as server:
        # The synthetic set is generated once, before the trainings (racing its generation is tested below).
        from pneumo_ml import config, data
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("PNEUMO_ML_CACHE", str(cache))
            c = config.load(config.experiment_path("small_cnn"), **TINY)
            data.load_split(c.data, n_train=c.n_train, n_val=c.n_val, n_test=c.n_test, seed=0,
                            synthetic_difficulty=c.synthetic_difficulty)
        result = Team(server.base, folder, MlflowClient(server.base))
        start, cpu = time.perf_counter(), children_cpu_s()
        result.outcomes = run_together({seed: train_command(seed) for seed in SEEDS},
                                       result.env(PNEUMO_ML_CACHE=cache), folder)
        result.wall_s, result.cpu_s = time.perf_counter() - start, children_cpu_s() - cpu
        yield result


def trained(team: Team) -> int:
    """How many of the trainings succeeded: the tests below check what those left behind, so that a failed
    training is reported once, by test_four_parallel_trainings_are_tracked_completely."""
    count = sum(status == 0 for status, _ in team.outcomes.values())
    if count == 0:
        pytest.fail("no training succeeded; see test_four_parallel_trainings_are_tracked_completely")
    return count


def runs_of(team: Team) -> list:
    experiment = team.client.get_experiment_by_name(EXPERIMENT)
    return team.client.search_runs([experiment.experiment_id], max_results=100)


def test_four_parallel_trainings_are_tracked_completely(team, tmp_path, monkeypatch):
    print(f"\n{len(SEEDS)} trainings (small_cnn, {TINY['image_size']} px, "
          f"{TINY['n_train']}/{TINY['n_val']}/{TINY['n_test']} images, {EPOCHS} epochs) in parallel against "
          f"one mlflow server: {team.wall_s:.1f} s wall, {team.cpu_s:.1f} s CPU (user+sys) "
          f"on {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    client = team.client
    experiments = [e for e in client.search_experiments() if e.name == EXPERIMENT]
    assert len(experiments) == 1, "the racing trainings created the experiment more than once"
    assert experiments[0].artifact_location.startswith("mlflow-artifacts:"), "artifacts are not proxied"

    runs = runs_of(team)
    assert len(runs) == len(SEEDS), "a training left no run, or more than one"
    assert sorted(int(r.data.params.get("seed", -1)) for r in runs) == sorted(SEEDS)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    for run in finished:  # everything a finished run must hold (failed trainings are reported below)
        run_id = run.info.run_id
        for name in EPOCH_METRICS:
            steps = sorted(m.step for m in client.get_metric_history(run_id, name))
            assert steps == list(range(1, EPOCHS + 1)), (run_id, name, steps)
        listed = set()
        for folder in ("", "plots", "predictions", "data"):
            listed |= {a.path for a in client.list_artifacts(run_id, folder or None) if not a.is_dir}
        missing = set(RUN_ARTIFACTS) - listed
        assert not missing, (run_id, missing)
        # the artifacts really are on the server, not just listed: download one through the proxy
        split = Path(client.download_artifacts(run_id, "data/split.csv", str(tmp_path)))
        lines = split.read_text().strip().splitlines()
        assert "path" in lines[0] and len(lines) == 1 + TINY["n_train"] + TINY["n_val"] + TINY["n_test"]

    # the registered model of every run, downloaded through the server: complete, and each run's own weights
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team.uri)
    digests = {}
    for version in client.search_model_versions(f"name = '{MODEL}'"):
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}/{version.version}",
                                                         dst_path=str(tmp_path / f"v{version.version}")))
        for name in MODEL_FILES:
            assert (local / name).is_file() and (local / name).stat().st_size > 0, (version.version, name)
        card = json.loads((local / "artifacts" / "model_card.json").read_text())
        assert card["run_id"] == version.run_id
        digests[version.version] = hashlib.sha256((local / "artifacts" / "weights.pt").read_bytes()).hexdigest()
    assert len(digests) == len(finished) and len(set(digests.values())) == len(finished), \
        "two versions hold the same weights: runs were mixed up"

    failed = {seed: output for seed, (status, output) in team.outcomes.items() if status != 0}
    assert not failed, "\n".join(f"training --seed {seed} failed:\n{output}" for seed, output in failed.items())
    unfinished = [(r.info.run_id, r.info.status, r.data.tags.get("pneumo_ml.error")) for r in runs
                  if r.info.status != "FINISHED"]
    assert not unfinished, unfinished


def test_registered_versions_are_distinct(team):
    finished = trained(team)
    client = team.client
    assert len(client.search_registered_models()) == 1
    versions = client.search_model_versions(f"name = '{MODEL}'")
    runs = {r.info.run_id: r for r in runs_of(team) if r.info.status == "FINISHED"}
    assert sorted(int(v.version) for v in versions) == list(range(1, finished + 1))
    assert len({v.run_id for v in versions}) == finished
    assert {v.run_id for v in versions} == set(runs)
    for v in versions:
        assert v.status == "READY"
        assert v.tags["run_id"] == v.run_id
        assert runs[v.run_id].data.tags["pneumo_ml.registered_version"] == str(v.version)
        assert float(v.tags["val_auc"]) == pytest.approx(runs[v.run_id].data.metrics["best/val_auc"], abs=5.1e-5)


def expected_ranking(versions) -> list:
    """Best first by validation AUC; ties to the lower validation loss, then the older version."""
    def figure(v, key):
        try:
            return float(v.tags[key])
        except (KeyError, ValueError):
            return math.nan
    usable = [v for v in versions if not math.isnan(figure(v, "val_auc"))]
    return sorted(usable, key=lambda v: (-figure(v, "val_auc"),
                                         figure(v, "val_loss") if not math.isnan(figure(v, "val_loss")) else math.inf,
                                         int(v.version)))


def test_racing_promotions_end_with_one_champion_the_validation_winner(team):
    trained(team)
    client = team.client
    ranking = expected_ranking(client.search_model_versions(f"name = '{MODEL}'"))
    assert len(ranking) >= 2, "fewer than two versions have a validation AUC"
    promote = [sys.executable, "-m", "pneumo_ml", "promote"]
    outcomes = run_together({"a": promote, "b": promote}, team.env(), team.folder / "promote", timeout=120)
    for key, (status, output) in outcomes.items():
        assert status == 0, f"promote {key} exited {status}:\n{output}"
    model = client.get_registered_model(MODEL)
    aliases = {alias: str(version) for alias, version in model.aliases.items()}
    assert set(aliases) == {"champion", "challenger"}, aliases
    assert aliases["champion"] == str(ranking[0].version), (aliases, [(v.version, v.tags["val_auc"],
                                                                       v.tags["val_loss"]) for v in ranking])
    assert aliases["challenger"] != aliases["champion"]
    assert aliases["challenger"] == str(ranking[1].version)
    winner = client.get_model_version(MODEL, aliases["champion"])
    assert winner.tags["promotion.metric"] == "val_auc"
    assert winner.tags["promotion.decision"] in ("promoted to @champion", "remains @champion")
    # both processes agree, whichever came first
    for _, output in outcomes.values():
        assert f"@champion -> v{aliases['champion']}" in output


def test_logged_models_live_in_their_runs_experiment(team):
    """The logged model (MLflow 3 LoggedModel) of a run belongs to the run's experiment, so the experiment's
    Models tab lists it and its files sit under that experiment's artifact root."""
    trained(team)
    client = team.client
    for version in client.search_model_versions(f"name = '{MODEL}'"):
        assert version.source.startswith("models:/m-"), version.source
        logged = client.get_logged_model(version.source[len("models:/"):])
        run = client.get_run(version.run_id)
        assert logged.source_run_id == version.run_id
        assert logged.experiment_id == run.info.experiment_id, (
            f"v{version.version}: logged model in experiment {logged.experiment_id} "
            f"({client.get_experiment(logged.experiment_id).name}), its run in {run.info.experiment_id} ({EXPERIMENT})")


def test_runs_log_the_same_data_set_at_the_same_moment(team, monkeypatch):
    """Trainings started together on the same data log the same split (same name and digest) as their
    MLflow dataset input within milliseconds of each other: each must succeed and be linked to it.
    (The four trainings above hit this only when their timing lines up; here 6 threads line it up.)"""
    from pneumo_ml import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", team.uri)
    experiment = tracking.experiment_id("dataset-race")  # apart from the trainings' experiment
    errors, linked = [], []
    for round_ in range(5):
        frame = pd.DataFrame({"path": [f"round{round_}/{i}.png" for i in range(36)],
                              "label": ["NORMAL", "PNEUMONIA"] * 18})
        run_ids = [tracking.client().create_run(experiment).info.run_id for _ in range(6)]
        barrier = threading.Barrier(len(run_ids))

        def log(run_id, barrier=barrier, frame=frame, round_=round_):  # this round's, bound now
            logger = tracking.RunLogger(run_id)
            barrier.wait()
            try:
                linked.append((run_id, logger.log_dataset(frame, name="split-synthetic", source="/data/synthetic")))
            except Exception as e:  # every failure is collected and reported
                errors.append(f"round {round_}: {e.__class__.__name__}: {str(e).splitlines()[0][:200]}")

        threads = [threading.Thread(target=log, args=(run_id,)) for run_id in run_ids]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert not errors, f"{len(errors)} of {5 * 6} dataset loggings failed, e.g. {errors[:2]}"
    for run_id, digest in linked:
        inputs = team.client.get_run(run_id).inputs.dataset_inputs
        assert [i.dataset.digest for i in inputs] == [digest]


def test_parallel_trainings_can_share_a_cold_data_cache(tmp_path):
    """Two processes that both find the synthetic set missing generate it at once (as two trainings
    started together on a fresh machine do): both must end up with the same complete data set."""
    racer = ("import sys\n"
             "from pneumo_ml.data import ensure_synthetic\n"
             "print(ensure_synthetic(n_train=4, n_val=2, n_test=2, seed=0, difficulty=None))\n")
    env = child_env(PNEUMO_ML_CACHE=tmp_path / "cold-cache")
    outcomes = run_together({i: [sys.executable, "-c", racer] for i in range(2)}, env, tmp_path, timeout=120)
    for key, (status, output) in outcomes.items():
        assert status == 0, f"racer {key} exited {status}:\n{output}"
    roots = {output.strip().splitlines()[-1] for _, output in outcomes.values()}
    assert len(roots) == 1
    root = Path(roots.pop())
    assert (root / "manifest.csv").is_file()
    assert len((root / "manifest.csv").read_text().strip().splitlines()) == 1 + 8
