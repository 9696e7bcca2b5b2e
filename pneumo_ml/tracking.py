"""The one place that talks to MLflow: runs, params, metrics, artifacts, the pyfunc model and the registry.

Tracking URI: MLflow's default (sqlite:///mlflow.db in the working folder) unless MLFLOW_TRACKING_URI is set.
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import math
import os
import re
import shutil
import signal
import tempfile
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import mlflow
import pandas as pd
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME, MLFLOW_RUN_NOTE

from . import integrity, procs, store
from .code_closure import PACKAGE_DIR, imported_modules
from .errors import TrackingError
from .vocabulary import CLASSES, EXPERIMENT, MODEL_NAME, NOTICE_SENTENCE, PREDICTION_FIELDS, PROMOTION_DEFAULTS

log = logging.getLogger(__name__)
# MLflow's advice that does not apply here: the pyfunc has an explicit signature (no type hints needed), the
# split's int target column never has missing values, and a local folder is a local dataset source.
for _hint in ("type hints to the `predict` method", "Any type hint is inferred", "Inferred schema contains integer",
              "can be interpreted in multiple ways"):
    warnings.filterwarnings("ignore", message=f".*{re.escape(_hint)}.*")

SERVING_REQUIREMENTS = ("torch", "torchvision", "timm", "numpy", "pandas", "pillow", "pydicom", "scipy",
                        "captum", "matplotlib", "mlflow")


INTEGRITY_TAG = "pneumo_ml.model_sha256"  # SHA-256 of the model's file manifest (integrity.MANIFEST_ARTIFACT)
DATA_DIGEST_TAG = "pneumo_ml.data_digest"  # on a run: the digest of the split it logged as its data set
EXPERIMENT_TAG = "pneumo_ml.experiment"  # on a run: the experiment's display name (SmallCNN, Ensemble, ...)
REGISTERED_VERSION_TAG = "pneumo_ml.registered_version"  # on a run: the version its model became
PROCESS_TAG = "pneumo_ml.process"  # 'host pid start' of the process that has the run open


# The MLflow UI groups metric charts by their "section/" prefix (3.17: the named sections alphabetically, then the
# ungrouped "Model metrics"), and the run page's overview lists metrics in the order they were first logged: the
# headline figures (DESIGN.md's contract names) stay ungrouped and are logged before everything else, which goes
# into a section.
HEADLINE_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_auc", "test_accuracy", "test_auc",
                    "test_sensitivity", "test_specificity", "test_f1", "n_finished", "n_failed")
METRIC_SECTIONS = (("test_tuned_", "at_val_threshold/"), ("best_", "best/"), ("time_", "time/"), ("test_", "test/"))
RENAMED_METRICS = {"val_threshold": "at_val_threshold/threshold", "n_skipped": "data/n_skipped",
                   "data_seconds": "data/seconds", "epoch_seconds": "time/epoch_s",
                   "train_images_per_s": "time/train_images_per_s"}


def metric_key(name: str) -> str:
    """The name a metric is logged under: a headline figure, its interval bounds and the Grad-CAM scores as
    they are; the rest in a section (`at_val_threshold/sensitivity`, `best/val_auc`, `test/brier`, `time/train_s`,
    `data/n_skipped`)."""
    if name.startswith("cam_") or name.removesuffix("_ci_low").removesuffix("_ci_high") in HEADLINE_METRICS:
        return name
    if name in RENAMED_METRICS:
        return RENAMED_METRICS[name]
    return next((section + name[len(prefix):] for prefix, section in METRIC_SECTIONS if name.startswith(prefix)),
                name)


def is_headline(name: str) -> bool:
    return "/" not in metric_key(name)


def run_metric(run, name: str, default: float | None = None) -> float | None:
    """A logged run's final value of metric `name` (the name the code uses, see metric_key)."""
    return run.data.metrics.get(metric_key(name), default)


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the run is closed as KILLED."""


def client() -> MlflowClient:
    ensure_store()
    return MlflowClient()


_READY_STORES: set[str] = set()
STORE_LOCK_TIMEOUT_S = 600  # a first migration takes seconds; a lock held longer is a hung process


def ensure_store() -> None:
    """Create or migrate a SQLite tracking store under an inter-process lock, once per process and URI.

    MLflow's schema migration is not safe against concurrent first use: two processes migrating one new file at
    once leave it half-migrated for good. Other stores (a server, PostgreSQL) migrate on their own side."""
    uri = mlflow.get_tracking_uri()
    if uri in _READY_STORES:
        return
    path = store.sqlite_path(uri)
    if path is not None:
        store.check_openable(path)
        with store.first_use_lock(path):
            store.check_not_half_migrated(path)
            fresh = MlflowClient()
            fresh.search_experiments(max_results=1)  # creates or migrates the tracking tables
            fresh.search_registered_models(max_results=1)  # and the registry's
    _READY_STORES.add(uri)


def repair_store() -> list[str]:
    """Drop what an interrupted migration left in the SQLite store, then finish the migration (`mlflow db
    upgrade`); returns the dropped tables."""
    from mlflow.store.db.utils import _upgrade_db, create_sqlalchemy_engine

    uri = mlflow.get_tracking_uri()
    path = store.sqlite_path(uri)
    if path is None:
        raise TrackingError(f"{uri}: only a SQLite tracking store is repaired here (a server migrates its own)")
    store.check_openable(path)
    with store.first_use_lock(path):
        dropped = store.drop_leftovers(path)
        engine = create_sqlalchemy_engine(uri)
        try:
            _upgrade_db(engine)
        finally:
            engine.dispose()
    _READY_STORES.discard(uri)
    ensure_store()
    return dropped


def experiment_id(name: str = EXPERIMENT) -> str:
    c = client()
    found = c.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return c.create_experiment(name)
    except MlflowException:  # another process created it meanwhile
        return c.get_experiment_by_name(name).experiment_id


def _param_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class RunLogger:
    """Logs to one run by id (no global active-run state, so a suite and threads stay simple)."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.client = client()
        self._pending: list = []

    @property
    def params(self) -> dict[str, str]:
        return self.client.get_run(self.run_id).data.params

    def log_params(self, params: dict[str, Any]) -> None:
        """Log params not logged yet: `mlflow run` already logged its -P values, in its own spelling."""
        present = self.params
        fresh = [Param(k, _param_text(v)[:6000]) for k, v in params.items() if v is not None and k not in present]
        for start in range(0, len(fresh), 100):
            self.client.log_batch(self.run_id, params=fresh[start:start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None, *, wait: bool = True) -> None:
        now = _now_ms()
        batch = [Metric(metric_key(k), float(v), now, step or 0) for k, v in metrics.items()
                 if v is not None and not (isinstance(v, float) and math.isnan(v))]
        batch.sort(key=lambda m: "/" in m.key)  # headline figures first: the overview lists them in this order
        if not batch:
            return
        if wait:
            self.client.log_batch(self.run_id, metrics=batch)
        else:  # per-epoch metrics: off the training loop's critical path
            self._pending.append(self.client.log_batch(self.run_id, metrics=batch, synchronous=False))

    def flush(self) -> None:
        for operation in self._pending:
            operation.wait()
        self._pending.clear()

    def set_description(self, text: str) -> None:
        """The run page's "Description" (MLflow keeps it as the tag mlflow.note.content)."""
        self.set_tags({MLFLOW_RUN_NOTE: text})

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_file(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dir(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_figure(self, figure, artifact_file: str) -> None:
        """The PNG, and an SVG of the same figure beside it (for a paper)."""
        self.client.log_figure(self.run_id, figure, artifact_file)
        if artifact_file.endswith(".png"):
            self.client.log_figure(self.run_id, figure, artifact_file.removesuffix(".png") + ".svg")

    def log_table(self, frame: pd.DataFrame, artifact_file: str) -> None:
        self.log_text(frame.to_csv(index=False), artifact_file)

    def log_dataset(self, frame: pd.DataFrame, *, name: str, source: str, context: str = "training") -> str:
        """The split manifest as an MLflow dataset input (with its digest); returns the digest."""
        dataset = mlflow.data.from_pandas(frame, source=source, name=name, targets="label")
        entity = dataset._to_mlflow_entity()
        inputs = [DatasetInput(entity, tags=[InputTag("mlflow.data.context", context)])]
        _retry_on_unique_clash(lambda: self.client.log_inputs(self.run_id, datasets=inputs))
        return entity.digest

    def download(self, artifact_path: str, dst: str | os.PathLike) -> Path:
        try:
            return Path(self.client.download_artifacts(self.run_id, artifact_path, str(dst)))
        except (MlflowException, OSError) as e:
            raise TrackingError(f"run {self.run_id}: no artifact {artifact_path!r}") from e

    def log_model(self, artifacts: dict[str, Path], example_png: bytes) -> str:
        """The pyfunc (models-from-code; the package modules it imports alongside, so the model runs as it was
        trained);
        returns its model URI. `artifacts`: weights, model_card and ood_stats files, or an ensemble folder."""
        import base64
        example = pd.DataFrame({"image": [base64.b64encode(example_png).decode("ascii")]})
        with tempfile.TemporaryDirectory() as tmp:
            code = Path(tmp) / "pneumo_ml"
            code.mkdir()
            for module in imported_modules("pyfunc_model") | {"__init__"}:
                shutil.copy2(PACKAGE_DIR / f"{module}.py", code)
            # The model record goes in its run's experiment (by default MLflow files it under "Default").
            logged = mlflow.initialize_logged_model(name="model", source_run_id=self.run_id,
                                                    experiment_id=self.client.get_run(self.run_id).info.experiment_id)
            info = Model.log(
                artifact_path=None, name="model", flavor=mlflow.pyfunc, run_id=self.run_id, model_id=logged.model_id,
                python_model=str(PACKAGE_DIR / "pyfunc_model.py"),
                artifacts={key: str(path) for key, path in artifacts.items() if path},
                code_paths=[str(code)], pip_requirements=serving_requirements(),
                # declared so load_model(model_config=...) / mlflow.models.evaluate(model_config=...) can override them
                model_config={"inference_device": "cpu", "output": "table"},
                signature=serving_signature(), input_example=example,
            )
        self._record_integrity(info.model_uri)
        return info.model_uri

    def _record_integrity(self, model_uri: str) -> None:
        """The SHA-256 of every file of the logged model (a run artifact), and that manifest's own SHA-256 as a
        tag in the tracking store: loading refuses files that differ (see `load_predictor`)."""
        with tempfile.TemporaryDirectory() as tmp:
            text = integrity.manifest(Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)))
        self.log_text(text, integrity.MANIFEST_ARTIFACT)
        self.set_tags({INTEGRITY_TAG: integrity.text_sha256(text)})

    def end(self, status: str = "FINISHED") -> None:
        self.flush()
        self.client.set_terminated(self.run_id, status)


class NoRun:
    """What ranks other than 0 hold instead of a run: every logging call does nothing."""

    run_id = ""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def serving_signature() -> ModelSignature:
    return ModelSignature(
        inputs=Schema([ColSpec("string", "image")]),
        outputs=Schema([*(ColSpec(kind, name) for name, kind in PREDICTION_FIELDS.items()),
                        ColSpec("string", "gradcam_png", required=False),
                        ColSpec("string", "error", required=False)]),
        params=ParamSchema([ParamSpec(name, kind, default) for name, (kind, default) in request_params().items()]),
    )


def request_params() -> dict:
    from .serving import REQUEST_PARAMS  # imported here: serving loads torch, which most commands never need
    return REQUEST_PARAMS


def serving_requirements() -> list[str]:
    pins = []
    for name in SERVING_REQUIREMENTS:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pins.append(name)
    return pins


def _now_ms() -> int:
    return int(time.time() * 1000)


@contextlib.contextmanager
def start_run(run_name: str, *, parent_run_id: str | None = None, resume_run_id: str | None = None,
              tags: dict[str, str] | None = None, experiment: str = EXPERIMENT) -> Iterator[RunLogger]:
    """Open (or join, or resume) a run; close it FINISHED, KILLED (Ctrl-C, SIGTERM) or FAILED.

    Joins the run `mlflow run` opened (MLFLOW_RUN_ID) when there is no parent; `resume_run_id` reopens a
    killed run. SIGTERM is turned into KeyboardInterrupt while the run is open.
    """
    c = client()
    env_run = os.environ.pop("MLFLOW_RUN_ID", None) if parent_run_id is None else None
    run_id = resume_run_id or env_run
    tags = {**(tags or {}), PROCESS_TAG: procs.owner_token()}
    if run_id:
        if resume_run_id:
            check_resumable(resume_run_id)
        try:  # a run `mlflow run` opened has a random name: it gets the descriptive one
            c.update_run(run_id, status="RUNNING", name=None if resume_run_id else run_name)
        except MlflowException as e:
            raise TrackingError(f"cannot open run {run_id}: {str(e).splitlines()[0]}") from e
        RunLogger(run_id).set_tags(tags)
    else:
        all_tags = {MLFLOW_RUN_NAME: run_name, **tags}
        if parent_run_id:
            all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        run_id = c.create_run(experiment_id(experiment), tags=all_tags, run_name=run_name).info.run_id
    logger = RunLogger(run_id)
    previous = _raise_on_sigterm()
    try:
        yield logger
    except KeyboardInterrupt:
        logger.end("KILLED")
        raise
    except BaseException as e:
        with contextlib.suppress(Exception):
            first_line = str(e).splitlines()[0] if str(e) else ""
            logger.set_tags({"pneumo_ml.error": f"{e.__class__.__name__}: {first_line}"[:500]})
        logger.end("FAILED")
        raise
    else:
        logger.end("FINISHED")
    finally:
        _restore_sigterm(previous)


def _raise_on_sigterm():
    import threading
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise Interrupted(f"signal {signum}")
    return signal.signal(signal.SIGTERM, handler)


def _restore_sigterm(previous) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def check_resumable(run_id: str) -> None:
    """Refuse, before anything changes, a run that is finished or whose process still runs."""
    run = get_run(run_id)
    status = run.info.status
    if status == "FINISHED":
        raise TrackingError(f"run {run_id} already finished; nothing to resume")
    if status in ("RUNNING", "SCHEDULED"):
        owner = run.data.tags.get(PROCESS_TAG, "")
        verdict = procs.owner_alive(owner) if owner else None
        host, _, rest = owner.partition(" ")
        if verdict is True:
            raise TrackingError(f"run {run_id} is still running (pid {rest.split(' ')[0]} on {host}); stop it first")
        if verdict is None:
            where = f"on host {host}" if owner else "in a process it did not record"
            raise TrackingError(f"run {run_id} is RUNNING {where}; only there can pneumo-ml tell whether it still "
                                f"runs: resume it there")


def resumable(run) -> bool:
    """A run that --resume may continue: killed, or left RUNNING by a process that is gone."""
    status = run.info.status
    if status == "KILLED":
        return True
    owner = run.data.tags.get(PROCESS_TAG)
    return status == "RUNNING" and bool(owner) and procs.owner_alive(owner) is False


def get_run(run_id: str):
    try:
        return client().get_run(run_id)
    except MlflowException as e:
        raise TrackingError(f"no run {run_id!r} in {mlflow.get_tracking_uri()}") from e


def metric_history(run_id: str, names: list[str]) -> list[dict]:
    """Per-epoch rows (epoch = step) of the named metrics, as the engine's history has them."""
    rows: dict[int, dict] = {}
    for name in names:
        for m in client().get_metric_history(run_id, metric_key(name)):
            rows.setdefault(m.step, {"epoch": m.step})[name] = m.value
    return [rows[step] for step in sorted(rows)]


def child_runs(parent_run_id: str) -> list:
    run = get_run(parent_run_id)
    return client().search_runs([run.info.experiment_id],
                                filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'",
                                max_results=1000)


# --- registry -------------------------------------------------------------------------------------------

MODEL_DESCRIPTION = (
    f"Chest X-ray classifier, {' vs '.join(CLASSES)}, trained, evaluated and registered by pneumo-ml. "
    f"{NOTICE_SENTENCE} Each version's description names its experiment, data, weights and test figures (with "
    "patient-level 95 % intervals); its tags hold the validation figures promotion ranks it by. `pneumo-ml promote` "
    "points @champion at the version with the best validation metric among versions evaluated on the same split "
    "(never by a test metric), and @challenger at the runner-up.")


def register(model_uri: str, *, name: str = MODEL_NAME, tags: dict[str, Any] | None = None,
             description: str | None = None):
    """A new version of `name` from a logged model, tagged (experiment, run, validation and test figures) and
    described; the registered model gets MODEL_DESCRIPTION when it has none."""
    ensure_store()
    version = mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in (tags or {}).items()})
    c = client()
    if not c.get_registered_model(name).description:
        c.update_registered_model(name, description=MODEL_DESCRIPTION)
    if description:
        c.update_model_version(name, str(version.version), description=description)
    digest = client().get_run(version.run_id).data.tags.get(INTEGRITY_TAG) if version.run_id else None
    if digest:
        set_version_tags(name, str(version.version), {"model_sha256": digest})
    return version


def model_versions(name: str = MODEL_NAME) -> list:
    try:
        return client().search_model_versions(f"name = '{name}'", max_results=10_000)
    except MlflowException as e:
        raise TrackingError(f"cannot list versions of {name!r}: {str(e).splitlines()[0]}") from e


def registered_model_names() -> list[str]:
    try:
        return [m.name for m in client().search_registered_models(max_results=1000)]
    except MlflowException:
        return []


def alias_version(name: str, alias: str) -> str | None:
    try:
        return str(client().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def set_alias(name: str, alias: str, version: str) -> None:
    _retry_on_unique_clash(lambda: client().set_registered_model_alias(name, alias, str(version)))


def _retry_on_unique_clash(call, attempts: int = 5):
    """MLflow's SQL store checks, then inserts (a data set input, an alias, a tag): two clients doing the same at the
    same moment collide on its UNIQUE key. All these calls are idempotent, so the loser simply tries again."""
    for attempt in range(attempts):
        try:
            return call()
        except MlflowException as e:
            if "UNIQUE" not in str(e) and "IntegrityError" not in str(e) or attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def set_version_tags(name: str, version: str, tags: dict[str, Any]) -> None:
    c = client()
    for key, value in tags.items():
        _retry_on_unique_clash(functools.partial(c.set_model_version_tag, name, str(version), key, str(value)))


def model_aliases(name: str = MODEL_NAME) -> dict[str, str]:
    try:
        return {alias: str(version) for alias, version in client().get_registered_model(name).aliases.items()}
    except MlflowException:
        return {}


# --- loading models back --------------------------------------------------------------------------------

def describe_model_uri(uri: str) -> str:
    """A human name for what a URI points at: 'pneumonia-classifier v3 (@champion)', or the run."""
    if uri.startswith("models:/"):
        ref = uri[len("models:/"):]
        if "@" in ref:
            name, alias = ref.split("@", 1)
            version = alias_version(name, alias)
            return f"{name} v{version} (@{alias})" if version else ref
        if "/" in ref:
            name, version = ref.split("/", 1)
            return f"{name} v{version}"
        return ref
    return uri


def load_predictor(uri: str, device: str = "cpu"):
    """The Predictor inside a logged pyfunc (any models:/ or runs:/ URI, or a local model folder), loaded only
    once its files match the SHA-256 manifest training recorded."""
    if uri.startswith(("models:/", "runs:/")):
        ensure_store()
    try:
        verified = _verified_copy(uri)
        model = mlflow.pyfunc.load_model(str(verified or uri), model_config={"inference_device": device})
    except (MlflowException, OSError, ValueError) as e:  # ValueError: pneumo_ml.predictor.ModelCardError
        from .suggest import registry_hint
        raise TrackingError(f"cannot load model {uri!r}: {str(e).splitlines()[0]}{registry_hint(uri)}") from e
    predictor = model.unwrap_python_model().predictor
    predictor.card.name = describe_model_uri(uri) or predictor.card.name
    return predictor


def download_model(uri: str) -> Path:
    """A local copy of a logged model (verified against its manifest when it has one), in a temporary folder
    removed at exit."""
    if uri.startswith(("models:/", "runs:/")):
        ensure_store()
    try:
        verified = _verified_copy(uri)
        if verified is not None:
            return verified
        folder = Path(tempfile.mkdtemp(prefix="pneumo-ml-model-"))
        atexit.register(shutil.rmtree, folder, True)
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(folder)))
    except (MlflowException, OSError) as e:
        raise TrackingError(f"cannot load model {uri!r}: {str(e).splitlines()[0]}") from e


def model_source(uri: str) -> tuple[str | None, str, str | None]:
    """(the run that logged the model a URI names, the registered name, its version; None when unregistered)."""
    run_id = _source_run(uri)
    name, version = MODEL_NAME, None
    if uri.startswith("models:/"):
        ref = uri[len("models:/"):].rstrip("/")
        if "@" in ref:
            name, alias = ref.split("@", 1)
            version = alias_version(name, alias)
        elif "/" in ref:
            name, version = ref.split("/", 1)
            if version == "latest":
                version = str(max(int(v.version) for v in model_versions(name)))
    if version is None and run_id:
        version = get_run(run_id).data.tags.get(REGISTERED_VERSION_TAG)
    return run_id, name, version


def version_tags(name: str, version: str) -> dict[str, str]:
    try:
        return dict(client().get_model_version(name, str(version)).tags)
    except MlflowException:
        return {}


def _verified_copy(uri: str) -> Path | None:
    """A local copy of the model whose files match its recorded manifest (IntegrityError otherwise); None, with a
    warning, for a model without a record (a local folder, or logged before records were kept)."""
    run_id = _source_run(uri)
    digest = get_run(run_id).data.tags.get(INTEGRITY_TAG) if run_id else None
    if not digest:
        log.warning("%s: no integrity record (a local folder, or logged by an older pneumo-ml): loaded unverified",
                    uri)
        return None
    folder = Path(tempfile.mkdtemp(prefix="pneumo-ml-model-"))
    atexit.register(shutil.rmtree, folder, True)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(folder / "model")))
    recorded = RunLogger(run_id).download(integrity.MANIFEST_ARTIFACT, folder / "record").read_text()
    integrity.verify(local, recorded, digest, describe_model_uri(uri))
    return local


def _source_run(uri: str) -> str | None:
    """The run that logged the model a URI names; None for a local folder."""
    c = client()
    try:
        if uri.startswith("runs:/"):
            return uri[len("runs:/"):].split("/", 1)[0]
        if not uri.startswith("models:/"):
            return None
        ref = uri[len("models:/"):].rstrip("/")
        if "@" in ref:
            return c.get_model_version_by_alias(*ref.split("@", 1)).run_id
        if "/" in ref:
            name, version = ref.split("/", 1)
            if version == "latest":
                return max(model_versions(name), key=lambda v: int(v.version)).run_id
            return c.get_model_version(name, version).run_id
        return c.get_logged_model(ref).source_run_id
    except (MlflowException, ValueError) as e:  # ValueError: no versions to take the latest of
        raise TrackingError(f"cannot load model {uri!r}: {str(e).splitlines()[0]}") from e


def tracking_uri() -> str:
    return mlflow.get_tracking_uri()


def artifact_location(run_id: str, path: str) -> str:
    """Where a reader finds a run's artifact: its page in the UI of a tracking server, a local path for a local
    store, else its URI."""
    if tracking_uri().startswith(("http://", "https://")):
        return f"{run_link(run_id)}/artifacts/{path}"
    root = get_run(run_id).info.artifact_uri.rstrip("/")
    local = root.removeprefix("file://") if root.startswith(("file://", "/")) else None
    return str(Path(local) / path) if local is not None else f"{root}/{path}"


def run_link(run_id: str) -> str:
    """The run's page in the MLflow UI when the tracking URI is a server; else the run id."""
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{get_run(run_id).info.experiment_id}/runs/{run_id}"
    return f"run {run_id}"


def ui_hint() -> str:
    """How to open the MLflow UI on this tracking store."""
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser (the tracking server's UI)"
    return f"mlflow ui --backend-store-uri {uri}  (then open http://127.0.0.1:5000)"



def promote(name: str = MODEL_NAME, *, metric: str = PROMOTION_DEFAULTS["metric"],
            alias: str = PROMOTION_DEFAULTS["alias"], margin: float = PROMOTION_DEFAULTS["margin"],
            challenger: str | None = PROMOTION_DEFAULTS["challenger"], experiments: dict[str, str] | None = None):
    """Set `alias` on the validation winner among comparable versions if it beats the current holder by
    `margin`; `challenger` on the runner-up; the decision and its reason go on the winner's version tags.
    `experiments` (version -> experiment, a suite's versions) ranks those by experiment (promotion.decide)."""
    from .promotion import Candidate, check_metric, decide, split_of
    check_metric(metric)
    versions = model_versions(name)
    if not versions:
        raise TrackingError(f"no registered versions of {name!r} in {mlflow.get_tracking_uri()}")
    candidates = [Candidate(str(v.version), v.tags.get("experiment", ""), v.run_id or "",
                            _version_figure(v, metric), _version_figure(v, "val_loss"), split_of(v.tags))
                  for v in versions]
    decision = decide(candidates, alias_version(name, alias), metric=metric, margin=margin, experiments=experiments)
    if decision.promote and decision.winner:
        set_alias(name, alias, decision.winner.version)
    if challenger and decision.runner_up and decision.runner_up.version != alias_version(name, alias):
        set_alias(name, challenger, decision.runner_up.version)
    if decision.winner:
        set_version_tags(name, decision.winner.version, {
            "promotion.decision": f"{'promoted to' if decision.promote else 'remains'} @{alias}",
            "promotion.reason": decision.reason[:5000],
            "promotion.metric": metric,
            "promotion.time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })
    return decision


def _version_figure(version, metric: str) -> float:
    """A validation figure: exact from its run's final `best_` metric, else from the version's tag (rounded for
    reading, or set by hand on a version registered outside pneumo-ml)."""
    if version.run_id:
        with contextlib.suppress(MlflowException):
            value = run_metric(client().get_run(version.run_id), f"best_{metric}")
            if value is not None:
                return float(value)
    try:
        return float(version.tags[metric]) if metric in version.tags else math.nan
    except ValueError:
        return math.nan


def load_pyfunc(uri: str):
    return mlflow.pyfunc.load_model(uri)


@contextlib.contextmanager
def isolated_store(tmp: Path) -> Iterator[None]:
    """A temporary SQLite tracking store and registry, data cache and working folder under `tmp`; all restored.

    The working folder moves too: a SQLite store's default artifact root (experiment 0's) is ./mlruns of the
    working folder, so nothing may be left there. ./experiments stays visible through a link, so the suite reads
    the same YAML files.
    """
    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "PNEUMO_ML_CACHE", "MLFLOW_RUN_ID")
    saved_env = {k: os.environ.get(k) for k in keys}
    saved_uris = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    saved_cwd = Path.cwd()
    work = tmp / "work"
    work.mkdir()
    if (saved_cwd / "experiments").is_dir():
        (work / "experiments").symlink_to(saved_cwd / "experiments", target_is_directory=True)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    os.environ.update({"MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri, "PNEUMO_ML_CACHE": str(tmp / "cache")})
    os.environ.pop("MLFLOW_RUN_ID", None)
    forced = mlflow.get_tracking_uri() != uri  # set programmatically earlier in this process: wins over env
    if forced:
        mlflow.set_tracking_uri(uri)
    forced_registry = mlflow.get_registry_uri() != uri
    if forced_registry:
        mlflow.set_registry_uri(uri)
    os.chdir(work)
    try:
        MlflowClient().create_experiment(EXPERIMENT, artifact_location=(tmp / "artifacts").as_uri())
        yield
    finally:
        os.chdir(saved_cwd)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if forced:
            mlflow.set_tracking_uri(saved_uris[0])
        if forced_registry:
            mlflow.set_registry_uri(saved_uris[1])
