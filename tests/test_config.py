import dataclasses

import pytest
import yaml

from pneumo_ml import config
from pneumo_ml.config import Config, ConfigError


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("model: vit_tiny\nepochs: 3\naug: false\n")
    c = config.load(path, epochs="7", lr=None)
    assert (c.model, c.epochs, c.aug, c.lr) == ("vit_tiny", 7, False, 1e-4)


@pytest.mark.parametrize("text, message", [
    ("modle: resnet50\n", "unknown config key(s) modle"),
    ("- a\n- b\n", "expected a mapping"),
    ("epochs: [\n", "not valid YAML"),
])
def test_bad_yaml_names_the_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="bad.yaml") as info:
        config.load(path)
    assert message in str(info.value)


@pytest.mark.parametrize("overrides, message", [
    ({"colour": "red"}, "unknown config key 'colour'"),
    ({"model": "resnet18"}, "unknown model 'resnet18'"),
    ({"epochs": "two"}, "epochs: expected int"),
    ({"epochs": 2.5}, "epochs: expected int"),
    ({"aug": "maybe"}, "aug: expected true or false"),
    ({"lr": -1}, "lr: must be positive"),
    ({"n_val": 1}, "n_val: needs at least 2"),
    ({"model": "vit_tiny", "image_size": 40}, "multiple of 16"),
    ({"pretrained": "yes"}, "pretrained: expected auto, true or false"),
])
def test_bad_values_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        config.load(None, **overrides)


def test_mlproject_strings_parse_like_python_values():
    c = config.load(None, aug="false", pretrained="TRUE", epochs="5", lr="1e-4", weights="", image_size="224.0")
    assert c.aug is False and c.pretrained == "true" and c.epochs == 5 and c.lr == 1e-4
    assert c.weights is None and c.image_size == 224


def test_config_is_frozen_and_round_trips_through_yaml():
    c = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.epochs = 3  # type: ignore[misc]
    assert config.load(None, **yaml.safe_load(c.to_yaml())) == c


def test_default_experiment_follows_model_and_aug():
    assert config.default_experiment("resnet50", False).name == "resnet50_noaug.yaml"
    assert config.default_experiment("resnet50", None).name == "resnet50_aug.yaml"
    assert config.default_experiment("vit_tiny", True).name == "vit_tiny.yaml"
    assert config.load(config.default_experiment("small_cnn", None)).name == "SmallCNN"
