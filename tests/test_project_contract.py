"""MLproject parameters, click options, experiment YAML keys and the code's defaults must agree."""
from pathlib import Path

import yaml

from pneumo_ml import cli, config
from pneumo_ml.config import Config

ROOT = Path(__file__).resolve().parent.parent


def mlproject():
    return yaml.safe_load((ROOT / "MLproject").read_text())


def test_main_parameters_are_train_options_and_config_keys():
    params = mlproject()["entry_points"]["main"]["parameters"]
    options = {p.name for p in cli.train.params}
    contract = {"model", "aug", "data", "epochs", "batch_size", "lr", "image_size", "pretrained", "loss", "seed",
                "n_train", "n_val", "n_test"}
    assert contract <= set(params)
    for name in params:
        assert name in options, f"MLproject parameter {name} has no --{name.replace('_', '-')} option"
        assert name in config.FIELD_TYPES, f"MLproject parameter {name} is not a config key"
        assert f"{{{name}}}" in mlproject()["entry_points"]["main"]["command"]


def test_mlproject_defaults_equal_the_code_defaults():
    defaults = Config()
    for name, spec in mlproject()["entry_points"]["main"]["parameters"].items():
        expected = getattr(defaults, name)
        parsed = config.load(None, **{name: spec["default"]})
        assert getattr(parsed, name) == expected, f"MLproject default of {name} differs from the code's"


def test_experiment_yaml_keys_are_config_keys_and_load():
    files = sorted((ROOT / "experiments").glob("*.yaml"))
    assert {f.stem for f in files} >= {"small_cnn", "resnet50_aug", "resnet50_noaug", "vit_tiny", "suite"}
    for f in files:
        if f.stem == "suite":
            continue
        data = yaml.safe_load(f.read_text())
        assert set(data) <= set(config.FIELD_TYPES), f"{f.name} has keys the config does not know"
        assert f.read_text().startswith("# "), f"{f.name} lacks the comment saying what it reproduces"
        config.load(f)


def test_every_config_key_can_be_set_from_the_command_line():
    options = {p.name for p in cli.train.params}
    direct = {"model", "aug", "data", "epochs", "batch_size", "lr", "image_size", "pretrained", "weights", "loss",
              "sampler", "seed", "device", "n_train", "n_val", "n_test"}
    assert direct <= options
    # The rest go through --set KEY=VALUE, which rejects unknown keys like the YAML does.
    assert "sets" in options


def test_promote_parameters_are_promote_options_with_the_same_defaults():
    entry = mlproject()["entry_points"]["promote"]
    options = {p.name: p.default for p in cli.promote.params}
    assert {"model_name", "metric", "alias", "margin"} <= set(entry["parameters"])
    for name, spec in entry["parameters"].items():
        assert name in options and f"{{{name}}}" in entry["command"], name
        assert str(spec["default"]) == str(options[name]), name


def test_the_architectures_are_create_models_names():
    from pneumo_ml import models
    from pneumo_ml.vocabulary import ARCHITECTURES
    assert tuple(models.MODELS) == ARCHITECTURES


def _modules():
    import ast
    package = Path(config.__file__).parent
    return {p.stem: ast.parse(p.read_text(encoding="utf-8")) for p in package.glob("*.py")}


def test_only_tracking_and_the_pyfunc_talk_to_mlflow():
    import ast
    importers = {name for name, tree in _modules().items() for node in ast.walk(tree)
                 if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "mlflow" for a in node.names)
                 or isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "mlflow"}
    assert importers == {"tracking", "serving", "pyfunc_model"}


def test_the_labels_and_the_notice_are_defined_once():
    import ast

    from pneumo_ml.vocabulary import CLASSES, NOTICE
    defined = {}
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                try:
                    value = ast.literal_eval(node.value)
                except ValueError:
                    continue
                if value in (CLASSES, list(CLASSES)) or isinstance(value, str) and NOTICE in value.lower():
                    defined.setdefault(name, []).append(ast.unparse(node)[:60])
    assert set(defined) == {"vocabulary"}, defined
