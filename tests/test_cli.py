"""The command line as a user meets it: real files, one clear line for every mistake, exit codes."""
import io
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import SAMPLES, TINY, write_dicom
from not_xrays import colour_photo

from pneumo_ml.cli import main
from pneumo_ml.io import read_xray
from pneumo_ml.ood import NOT_RADIOGRAPH


def cli(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env, catch_exceptions=False)


def one_clean_line(result, *needles):
    assert result.exit_code in (1, 2), result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, result.output


def tiny_args(**extra):
    args = []
    for key, value in {**TINY, **extra}.items():
        if key in ("bootstrap", "gradcam_images", "workers"):
            args += ["--set", f"{key}={value}"]
        else:
            args += [f"--{key.replace('_', '-')}", value]
    return args


@pytest.mark.parametrize("args, needles", [
    (["train", "--model", "resnet18"], ["error: model: unknown model 'resnet18'"]),
    (["train", "--data", "/no/such/folder"], ["error: /no/such/folder: no such data folder"]),
    (["train", "--config", "missing.yaml"], ["missing.yaml: config file not found"]),
    (["train", "--set", "colour=red"], ["unknown config key 'colour'"]),
    (["train", "--aug", "perhaps"], ["expected true or false"]),
    (["train", "--model", "small_cnn", "--pretrained", "true", *tiny_args()], ["small_cnn has no pretrained weights"]),
    (["promote", "--metric", "test_auc"], ["validation metrics only"]),
    (["predict", "--model-uri", "models:/nothing/1", __file__], ["cannot load model"]),
    (["predict", "--model-uri", "models:/nothing/1", "x.png"], ["error: x.png: no such file or folder"]),
    (["train", "--model", "resnet5"], ["unknown model 'resnet5'", "did you mean 'resnet50'?"]),
    (["train", "--model", "ResNet50_Agu"], ["did you mean 'ResNet50_Aug'?"]),
    (["train", "--set", "patiense=2"], ["unknown config key 'patiense'; did you mean 'patience'?"]),
    (["data", "audit", "/no/such/folder"], ["error: /no/such/folder: no such folder"]),
])
def test_user_mistakes_end_in_one_clear_line(args, needles):
    result = cli(*args)
    one_clean_line(result, *needles)
    assert "Usage:" not in result.output and result.output.count("error") == 1, result.output  # one line


def test_empty_folders_say_so(tmp_path):
    (tmp_path / "empty").mkdir()
    for args in (["predict", "--model-uri", "models:/nothing/1", tmp_path / "empty"],
                 ["data", "check", tmp_path / "empty"]):
        result = cli(*args)
        one_clean_line(result, f"error: no images found in {tmp_path / 'empty'}")
        assert len(result.output.strip().splitlines()) == 1, result.output


def test_help_lists_choices_and_defaults_for_every_option_and_the_version():
    import click

    from pneumo_ml.suggest import resolve_model
    commands = [c for c in main.commands.values() if not isinstance(c, click.Group)] + \
        list(main.commands["data"].commands.values())
    for command in commands:
        for param in command.params:
            if isinstance(param, click.Option) and param.name != "help":
                assert param.help, f"{command.name} --{param.name} has no help"
    text = " ".join(cli("train", "--help").output.split())
    assert "[auto|true|false]" in text and "[ce|weighted_ce|focal]" in text and "CHOICE" not in text
    assert "else 5)]" in text and "else 0.0001)]" in text and "else 42)]" in text  # epochs, lr, seed
    assert "[default: 32; x>=1]" in " ".join(cli("predict", "--help").output.split())
    assert cli("--version").output.startswith("pneumo-ml, version ")
    assert resolve_model("ResNet50_Aug") == ("resnet50", True)
    assert resolve_model("ResNet50_NoAug") == ("resnet50", False)
    assert resolve_model("SmallCNN") == ("small_cnn", None) and resolve_model("vit_tiny") == ("vit_tiny", None)


def test_device_cuda_without_a_gpu_is_a_clear_error():
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    one_clean_line(cli("train", *tiny_args(device="cuda")), "--device cuda: no CUDA GPU is available")


def test_train_via_the_cli_prints_the_summary_table():
    from mlflow.tracking import MlflowClient

    from pneumo_ml.cli import quick_overrides
    args = tiny_args()
    del args[args.index("--n-test"):args.index("--n-test") + 2]  # --quick decides n_test; the options given win
    result = cli("train", "--model", "SmallCNN", "--quick", *args, "--no-register")
    assert result.exit_code == 0, result.output
    assert "SmallCNN: run" in result.output and "at val threshold" in result.output
    assert "research use, not for diagnosis" in result.output
    assert "epoch 1/1: train loss " in result.output  # the epoch's line stays
    run = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("pneumonia-detection").experiment_id])[0]
    assert run.data.params["n_test"] == str(quick_overrides()["n_test"]) and run.data.params["epochs"] == "1"


def test_data_synth_writes_the_kermany_layout_with_masks(tmp_path):
    out = tmp_path / "synth"
    result = cli("data", "synth", "--out", out, "--train", 4, "--val", 2, "--test", 2, "--size", 96)
    assert result.exit_code == 0, result.output
    for split, n in (("train", 2), ("val", 1), ("test", 1)):
        for label in ("NORMAL", "PNEUMONIA"):
            assert len(list((out / split / label).glob("*.png"))) == n
    assert len(list((out / "masks").rglob("*.png"))) == 8 and (out / "manifest.csv").is_file()
    one_clean_line(cli("data", "synth", "--out", out), "not empty")


def test_data_check_lists_every_file_and_fails_on_a_bad_one(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(SAMPLES / "NORMAL" / "NORMAL2-IM-1438-0001.jpeg", folder)
    write_dicom(folder / "scan.dcm", read_xray(SAMPLES / "NORMAL" / "NORMAL2-IM-1438-0001.jpeg"))
    (folder / "broken.jpeg").write_bytes((SAMPLES / "NORMAL" / "NORMAL2-IM-1438-0001.jpeg").read_bytes()[:5000])
    result = cli("data", "check", folder)
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert any(line.startswith("OK") and "scan.dcm" in line and "1328x1104" in line for line in lines)
    assert any(line.startswith("FAIL") and "broken.jpeg" in line and "truncated" in line for line in lines)
    (folder / "broken.jpeg").unlink()
    assert cli("data", "check", folder).exit_code == 0


def test_predict_a_folder_mixing_good_and_broken_files(trained_model, tmp_path, monkeypatch):
    uri, result = trained_model
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    folder = tmp_path / "in"
    shutil.copytree(SAMPLES, folder, ignore=shutil.ignore_patterns("*.md"))
    (folder / "NORMAL" / "deep").mkdir()
    write_dicom(folder / "NORMAL" / "deep" / "scan.dcm", read_xray(SAMPLES / "NORMAL" / "NORMAL2-IM-1431-0001.jpeg"))
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (folder / "empty.jpeg").write_bytes(b"")
    (folder / "photo.jpeg").write_bytes(colour_photo())
    out = tmp_path / "preds.csv"
    run = cli("predict", "--model-uri", f"models:/pneumonia-classifier/{result.version}", folder, "--out", out,
              "--quiet")
    assert run.exit_code == 1
    frame = pd.read_csv(out, keep_default_na=False)
    assert list(frame.columns) == ["path", "label", "probability", "confidence", "threshold", "model", "ood_score",
                                   "warning", "error"]
    photo = frame[frame["path"].str.endswith("photo.jpeg")]
    assert photo["warning"].str.startswith(NOT_RADIOGRAPH).all() and len(photo) == 1
    assert not frame[frame["path"].str.contains("NORMAL|PNEUMONIA")]["warning"].str.contains(NOT_RADIOGRAPH).any()
    frame = frame[~frame["path"].str.endswith("photo.jpeg")]
    assert len(frame) == 11
    failed = frame[frame["error"] != ""]
    assert sorted(os.path.basename(p) for p in failed["path"]) == ["bad.png", "empty.jpeg"]
    assert failed["error"].str.contains("empty file").any()
    good = frame[frame["error"] == ""]
    assert good["label"].isin(["NORMAL", "PNEUMONIA"]).all() and good["probability"].astype(float).between(0, 1).all()
    assert good["model"].str.contains(f"pneumonia-classifier v{result.version}").all()
    assert "10 predicted (" in run.output and "2 failed" in run.output
    assert "research use, not for diagnosis" in run.output
    to_stdout = cli("predict", "--model-uri", f"models:/pneumonia-classifier/{result.version}", folder / "NORMAL",
                    "--quiet")  # no --out: CSV on stdout, the summary on stderr
    assert to_stdout.exit_code == 0, to_stdout.output
    printed = pd.read_csv(io.StringIO(to_stdout.stdout), keep_default_na=False)
    assert len(printed) == 5 and printed.columns[-1] == "error"


def test_explain_writes_one_png_per_input_and_fails_clearly_on_a_bad_file(trained_model, tmp_path, monkeypatch):
    uri, result = trained_model
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    dicom = write_dicom(tmp_path / "scan.dcm", read_xray(SAMPLES / "PNEUMONIA" / "person1947_bacteria_4876.jpeg"))
    jpeg = SAMPLES / "NORMAL" / "NORMAL2-IM-1436-0001.jpeg"
    out = tmp_path / "cams"
    ok = cli("explain", "--model-uri", f"models:/pneumonia-classifier/{result.version}", jpeg, dicom, "--out", out)
    assert ok.exit_code == 0, ok.output
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["NORMAL2-IM-1436-0001_gradcam.png", "scan_gradcam.png"]
    from PIL import Image
    assert Image.open(out / pngs[0]).mode in ("RGB", "RGBA")
    photo = tmp_path / "photo.jpeg"
    photo.write_bytes(colour_photo())
    warned = cli("explain", "--model-uri", f"models:/pneumonia-classifier/{result.version}", photo, "--out", out)
    assert warned.exit_code == 0 and f"WARN {photo}: {NOT_RADIOGRAPH}" in warned.output, warned.output
    bad = tmp_path / "bad.jpeg"
    bad.write_text("not an image")
    failed = cli("explain", "--model-uri", f"models:/pneumonia-classifier/{result.version}", bad, "--out", out)
    assert failed.exit_code == 1 and "bad.jpeg: not an image" in failed.output


def test_request_prints_a_body_for_the_installed_samples():
    import base64
    import json
    listed = cli("samples").output.split()
    assert len(listed) == 8 and all(os.path.isfile(p) for p in listed)
    body = json.loads(cli("request", listed[0], listed[-1], "--threshold", 0.3, "--errors", "row").output)
    assert body["params"] == {"threshold": 0.3, "errors": "row"}
    assert base64.b64decode(body["dataframe_split"]["data"][1][0]) == open(listed[-1], "rb").read()
    one_clean_line(cli("request", "nothing.png"), "error: nothing.png: no such file or folder")


def test_python_dash_m_and_the_console_script_are_the_same_cli():
    result = subprocess.run([sys.executable, "-m", "pneumo_ml", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("train", "suite", "promote", "predict", "explain", "data"):
        assert command in result.stdout
