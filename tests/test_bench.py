"""`pneumo-ml bench` runs the real paths and reports consistent figures. Nothing here asserts a timing: the
figures are shown by the benchmark, never judged by a test."""
import dataclasses
import json
import math
import os
import statistics
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from pneumo_ml import tracking
from pneumo_ml.bench import MODEL_NAMES, TARGET_PYFUNC_P50_MS, format_table, run_bench
from pneumo_ml.cli import main

MODEL_KEYS = ("model_only_img_per_s", "end_to_end_img_per_s", "cold_epoch_img_per_s", "ratio", "inference_img_per_s")
TOP_KEYS = ("device", "quick", "batch_size", "image_size", "models", "decode_single_core_img_per_s",
            "decode_parallel_img_per_s", "decode_workers", "pyfunc_p50_ms", "pyfunc_p95_ms",
            "pyfunc_batch32_img_per_s", "pyfunc", "suite_wall_s", "suite_breakdown_s", "cpu_count", "torch",
            "machine")


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: on a shared CI machine, two spinning threads per process slow these runs tenfold."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def report(one_thread):
    cwd = Path.cwd()
    env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "PNEUMO_ML_CACHE")}
    result = run_bench(quick=True, models=["small_cnn"], device="cpu", suite=False)
    assert Path.cwd() == cwd and {k: os.environ.get(k) for k in env} == env  # everything restored
    return result


def positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def test_report_has_every_key_with_positive_finite_figures(report):
    assert set(TOP_KEYS) <= set(report)
    assert report["quick"] is True and report["device"] and report["torch"] == torch.__version__
    assert list(report["models"]) == ["small_cnn"]
    figures = report["models"]["small_cnn"]
    for key in MODEL_KEYS:
        assert positive(figures[key]), (key, figures[key])
    for key in ("decode_single_core_img_per_s", "decode_parallel_img_per_s", "pyfunc_p50_ms", "pyfunc_p95_ms",
                "pyfunc_batch32_img_per_s"):
        assert positive(report[key]), (key, report[key])
    assert report["decode_workers"] >= 1 and report["cpu_count"] >= 1
    assert report["batch_size"] >= 1 and report["image_size"] >= 16
    assert report["suite_wall_s"] is None and report["suite_breakdown_s"] == {}  # suite=False
    json.dumps(report)  # the CLI writes exactly this


def test_ratio_is_warm_end_to_end_over_model_only_round_by_round(report):
    m = report["models"]["small_cnn"]
    warm = [e for e in m["epochs"] if not e["cold"]]
    assert all(e["model_only_img_per_s"] > 0 for e in warm)
    assert m["ratio"] == pytest.approx(statistics.median(e["img_per_s"] / e["model_only_img_per_s"] for e in warm))
    assert m["end_to_end_img_per_s"] == pytest.approx(statistics.median(e["img_per_s"] for e in warm))
    assert m["model_only_img_per_s"] == pytest.approx(statistics.median(e["model_only_img_per_s"] for e in warm))


def test_cold_epoch_decodes_everything_and_warm_epochs_decode_nothing(report):
    m = report["models"]["small_cnn"]
    cold, *warm = m["epochs"]
    n = report["e2e_set"]["images"]
    assert warm, "at least one warm epoch"
    assert cold["cold"] and cold["decoded"] == n and cold["memory_hits"] == 0 and cold["images"] == n
    for epoch in warm:
        assert not epoch["cold"] and epoch["decoded"] == 0 and epoch["memory_hits"] == n and epoch["images"] == n
    assert m["cold_epoch_img_per_s"] == pytest.approx(n / cold["seconds"])
    assert m["cold_epoch_decode_img_per_s"] == pytest.approx(n / cold["decode_s"])


def test_decode_rates_come_from_their_own_file_sets(report):
    assert report["decode_files"] >= report["e2e_set"]["images"]
    assert report["decode_single_core_img_per_s"] > 0 and report["decode_parallel_img_per_s"] > 0
    assert f"{report['decode_files']} files" in format_table(report)


def test_pyfunc_figures_are_the_small_cnn_ones(report):
    p = report["pyfunc"]["small_cnn"]
    assert p["calls"] >= 30 and p["p50_ms"] <= p["p95_ms"]
    assert (report["pyfunc_p50_ms"], report["pyfunc_p95_ms"]) == (p["p50_ms"], p["p95_ms"])
    assert "resnet50" not in report["pyfunc"]  # only the models asked for


def test_table_names_every_model_and_target(report):
    full = {**report, "models": {name: report["models"]["small_cnn"] for name in MODEL_NAMES},
            "pyfunc": {name: report["pyfunc"]["small_cnn"] for name in TARGET_PYFUNC_P50_MS},
            "suite_wall_s": 42.0, "suite_breakdown_s": {"data_s": 2.0, "train_s": 30.0, "other_s": 10.0},
            "suite_experiments": ["a", "b", "c", "d"], "suite_finished": 4,
            "pyfunc_ensemble": {**report["pyfunc"]["small_cnn"], "members": list(TARGET_PYFUNC_P50_MS),
                                "members_p50_sum_ms": 70.0, "target_p50_ms": 80.0}}
    table = format_table(full)
    assert "ensemble" in table and "members' sum 70.0 + 10 ms" in table
    for name in MODEL_NAMES:
        assert name in table
    for target in (">= 90 % of model-only", ">= 0.8 x N x single-core", "p50 < 50 ms", "p50 < 150 ms",
                   "< 60 s on one H100/H200"):
        assert target in table, target
    assert "met" in table or "MISSED" in table
    assert "training" in table and "data (split + decode)" in table
    own = format_table(report)
    assert "small_cnn" in own and "p50 < 50 ms" in own and ">= 90 % of model-only" in own


def test_the_ensemble_pyfunc_is_timed_like_its_members(one_thread, tmp_path):
    from pneumo_ml import bench
    sizes = dataclasses.replace(bench.sizes_for(True, torch.device("cpu")), pyfunc_calls=5)
    jpeg = bench.xray_jpeg(256)
    with tracking.isolated_store(tmp_path):
        single = bench.bench_pyfunc("small_cnn", jpeg, tmp_path / "pyfunc-small_cnn", sizes)
        both = bench.bench_ensemble_pyfunc(["small_cnn", "small_cnn"], jpeg, tmp_path, sizes)
    assert both["members"] == ["small_cnn", "small_cnn"] and both["calls"] == single["calls"]
    assert positive(both["p50_ms"]) and both["p50_ms"] <= both["p95_ms"] and positive(both["batch32_img_per_s"])


def test_unknown_model_is_a_clear_error():
    from pneumo_ml.errors import ConfigError
    with pytest.raises(ConfigError, match="resnet18"):
        run_bench(quick=True, models=["resnet18"], device="cpu", suite=False)


def test_cli_writes_valid_json(one_thread, tmp_path):
    out = tmp_path / "out.json"
    result = CliRunner().invoke(main, ["bench", "--quick", "--models", "small_cnn", "--skip-suite", "--json", str(out)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert list(data["models"]) == ["small_cnn"] and data["quick"] is True
    assert positive(data["models"]["small_cnn"]["ratio"]) and positive(data["pyfunc_p50_ms"])
    assert "small_cnn" in result.output and "target" in result.output
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()  # nothing left behind
