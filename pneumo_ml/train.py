"""One experiment end to end: data -> model -> epochs -> evaluation -> plots, Grad-CAM -> MLflow run and model.

The training itself is `engine` (no MLflow); everything logged goes through `tracking`.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import logging
import math
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from . import checkpoints, distributed, engine, metrics, plots, tracking
from .cache import DecodedCache, image_array, shared_cache
from .config import Config, experiment_name
from .data import DataError, SplitTable, cache_root, load_split
from .devices import resolve_device
from .errors import ConfigError, TrackingError
from .io import read_xray
from .loaders import BatchLoader
from .models import create_model, normalization, unwrap
from .ood import save_reference
from .predictor import ModelCard
from .promotion import comparability_tags
from .splitcheck import find_leaks
from .timing import stage
from .transforms import BatchTransform
from .vocabulary import CLASSES, NOTICE, NOTICE_SENTENCE

log = logging.getLogger(__name__)
DATA_SEED = 0  # the split is drawn once: every experiment and every training seed sees the same images


@dataclass
class PreparedData:
    """The split and its decoded uint8 images, shared by every experiment of a suite."""

    split: SplitTable
    images: dict[str, np.ndarray]
    targets: dict[str, np.ndarray]
    skipped: pd.DataFrame
    seconds: float = 0.0
    leaks: list[str] = field(default_factory=list)  # split problems the user chose to train with (--allow-leaks)
    digest: str = ""  # split_digest: what makes two runs' validation figures comparable


def split_digest(frame: pd.DataFrame, cache: DecodedCache) -> str:
    """A content digest of the split: which file bytes, with which label, in which split. Paths do not enter:
    the same images copied elsewhere are the same split; one changed or added image is another."""
    lines = sorted(f"{row.split},{row.label},{cache.content_hash(row.path)}" for row in frame.itertuples())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


@dataclass
class ExperimentResult:
    run_id: str
    name: str
    config: Config
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    threshold: float = 0.5
    val: dict = field(default_factory=dict)   # targets, probs
    test: dict = field(default_factory=dict)  # targets, probs
    model_uri: str | None = None
    version: str | None = None
    weights_source: str = ""
    timings: dict[str, float] = field(default_factory=dict)


def prepare_data(config: Config, cache: DecodedCache | None = None, progress: bool = True) -> PreparedData:
    """Split the source by the protocol and decode every image once (unreadable files: error, or skipped)."""
    start = time.perf_counter()
    split = load_split(config.data, n_train=config.n_train, n_val=config.n_val, n_test=config.n_test,
                       seed=DATA_SEED, synthetic_difficulty=config.synthetic_difficulty)
    cache = cache or shared_cache(config.cache_dir, max_bytes=int(config.memory_limit_gb * 2**30))
    images, targets, skipped = {}, {}, []
    frame = split.frame
    for name in ("train", "val", "test"):
        part = split.part(name)
        room = image_array(len(part), config.image_size, spill_dir=cache_root() / "arrays", name=name,
                           max_bytes=int(config.memory_limit_gb * 2**30))
        array, failures = cache.load(part["path"].tolist(), config.image_size, workers=config.workers,
                                     progress=progress, desc=f"decode {name}", out=room)
        bad = [f.index for f in failures]
        skipped += [{"split": name, "path": f.path, "reason": f.reason} for f in failures]
        keep = np.setdiff1d(np.arange(len(part)), bad)
        images[name] = array[keep] if bad else array  # a memory map stays one unless files were skipped
        targets[name] = part["target"].to_numpy()[keep]
    skipped_frame = pd.DataFrame(skipped, columns=["split", "path", "reason"])
    if len(skipped_frame) and not config.skip_bad:
        listing = "\n".join(f"  {row.path}: {row.reason}" for row in skipped_frame.itertuples())
        raise DataError(f"{len(skipped_frame)} unreadable image(s); fix or remove them, or pass --skip-bad:\n"
                        f"{listing}")
    if len(skipped_frame):
        frame = frame[~frame["path"].isin(set(skipped_frame["path"]))].reset_index(drop=True)
        split = SplitTable(frame, split.source, split.root, split.warnings)
        for name in ("train", "val", "test"):
            if len(np.unique(targets[name])) < 2:
                raise DataError(f"{name}: after skipping unreadable files one class is left; cannot evaluate")
    leaks = _checked_split(split, cache, config.allow_leaks)
    return PreparedData(split, images, targets, skipped_frame, time.perf_counter() - start, leaks,
                        split_digest(split.frame, cache))


def _checked_split(split: SplitTable, cache: DecodedCache, allow: bool) -> list[str]:
    """The split's leaks (files or bytes shared across splits, a file with two labels): an error unless allowed."""
    leaks = find_leaks(split.frame, cache.content_hash)
    if leaks and not allow:
        listing = "\n".join(f"  {line}" for line in leaks[:20]) + ("\n  ..." if len(leaks) > 20 else "")
        raise DataError(f"the split leaks: {len(leaks)} problem(s) (fix the data, or pass --allow-leaks to train "
                        f"anyway):\n{listing}")
    if leaks:
        log.warning("training with %d split problem(s) (--allow-leaks); listed in data/leaks.txt", len(leaks))
    return leaks


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = not deterministic  # fixed input sizes: let cuDNN pick its fastest kernels


@dataclass
class Setup:
    """The model and everything that trains it, on its device."""

    model: torch.nn.Module
    trainable: torch.nn.Module  # the model, or its torch.compile wrapper
    optimizer: torch.optim.Optimizer
    loss_fn: torch.nn.Module
    train_tf: BatchTransform
    eval_tf: BatchTransform
    loaders: dict[str, BatchLoader]
    weights_source: str
    mean: tuple
    std: tuple


def build(config: Config, data: PreparedData, device: torch.device,
          world: distributed.World | None = None) -> Setup:
    world = distributed.World() if world is None else world
    if config.batch_size % world.size:
        raise ConfigError(f"batch_size {config.batch_size} is the global batch: it must divide by the "
                          f"{world.size} processes")
    model = create_model(config.model, config.pretrained, config.weights, image_size=config.image_size)
    mean, std = normalization(model)
    channels_last = device.type == "cuda" and config.channels_last
    model = model.to(device, memory_format=torch.channels_last) if channels_last else model.to(device)
    counts = np.bincount(data.targets["train"], minlength=2).tolist()
    loaders = {name: BatchLoader(data.images[name], data.targets[name], config.batch_size // world.size,
                                 shuffle=name == "train", seed=config.seed, device=device, rank=world.rank,
                                 world_size=world.size, balanced=name == "train" and config.sampler == "balanced")
               for name in ("train", "val", "test")}
    trainable = model
    if world.active:
        from torch.nn.parallel import DistributedDataParallel
        trainable = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return Setup(model=model, trainable=torch.compile(trainable) if config.compile else trainable,
                 optimizer=torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay),
                 loss_fn=engine.make_loss(config.loss, counts, config.focal_gamma).to(device),
                 train_tf=BatchTransform(mean, std, augment=config.aug, channels_last=channels_last,
                                         minority=int(np.argmin(counts)) if config.sampler == "balanced" else None),
                 eval_tf=BatchTransform(mean, std, channels_last=channels_last), loaders=loaders,
                 weights_source=model.weights_source, mean=mean, std=std)


def run_experiment(config: Config, *, data: PreparedData | None = None, parent_run_id: str | None = None,
                   resume_run_id: str | None = None, progress: bool = True) -> ExperimentResult:
    """Train and evaluate one configuration as one MLflow run; registers a model version if asked.

    A failure after the data is ready (weights, a diverging loss...) leaves a FAILED run saying why."""
    world, device = distributed.init(resolve_device(config.device))
    if world.active and resume_run_id:
        raise ConfigError("--resume runs in one process; resume without torchrun")
    if resume_run_id:
        tracking.check_resumable(resume_run_id)  # before any work
    seed_everything(config.seed, config.deterministic)
    if data is None:
        if not world.is_main:
            distributed.barrier()  # rank 0 writes the synthetic set and the disk cache first
        data = prepare_data(config, progress=progress and world.is_main)
        if world.is_main:
            distributed.barrier()
    progress = progress and world.is_main
    result = ExperimentResult("", config.name, config)
    setup = state = None
    if resume_run_id:  # the checkpoint is checked before the run's status changes: a refused resume leaves it as it was
        setup = build(config, data, device, world)
        state = _resume_state(resume_run_id, setup.model, setup.optimizer)
    run_context = tracking.start_run(run_name(config), parent_run_id=parent_run_id, resume_run_id=resume_run_id,
                                     tags={"pneumo_ml.model": config.model, tracking.EXPERIMENT_TAG: config.name}) \
        if world.is_main \
        else contextlib.nullcontext(tracking.NoRun())
    with run_context as run:
        result.run_id = run.run_id
        setup = setup or build(config, data, device, world)
        result.weights_source = setup.weights_source
        if state is None:
            _log_setup(run, config, data, setup.weights_source, device, world)
        else:
            _log_missing_epochs(run, state.history)
        writer = checkpoints.Writer(checkpoints.local_path(run.run_id)) if world.is_main else None
        last_checkpoint: dict = {}

        def on_epoch_end(fit_state: engine.FitState, row: dict) -> None:
            # the headline curves now; the secondary ones (epoch timing) after the final figures, see _log_series
            run.log_metrics({k: v for k, v in row.items() if k != "epoch" and tracking.is_headline(k)},
                            step=row["epoch"], wait=False)
            last_checkpoint["state"] = _snapshot(engine.checkpoint(setup.model, setup.optimizer, fit_state))
            if writer is not None:
                writer.submit(last_checkpoint["state"])

        try:
            with stage(result.timings, "train_s"):
                state = engine.fit(setup.trainable, setup.loaders["train"], setup.loaders["val"], setup.optimizer,
                                   setup.loss_fn, setup.train_tf, setup.eval_tf, epochs=config.epochs,
                                   seed=config.seed, monitor=config.monitor, patience=config.patience,
                                   amp=config.amp, progress=progress, state=state, on_epoch_end=on_epoch_end)
        except KeyboardInterrupt:
            if "state" in last_checkpoint:
                _log_checkpoint(run, last_checkpoint["state"])
            raise
        result.history, result.best_epoch = state.history, state.best_epoch
        _evaluate_and_log(run, result, setup, config, data, world)
    if writer is not None:
        writer.discard()  # the run is finished: nothing left to resume
    return result


def run_name(config: Config) -> str:
    """Unique enough to tell runs apart in the UI: 'ResNet50_Aug-224px-e5-s42' (the display name is a tag)."""
    return f"{experiment_name(config)}-{config.image_size}px-e{config.epochs}-s{config.seed}"


def _log_setup(run: tracking.RunLogger, config: Config, data: PreparedData, weights_source: str,
               device: torch.device, world: distributed.World) -> None:
    run.log_params({**config.to_dict(), "weights_source": weights_source, "device_type": device.type,
                    "world_size": world.size, **{f"split_{k}": len(v) for k, v in data.targets.items()}})
    run.log_text(config.to_yaml(), "config.yaml")
    run.log_table(data.split.frame, "data/split.csv")
    digest = run.log_dataset(data.split.frame, name=f"split-{Path(str(config.data)).name}", source=data.split.root)
    run.set_tags({tracking.DATA_DIGEST_TAG: digest, "pneumo_ml.weights_source": weights_source})
    if data.split.warnings:
        run.log_text("\n".join(data.split.warnings), "data/warnings.txt")
    if len(data.skipped):
        run.log_table(data.skipped, "data/skipped.csv")
    if data.leaks:
        run.log_text("\n".join(data.leaks), "data/leaks.txt")
        run.set_tags({"pneumo_ml.allowed_leaks": len(data.leaks)})


def _snapshot(checkpoint: dict) -> dict:
    """A CPU deep copy: the live tensors keep changing during the next epoch."""
    def to_cpu(value):
        if isinstance(value, torch.Tensor):
            return value.detach().to("cpu", copy=True)
        if isinstance(value, dict):
            return {k: to_cpu(v) for k, v in value.items()}
        if isinstance(value, list):
            return [to_cpu(v) for v in value]
        return copy.deepcopy(value)
    return to_cpu(checkpoint)


def _log_checkpoint(run: tracking.RunLogger, checkpoint: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "last.pt"
        torch.save(checkpoint, path)
        run.log_file(path, "checkpoints")
    log.warning("interrupted: epoch %d checkpoint logged; continue with `pneumo-ml train --resume %s`",
                checkpoint["epoch"], run.run_id)


def _resume_state(run_id: str, model, optimizer) -> engine.FitState:
    """The newest whole checkpoint of the run (the per-epoch local file, or the artifact an interrupt logged),
    restored into the model and optimizer; TrackingError when there is none to resume from."""
    candidates, problems = [], []
    local = checkpoints.local_path(run_id)
    if local.is_file():
        try:
            candidates.append(checkpoints.load(local, str(local)))
        except checkpoints.CheckpointError as e:
            problems.append(str(e))
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = tracking.RunLogger(run_id).download("checkpoints/last.pt", tmp)
            candidates.append(checkpoints.load(path, "artifact checkpoints/last.pt"))
        except TrackingError:
            pass
        except checkpoints.CheckpointError as e:
            problems.append(str(e))
    if not candidates:
        reason = "; ".join(problems) or "no checkpoint (it stopped before its first epoch ended; start a new run)"
        raise TrackingError(f"cannot resume run {run_id}: {reason}")
    saved = max(candidates, key=lambda c: c["epoch"])
    try:
        state = engine.restore(model, optimizer, saved)
    except (RuntimeError, ValueError, KeyError) as e:
        raise TrackingError(f"cannot resume run {run_id}: its checkpoint does not fit the model "
                                     f"({str(e).splitlines()[0][:200]})") from None
    log.info("resuming run %s after epoch %d", run_id, state.epoch)
    return state


def _log_missing_epochs(run: tracking.RunLogger, history: list[dict]) -> None:
    """Per-epoch metrics a hard kill kept from reaching the store (they are logged asynchronously)."""
    logged = {row["epoch"] for row in tracking.metric_history(run.run_id, ["val_loss"])}
    for row in history:
        if row["epoch"] not in logged:
            run.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])


def _evaluate_and_log(run, result: ExperimentResult, setup: Setup, config: Config, data: PreparedData,
                      world: distributed.World) -> None:
    model, loaders, eval_tf = setup.model, setup.loaders, setup.eval_tf
    with stage(result.timings, "evaluate_s"):
        # float32, as the pyfunc serves: the threshold chosen here is the one applied to served probabilities.
        val = engine.evaluate(model, loaders["val"], None, eval_tf, amp=False)
        test = engine.evaluate(model, loaders["test"], None, eval_tf, amp=False)
        threshold = metrics.youden_threshold(val["targets"], val["probs"])
        result.val, result.test, result.threshold = val, test, threshold
        patients = data.split.part("test")["patient_id"].to_numpy()
        final = {"best_epoch": float(result.best_epoch),
                 **metrics.evaluation_metrics(val, test, threshold, patients, n_boot=config.bootstrap,
                                              seed=config.seed)}
    result.metrics = final
    if not world.is_main:  # figures, Grad-CAM and the model come from rank 0 alone
        return
    with stage(result.timings, "plots_s"):
        log_plots(run, config.name, result.val, result.test, result.threshold, result.history, result.best_epoch,
                  (final["test_auc_ci_low"], final["test_auc_ci_high"]))
    with stage(result.timings, "gradcam_s"):
        final.update(_log_gradcam(run, model, eval_tf, config, data, test, threshold))
    run.log_metrics(final)
    # secondary figures after the headline ones, so that the run page's overview lists those first
    run.log_metrics({"n_skipped": float(len(data.skipped)), "data_seconds": data.seconds})
    for row in result.history:
        run.log_metrics({k: v for k, v in row.items() if k != "epoch" and not tracking.is_headline(k)},
                        step=row["epoch"])
    for name, part in (("test", test), ("val", val)):
        run.log_table(prediction_table(data.split.part(name), part["probs"], threshold),
                      f"predictions/{name}_predictions.csv")
    with stage(result.timings, "model_logging_s"):
        _log_and_register_model(run, result, setup, config, data)


def prediction_table(frame: pd.DataFrame, probs: np.ndarray, threshold: float) -> pd.DataFrame:
    """One row per image: its file, label, P(pneumonia) and the label at 0.5 and at the validation threshold."""
    labels = np.array(CLASSES)
    return frame.assign(probability=probs, predicted_at_0_5=labels[(probs >= 0.5).astype(int)],
                        predicted_at_val_threshold=labels[(probs >= threshold).astype(int)])


def log_plots(run, name: str, val: dict, test: dict, t: float, history: list[dict], best_epoch: int,
              auc_interval: tuple[float, float] | None = None) -> None:
    """Confusion matrices, ROC (the operating point at the validation threshold `t`, the test AUC's interval),
    precision-recall, calibration and (when there was training) the curves."""
    figures = {
        "plots/confusion_matrix.png": plots.confusion_matrices(
            test["targets"], test["probs"], {"threshold": 0.5, "validation threshold": t}, name),
        "plots/roc_curve.png": plots.roc_curve({
            "validation": (val["targets"], val["probs"], metrics.roc_auc(val["targets"], val["probs"])),
            "test": (test["targets"], test["probs"], metrics.roc_auc(test["targets"], test["probs"]))},
            f"{name} ROC", operating={"test": t}, intervals={"test": auc_interval} if auc_interval else None),
        "plots/pr_curve.png": plots.pr_curve({
            "test": (test["targets"], test["probs"], metrics.pr_auc(test["targets"], test["probs"]))},
            f"{name} precision–recall"),
        "plots/calibration.png": plots.calibration(test["targets"], test["probs"]),
    }
    if history:
        figures["plots/training_curves.png"] = plots.training_curves(history, best_epoch, name)
    for name, figure in figures.items():
        run.log_figure(figure, name)


def _log_gradcam(run, model, eval_tf, config: Config, data: PreparedData, test: dict, threshold: float) -> dict:
    """The Grad-CAM grid and overlays; on data with lesion masks, the localisation scores.

    One Grad-CAM pass covers both: the grid's examples and every PNEUMONIA test image with a mask."""
    if config.gradcam_images <= 0:
        return {}
    from . import explain

    images, part = data.images["test"], data.split.part("test")
    picks = explain.pick_examples(test["targets"], test["probs"], threshold,
                                  per_kind=max(1, config.gradcam_images // 4))
    masked = [i for i in range(len(part)) if test["targets"][i] == 1 and isinstance(part["mask"].iloc[i], str)]
    wanted = sorted({i for i, _ in picks} | set(masked))
    maps = dict(zip(wanted, explain.gradcam(unwrap(model), config.model, images[wanted], eval_tf, target=1)))
    index = [i for i, _ in picks]
    titles = [f"{kind}  true {CLASSES[test['targets'][i]]}\n"
              f"pred {CLASSES[int(test['probs'][i] >= threshold)]}  p={test['probs'][i]:.3f}"
              for i, kind in picks]
    outlines = [read_xray(part["mask"].iloc[i]) if isinstance(part["mask"].iloc[i], str) else None for i in index]
    run.log_figure(explain.gradcam_grid(images[index], [maps[i] for i in index], titles, masks=outlines),
                   "plots/gradcam.png")
    with tempfile.TemporaryDirectory() as tmp:
        for i, kind in picks:
            explain.save_overlay(Path(tmp) / f"{kind}_{Path(part['path'].iloc[i]).stem}.png", images[i], maps[i],
                                 title=f"{kind} p={test['probs'][i]:.3f} (threshold {threshold:.3f})",
                                 for_paper=True)
        run.log_dir(tmp, "gradcam")
    if not masked:
        return {}
    size = (config.image_size, config.image_size)
    masks = np.stack([np.asarray(Image.fromarray(read_xray(part["mask"].iloc[i])).resize(size, Image.NEAREST))
                      for i in masked])
    return explain.localisation_scores(np.stack([maps[i] for i in masked]), masks)


def _log_and_register_model(run, result: ExperimentResult, setup: Setup, config: Config, data: PreparedData) -> None:
    model, weights_source, mean, std = setup.model, setup.weights_source, setup.mean, setup.std
    card = ModelCard(architecture=config.model, image_size=config.image_size, mean=tuple(mean), std=tuple(std),
                     threshold=result.threshold, threshold_source="validation set, Youden's J",
                     name=f"{config.name} (run {run.run_id[:8]})", run_id=run.run_id, weights_source=weights_source)
    with tempfile.TemporaryDirectory() as tmp:
        weights, card_path = Path(tmp) / "weights.pt", Path(tmp) / "model_card.json"
        torch.save({k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}, weights)
        card.save(card_path)
        example = io.BytesIO()
        Image.fromarray(data.images["test"][0]).save(example, format="PNG")
        stats = save_reference(unwrap(model), card, data.images, Path(tmp))
        result.model_uri = run.log_model({"weights": weights, "model_card": card_path, "ood_stats": stats},
                                         example.getvalue())
    description = version_description(f"{config.name} ({config.model}, {config.image_size} px, {config.epochs} "
                                      f"epochs, seed {config.seed})", str(config.data),
                                      "/".join(str(len(data.targets[k])) for k in ("train", "val", "test")),
                                      weights_source, result.threshold, result.metrics)
    run.set_description(description)
    if config.register:
        best = next((r for r in result.history if r["epoch"] == result.best_epoch), {})
        tags = registry_tags(config.name, config.model, run.run_id, weights_source, result.threshold,
                             result.metrics, best.get("val_loss"))
        tags.update(comparability_tags(data.digest, config.image_size, {k: len(v) for k, v in data.targets.items()},
                                       float(np.mean(data.targets["val"]))))
        version = tracking.register(result.model_uri, name=config.registered_model_name, tags=tags,
                                    description=description)
        result.version = str(version.version)
        run.set_tags({tracking.REGISTERED_VERSION_TAG: result.version})


def registry_tags(experiment: str, architecture: str, run_id: str, weights_source: str, threshold: float,
                  logged: dict[str, float], val_loss: float | None) -> dict[str, str]:
    """A version's tags: what it is, the validation figures promotion ranks it by, its test figures."""
    tags = {"experiment": experiment, "architecture": architecture, "run_id": run_id,
            "weights_source": weights_source, "val_threshold": f"{threshold:.4f}"}
    validation = {"val_auc": logged.get("best_val_auc"), "val_accuracy": logged.get("best_val_accuracy"),
                  "val_loss": val_loss}
    # 4 decimals, for reading: promotion takes the exact figure from the run (tracking._version_figure)
    tags.update({k: f"{math.nan if v is None else v:.4f}" for k, v in validation.items()})
    for key in ("test_auc", "test_accuracy", "test_tuned_accuracy", "test_sensitivity", "test_specificity"):
        tags[key] = f"{logged.get(key, math.nan):.4f}"
    return tags


def version_description(what: str, data: str, sizes: str, weights_source: str, threshold: float,
                        logged: dict[str, float]) -> str:
    """A registered version's description: what it is, its data ('train/val/test' sizes) and weights, its
    headline test figures."""

    def figure(key: str) -> str:
        return f"{logged[key]:.3f} [{logged[f'{key}_ci_low']:.3f}, {logged[f'{key}_ci_high']:.3f}]"

    return (f"{what}. Data: {data}, {sizes} train/val/test images. Weights: {weights_source}. Test AUC "
            f"{figure('test_auc')}; at the validation threshold {threshold:.3f}: accuracy "
            f"{figure('test_tuned_accuracy')}, sensitivity {figure('test_tuned_sensitivity')}, specificity "
            f"{figure('test_tuned_specificity')} (patient-level 95 % bootstrap intervals). {NOTICE_SENTENCE}")


def summary_table(result: ExperimentResult) -> str:
    """The end-of-run table a terminal user reads."""
    m = result.metrics
    registered = f", registered version {result.version}" if result.version else ""
    lines = [f"{result.name}: run {result.run_id}{registered}",
             f"  best epoch {result.best_epoch} of {len(result.history)}, validation threshold {result.threshold:.3f}",
             f"  {'metric':<12}{'at 0.5':>22}{'at val threshold':>24}"]
    def with_ci(key: str, width: int) -> str:
        nan = math.nan
        text = f"{m.get(key, nan):.3f} [{m.get(key + '_ci_low', nan):.2f}, {m.get(key + '_ci_high', nan):.2f}]"
        return f"{text:>{width}}"

    for name in ("accuracy", "sensitivity", "specificity", "f1"):
        lines.append(f"  {name:<12}{with_ci(f'test_{name}', 22)}{with_ci(f'test_tuned_{name}', 24)}")
    lines.append(f"  {'AUC':<12}{with_ci('test_auc', 22)}")
    if "cam_pointing_game" in m:
        lines.append(f"  Grad-CAM pointing game {m['cam_pointing_game']:.2f} "
                     f"(uniform map {m['cam_pointing_game_uniform']:.2f}), energy in lesion "
                     f"{m['cam_energy_in_mask']:.2f} (uniform {m['cam_energy_in_mask_uniform']:.2f})")
    lines.append("  test figures on the test split (95 % intervals: patients resampled within each class); "
                 f"{NOTICE}")
    return "\n".join(lines)
