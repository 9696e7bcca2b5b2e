"""Combine logged models into an ensemble run: read back what each member's run logged (its validation and test
predictions, its model files), check that they share one split, evaluate the mean probability with the same
metrics, intervals and plots as any model, log it as one pyfunc and register it.

Used by the suite (its finished experiments) and by `pneumo-ml ensemble` (any logged or registered models).
Research use, not for diagnosis.
"""
from __future__ import annotations

import io
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.metrics import log_loss

from . import metrics, tracking
from .comparison import Outcome
from .config import seed_suffix
from .ensemble import ARCHITECTURE, CARD_FILE, NAME, EnsembleCard, EnsembleError, mean_probabilities, write_folder
from .io import ImageReadError, read_xray
from .promotion import COMPARABILITY_TAGS, IMAGE_SIZE_TAG, SPLIT_SIZES_TAG
from .train import log_plots, prediction_table, registry_tags, version_description

MEMBERS_TAG = "ensemble_members"  # on the ensemble's version: its members' versions, comma-separated


@dataclass
class Member:
    uri: str
    name: str  # 'pneumonia-classifier v3 (@champion)', or the run
    run_id: str
    version: str | None
    val: pd.DataFrame  # its run's predictions/val_predictions.csv
    test: pd.DataFrame
    files: Path  # its model's artifacts: weights, card, training-feature statistics
    tags: dict  # its version's tags ({} when it is not registered)
    data_digest: str  # its run's DATA_DIGEST_TAG: the split it was trained and evaluated on
    data_source: str  # its run's `data` param


@dataclass
class EnsembleResult:
    run_id: str
    version: str | None
    outcome: Outcome
    metrics: dict


def load_member(uri: str, tmp: Path) -> Member:
    run_id, registered, version = tracking.model_source(uri)
    if not run_id:
        raise EnsembleError(f"{uri}: an ensemble member must be a logged model (models:/ or runs:/), with the run "
                            "that evaluated it")
    logger = tracking.RunLogger(run_id)
    where = tmp / run_id
    val = pd.read_csv(logger.download("predictions/val_predictions.csv", where))
    test = pd.read_csv(logger.download("predictions/test_predictions.csv", where))
    files = tracking.download_model(uri) / "artifacts"
    if (files / "ensemble" / CARD_FILE).exists():
        raise EnsembleError(f"{uri} is itself an ensemble: name its members instead")
    run = tracking.get_run(run_id).data
    return Member(uri, tracking.describe_model_uri(uri), run_id, version, val, test, files,
                  tracking.version_tags(registered, version) if version else {},
                  run.tags.get(tracking.DATA_DIGEST_TAG, ""), run.params.get("data", "unknown"))


def check_same_split(members: list[Member]) -> None:
    """Members must have been evaluated on the same validation and test images, in the same order."""
    first = members[0]
    for other in members[1:]:
        for part in ("val", "test"):
            a, b = getattr(first, part), getattr(other, part)
            if list(a["path"].astype(str)) != list(b["path"].astype(str)):
                raise EnsembleError(
                    f"{first.name} and {other.name} were evaluated on different {part} splits "
                    f"({len(a)} vs {len(b)} images, {len(set(a['path']) ^ set(b['path']))} not shared): an ensemble "
                    "combines models evaluated on the same split")


def build_ensemble(uris: list[str], *, name: str = NAME, parent_run_id: str | None = None, register: bool = True,
                   registered_model_name: str = tracking.MODEL_NAME, bootstrap: int = 1000, seed: int = 42
                   ) -> EnsembleResult:
    if len(uris) < 2:
        raise EnsembleError(f"an ensemble needs at least two members, got {len(uris)}")
    if len(set(uris)) != len(uris):
        raise EnsembleError("a member is named twice: " + ", ".join(sorted({u for u in uris if uris.count(u) > 1})))
    with tempfile.TemporaryDirectory() as tmp:
        members = [load_member(uri, Path(tmp)) for uri in uris]
        check_same_split(members)
        first = members[0]
        val = {"targets": first.val["target"].to_numpy(),
               "probs": mean_probabilities([m.val["probability"].to_numpy() for m in members])}
        test = {"targets": first.test["target"].to_numpy(),
                "probs": mean_probabilities([m.test["probability"].to_numpy() for m in members])}
        threshold = metrics.youden_threshold(val["targets"], val["probs"])
        groups = first.test["patient_id"].astype(str).to_numpy()
        final = metrics.evaluation_metrics(val, test, threshold, groups, n_boot=bootstrap, seed=seed)
        val_loss = float(log_loss(val["targets"], val["probs"], labels=[0, 1]))
        weights_source = "ensemble of " + ", ".join(m.name for m in members)
        with tracking.start_run(f"{name.removesuffix(seed_suffix(seed))}-{len(members)}models-s{seed}",
                                parent_run_id=parent_run_id,
                                tags={"pneumo_ml.model": ARCHITECTURE, tracking.DATA_DIGEST_TAG: first.data_digest,
                                      tracking.EXPERIMENT_TAG: name}) as run:
            run.log_params({"model": ARCHITECTURE, "members": ", ".join(m.name for m in members),
                            "member_uris": ", ".join(uris), "member_run_ids": ", ".join(m.run_id for m in members),
                            "member_versions": ", ".join(m.version or "" for m in members),
                            "combination": "mean probability", "bootstrap": bootstrap, "seed": seed,
                            "weights_source": weights_source})
            run.log_metrics({**final, "val_loss": val_loss})
            log_plots(run, name, val, test, threshold, [], 0, (final["test_auc_ci_low"], final["test_auc_ci_high"]))
            for part, frame, probs in (("val", first.val, val["probs"]), ("test", first.test, test["probs"])):
                run.log_table(prediction_table(frame, probs, threshold), f"predictions/{part}_predictions.csv")
            card = EnsembleCard([m.name for m in members], threshold, "validation set, Youden's J",
                                name=f"{name} (run {run.run_id[:8]})", run_id=run.run_id, weights_source=weights_source,
                                member_versions=[m.version or "" for m in members])
            folder = write_folder(Path(tmp) / "ensemble", [m.files for m in members], card)
            model_uri = run.log_model({"ensemble": folder}, _example_png(first.test, card.image_size))
            description = version_description(
                f"{name}: the mean probability of {', '.join(m.name for m in members)}", first.data_source,
                first.tags.get(SPLIT_SIZES_TAG) or f"?/{len(first.val)}/{len(first.test)}", weights_source,
                threshold, final)
            run.set_description(description)
            version = None
            if register:
                tags = registry_tags(name, ARCHITECTURE, run.run_id, weights_source, threshold, final, val_loss)
                tags.update(_comparability(members, card.image_size))
                tags[MEMBERS_TAG] = ",".join(m.version or m.run_id for m in members)
                version = str(tracking.register(model_uri, name=registered_model_name, tags=tags,
                                                description=description).version)
                run.set_tags({tracking.REGISTERED_VERSION_TAG: version})
    outcome = Outcome(name, seed, run.run_id, "FINISHED", threshold=threshold, val_targets=val["targets"],
                      val_probs=val["probs"], test_targets=test["targets"], test_probs=test["probs"], version=version,
                      test_groups=groups, test_paths=first.test["path"].astype(str).to_numpy(),
                      weights_source=weights_source)
    return EnsembleResult(run.run_id, version, outcome, {**final, "val_loss": val_loss})


def _comparability(members: list[Member], image_size: int) -> dict:
    """The members' split tags when they all carry the same ones (they were trained on one split); the input
    size is the ensemble's own."""
    keys = [k for k in COMPARABILITY_TAGS if k != IMAGE_SIZE_TAG]
    shared = {tuple(m.tags.get(k) for k in keys) for m in members}
    if len(shared) != 1 or None in next(iter(shared)):
        return {}
    return {**{k: members[0].tags[k] for k in keys}, IMAGE_SIZE_TAG: str(image_size)}


def _example_png(test: pd.DataFrame, size: int) -> bytes:
    """The input example: the first test image when it is still on disk, else a grey square of the input size."""
    try:
        image = read_xray(str(test["path"].iloc[0]))
    except (ImageReadError, OSError, IndexError):
        image = np.full((size, size), 128, dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def summary(result: EnsembleResult) -> str:
    m = result.metrics
    registered = f", registered version {result.version}" if result.version else ""
    auc = f"test AUC {m['test_auc']:.3f} [{m['test_auc_ci_low']:.3f}, {m['test_auc_ci_high']:.3f}]"
    lines = [f"{result.outcome.name}: run {result.run_id}{registered}", auc,
             f"validation AUC {m['best_val_auc']:.3f}, threshold {result.outcome.threshold:.3f} (chosen on "
             f"validation); test accuracy there {m['test_tuned_accuracy']:.3f}"]
    if math.isnan(m["test_auc"]):
        lines.append("the test split holds one class only: no AUC")
    return "\n".join(lines)
