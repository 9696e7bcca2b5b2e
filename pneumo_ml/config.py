"""One frozen config per experiment: loaded from YAML, overridden from the command line, logged whole."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .suggest import did_you_mean, known_model_names
from .vocabulary import ARCHITECTURES, MODEL_NAME, STUDY_SPLIT, VALIDATION_METRICS

MODEL_NAMES = ARCHITECTURES
LOSSES = ("ce", "weighted_ce", "focal")
PRETRAINED = ("auto", "true", "false")
DEVICES = ("auto", "cpu", "cuda")
SAMPLERS = ("shuffle", "balanced")  # balanced: class-balanced batches, stronger augmentation of the minority
MONITORS = VALIDATION_METRICS  # name -> higher is better


@dataclass(frozen=True)
class Config:
    # What to train: the study's defaults (ResNet50_Aug).
    name: str = "ResNet50_Aug"
    model: str = "resnet50"
    aug: bool = True
    pretrained: str = "auto"  # auto: ImageNet weights when they can be had offline, else random (logged)
    weights: str | None = None  # a local state dict / timm checkpoint; wins over `pretrained`
    # Data: the study's protocol, stratified, patient-grouped.
    data: str = "synthetic"
    n_train: int = STUDY_SPLIT["n_train"]
    n_val: int = STUDY_SPLIT["n_val"]
    n_test: int = STUDY_SPLIT["n_test"]
    image_size: int = 224
    synthetic_difficulty: float | None = None  # None: pneumo_ml.synthetic.DEFAULT_DIFFICULTY
    skip_bad: bool = False  # unreadable files stop the run unless this is set
    allow_leaks: bool = False  # files or bytes shared across splits stop the run unless this is set (logged)
    # Optimisation: the study's 5 epochs, batch 32, Adam 1e-4, cross-entropy.
    epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.0
    loss: str = "ce"
    focal_gamma: float = 2.0
    sampler: str = "shuffle"  # balanced: the study's recommendation 2c, for imbalanced data (--n-train 0)
    monitor: str = "val_loss"  # val_loss: with 16 val images, AUC and accuracy saturate or jump
    patience: int = 0  # early stopping after this many epochs without improvement; 0 = never stop early
    seed: int = 42
    deterministic: bool = False
    # Where and how fast.
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA only
    channels_last: bool = True  # CUDA only
    compile: bool = False
    workers: int = 0  # decode processes for the cold cache; 0 = one per core
    cache_dir: str | None = None  # on-disk decoded-image cache; None = memory only
    memory_limit_gb: float = 8.0  # decoded images beyond this are memory-mapped from disk, not held in RAM
    # Evaluation and logging.
    bootstrap: int = 1000
    gradcam_images: int = 8
    register: bool = True
    registered_model_name: str = MODEL_NAME

    def __post_init__(self) -> None:
        _validate(self)

    def replace(self, **changes: Any) -> Config:
        return load(None, base=self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


FIELD_TYPES = {f.name: f.type for f in fields(Config)}


def seed_suffix(seed: int) -> str:
    """What tells the runs of one experiment apart in a suite with several seeds: 'SmallCNN (seed 1)'."""
    return f" (seed {seed})"


def experiment_name(config: Config) -> str:
    """The experiment a run belongs to, without the seed that tells its runs apart."""
    return config.name.removesuffix(seed_suffix(config.seed))


def load(path: str | os.PathLike | None = None, *, base: Config | None = None, **overrides: Any) -> Config:
    """Config from `base` (or the defaults), then the YAML file, then the overrides (None = not given)."""
    values = (base or Config()).to_dict()
    if path is not None:
        values.update(_read_yaml(Path(path)))
    for key, value in overrides.items():
        if key not in FIELD_TYPES:
            raise ConfigError(f"unknown config key {key!r}{did_you_mean(key, FIELD_TYPES)}")
        if value is not None:
            values[key] = value
    return Config(**{k: _coerce(k, v) for k, v in values.items()})


def experiment_path(name: str) -> Path:
    """experiments/<name>.yaml: the working copy in the current folder first, else the one installed."""
    local = Path("experiments") / f"{name}.yaml"
    if local.is_file():
        return local
    bundled = resources.files("pneumo_ml.experiments") / f"{name}.yaml"
    if not bundled.is_file():
        raise ConfigError(f"no experiment config {name!r} (looked in ./experiments and the installed package)")
    return Path(str(bundled))


def default_experiment(model: str | None, aug: bool | None) -> Path | None:
    """The study's YAML for a model (and, for resnet50, its aug variant); None when there is none."""
    model = model or Config.model
    candidates = [f"{model}_{'aug' if aug is not False else 'noaug'}", model]
    for name in candidates:
        try:
            return experiment_path(name)
        except ConfigError:
            continue
    return None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e.__class__.__name__})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys")
    unknown = sorted(set(data) - set(FIELD_TYPES))
    if unknown:
        raise ConfigError(f"{path}: unknown config key(s) {', '.join(unknown)}{did_you_mean(unknown[0], FIELD_TYPES)}")
    return data


def parse_bool(value: Any, key: str = "value") -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"{key}: expected true or false, got {value!r}")


def _coerce(key: str, value: Any) -> Any:
    kind = FIELD_TYPES[key]
    if "None" in kind and (value is None or value == ""):
        return None
    if key == "pretrained" and isinstance(value, bool):
        return "true" if value else "false"
    if kind.startswith("bool"):
        return parse_bool(value, key)
    try:
        if kind.startswith("int"):
            number = float(value)
            if not number.is_integer():
                raise ValueError
            return int(number)
        if kind.startswith("float"):
            return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected {kind.split(' ')[0]}, got {value!r}") from None
    return str(value).lower() if key in ("pretrained", "device", "loss", "sampler") else str(value)


def _validate(c: Config) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    need(c.model in MODEL_NAMES, f"model: unknown model {c.model!r} (choose from {', '.join(MODEL_NAMES)})"
                                 f"{did_you_mean(c.model, known_model_names())}")
    need(c.loss in LOSSES, f"loss: unknown loss {c.loss!r} (choose from {', '.join(LOSSES)})")
    need(c.pretrained in PRETRAINED, f"pretrained: expected auto, true or false, got {c.pretrained!r}")
    need(c.sampler in SAMPLERS, f"sampler: expected {' or '.join(SAMPLERS)}, got {c.sampler!r}")
    need(c.device in DEVICES, f"device: expected auto, cpu or cuda, got {c.device!r}")
    need(c.monitor in MONITORS, f"monitor: choose from {', '.join(MONITORS)}")
    need(c.epochs >= 1, "epochs: must be at least 1")
    need(c.batch_size >= 1, "batch_size: must be at least 1")
    need(c.lr > 0, "lr: must be positive")
    need(c.image_size >= 16 and c.image_size % 16 == 0 if c.model == "vit_tiny" else c.image_size >= 16,
         "image_size: must be at least 16 (and a multiple of 16 for vit_tiny)")
    for split in ("n_train", "n_val", "n_test"):
        need(getattr(c, split) == 0 or getattr(c, split) >= 2,
             f"{split}: needs at least 2 images (one per class), or 0 for all")
    need(c.patience >= 0, "patience: must be 0 (off) or more")
    need(c.workers >= 0, "workers: must be 0 (one per core) or more")
    need(c.bootstrap >= 0, "bootstrap: must be 0 (off) or more")
    need(c.memory_limit_gb > 0, "memory_limit_gb: must be positive")
    if c.synthetic_difficulty is not None:
        need(0.0 <= c.synthetic_difficulty <= 1.0, "synthetic_difficulty: must lie in [0, 1]")
