"""The Gradio demo (`pneumo-ml demo`, needs the [demo] extra): upload a chest X-ray (JPEG, PNG, DICOM, ...),
pick a registered model version or alias, see the label, its confidence, P(pneumonia), the model's threshold
and a Grad-CAM overlay. Research use, not for diagnosis.

Images are decoded by `pneumo_ml.io.read_xray` / `Predictor.decode` (the training and serving code path),
never by Gradio: uploads arrive as plain files. Loopback only and no share link unless asked; analytics off.
"""
from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: it must not call home

import gradio as gr
import numpy as np

from . import preprocess, tracking
from .errors import TrackingError
from .io import ImageReadError
from .payload import SAMPLES
from .vocabulary import CHALLENGER, CHAMPION, MODEL_NAME, NOTICE

log = logging.getLogger(__name__)


FILE_TYPES = [".jpg", ".jpeg", ".png", ".dcm", ".dicom", ".bmp", ".tif", ".tiff"]
ATTRIBUTION = ("Examples: real radiographs from Kermany, Zhang & Goldbaum (2018), *Labeled Optical Coherence "
               "Tomography (OCT) and Chest X-Ray Images for Classification*, Mendeley Data v2, "
               "doi:10.17632/rscbjbr9sj.2, licensed [CC BY 4.0](https://creativecommons.org/licenses/by/4.0/); "
               "unchanged files, see `pneumo_ml/samples/NOTICE.md`.")
DISPLAY_MAX = 768  # longest side of the radiograph and overlay shown in the page
MAX_FILE_SIZE = "200mb"
ALIAS_ORDER = (CHAMPION, CHALLENGER)
FLAT_MAP = "the map is flat: no region stands out as evidence for this prediction"
TRAIN_HINT = ("Train and register one first: `pneumo-ml suite` (the four experiments, champion promoted) or "
              "`pneumo-ml train --model small_cnn`, with the same `MLFLOW_TRACKING_URI`; then click "
              "**Refresh models**.")


# ---------------------------------------------------------------- the model picker

@dataclass(frozen=True)
class ModelChoice:
    label: str  # "@champion → v3 (ResNet50_Aug)" or "v3 ResNet50_Aug · val AUC 0.912"
    uri: str    # models:/name@champion or models:/name/3


def model_choices(model_name: str = MODEL_NAME) -> tuple[list[ModelChoice], str | None, str]:
    """The picker's entries (aliases first, then versions newest first), the preselected URI (the champion,
    else the newest version; None when nothing is registered) and a status line for the page."""
    store = _redact(tracking.tracking_uri())
    try:
        versions = tracking.model_versions(model_name)
    except TrackingError as e:
        return [], None, f"⚠️ The model registry at `{store}` could not be read: {_md(str(e))}. {TRAIN_HINT}"
    if not versions:
        return [], None, f"⚠️ No model is registered as `{model_name}` in `{store}` yet. {TRAIN_HINT}"
    by_version = {str(v.version): v for v in versions}
    aliases = tracking.model_aliases(model_name)
    entries = []
    for alias in sorted(aliases, key=lambda a: (ALIAS_ORDER.index(a) if a in ALIAS_ORDER else len(ALIAS_ORDER), a)):
        version = str(aliases[alias])
        experiment = _experiment(by_version.get(version))
        entries.append(ModelChoice(f"@{alias} → v{version}" + (f" ({experiment})" if experiment else ""),
                                   f"models:/{model_name}@{alias}"))
    for v in sorted(versions, key=lambda v: int(v.version), reverse=True):
        label = f"v{v.version} {_experiment(v) or '(no experiment tag)'}"
        auc = _float(v.tags.get("val_auc"))
        if auc is not None:
            label += f" · val AUC {auc:.3f}"
        entries.append(ModelChoice(label, f"models:/{model_name}/{v.version}"))
    newest = max(versions, key=lambda v: int(v.version)).version
    default = f"models:/{model_name}@{CHAMPION}" if CHAMPION in aliases else f"models:/{model_name}/{newest}"
    status = (f"{len(versions)} registered version{'s' if len(versions) != 1 else ''} of `{model_name}` in "
              f"`{store}`" + (f"; @{CHAMPION} → v{aliases[CHAMPION]}" if CHAMPION in aliases else "") + ".")
    return entries, default, status


def _experiment(version) -> str:
    if version is None:
        return ""
    return version.tags.get("experiment") or version.tags.get("architecture") or ""


def _float(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return None if value != value else value


def _redact(uri: str) -> str:
    """A tracking URI without credentials, for the page."""
    return re.sub(r"//[^/@]*@", "//***@", uri)


def _picker_update(model_name: str):
    entries, default, status = model_choices(model_name)
    return gr.update(choices=[(e.label, e.uri) for e in entries], value=default), status


# ---------------------------------------------------------------- loading models (cached)

@dataclass
class LoadedModel:
    predictor: object  # pneumo_ml.predictor.Predictor
    description: str   # "pneumonia-classifier v3 (@champion), ResNet50_Aug"


_CACHE: dict[tuple[str, str], object] = {}  # (tracking URI, version URI) -> Predictor
_CACHE_LOCK = threading.Lock()


def load_model(uri: str) -> LoadedModel:
    """The predictor behind a URI, loaded once per registered version (an alias is resolved on every call, so
    moving @champion takes effect without a restart). Raises TrackingError."""
    name, version, alias = _parse_models_uri(uri)
    key = uri
    if name is not None and alias is not None:
        version = tracking.alias_version(name, alias)
        if version is None:
            raise TrackingError(f"@{alias} is not set on {name!r} any more; click Refresh models")
    if name is not None:
        key = f"models:/{name}/{version}"
    with _CACHE_LOCK:  # one load at a time: loading is slow and a second, parallel load would only waste memory
        predictor = _CACHE.get((tracking.tracking_uri(), key))
        if predictor is None:
            predictor = tracking.load_predictor(key, device="cpu")
            _CACHE[(tracking.tracking_uri(), key)] = predictor
    if name is None:
        return LoadedModel(predictor, tracking.describe_model_uri(uri))
    description = f"{name} v{version}" + (f" (@{alias})" if alias else "")
    experiment = _version_experiment(name, version)
    return LoadedModel(predictor, description + (f", {experiment}" if experiment else ""))


def _parse_models_uri(uri: str) -> tuple[str | None, str | None, str | None]:
    """models:/name@alias -> (name, None, alias); models:/name/3 -> (name, "3", None); else Nones."""
    if not uri.startswith("models:/"):
        return None, None, None
    ref = uri[len("models:/"):]
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return name, None, alias
    if "/" in ref:
        name, version = ref.rsplit("/", 1)
        return name, version, None
    return None, None, None


def _version_experiment(name: str, version: str) -> str:
    try:
        return _experiment(next((v for v in tracking.model_versions(name) if str(v.version) == str(version)), None))
    except TrackingError:
        return ""


# ---------------------------------------------------------------- what the buttons call

def _file_path(file) -> str | None:
    """gr.File gives a path (str); accept a FileData-like object or a path-like too."""
    if file is None:
        return None
    if isinstance(file, (str, os.PathLike)):
        return str(file)
    return getattr(file, "path", None) or getattr(file, "name", None)


def _read_upload(file) -> tuple[bytes, str]:
    path = _file_path(file)
    if not path:
        raise ImageReadError("no file was uploaded")
    try:
        return Path(path).read_bytes(), Path(path).name
    except OSError as e:
        raise ImageReadError(f"{Path(path).name}: {e.strerror or e}") from e


def display_image(data: bytes, name: str) -> np.ndarray:
    return preprocess.display_image(data, DISPLAY_MAX, name=name)


def _error(message: str) -> str:
    return f"⚠️ {message}"


def _cleared(image=None, error: str = "") -> tuple:
    """(input image, label, details, Grad-CAM, error) with no prediction shown."""
    return image, "", "", None, error


def preview_file(file) -> tuple:
    """On upload (or an example click): the decoded radiograph, or the reason it cannot be read; clears the
    previous prediction."""
    if _file_path(file) is None:
        return _cleared()
    try:
        data, name = _read_upload(file)
        return _cleared(display_image(data, name))
    except ImageReadError as e:
        return _cleared(error=_error(f"This file could not be read: {_md(str(e))}"))


def predict_file(file, model_uri: str | None) -> tuple:
    """The predict button: (input image, label markdown, details markdown, Grad-CAM overlay, error markdown).

    Never raises: a bad file, a missing model or a failure becomes a message in the error box.
    """
    if _file_path(file) is None:
        return _cleared(error=_error("Upload a chest X-ray first (JPEG, PNG or DICOM), or click an example."))
    try:
        data, name = _read_upload(file)
        shown = display_image(data, name)
    except ImageReadError as e:
        return _cleared(error=_error(f"This file could not be read: {_md(str(e))}"))
    if not model_uri:
        return _cleared(shown, _error(f"No model is selected. {TRAIN_HINT}"))
    try:
        model = load_model(model_uri)
    except TrackingError as e:
        return _cleared(shown, _error(f"The model could not be loaded: {_md(str(e))}"))
    try:
        result, overlay_image = _predict(model.predictor, data, name, shown)
    except ImageReadError as e:
        return _cleared(error=_error(f"This file could not be read: {_md(str(e))}"))
    except Exception as e:  # the page must say what went wrong, and the app keep serving
        log.exception("prediction failed for %s", name)
        return _cleared(shown, _error(f"The prediction failed: {type(e).__name__}: {_md(str(e))}"))
    return shown, _label_markdown(result), _details_markdown(result, model), overlay_image, ""


def _predict(predictor, data: bytes, name: str, shown: np.ndarray) -> tuple[dict, np.ndarray]:
    from .explain import is_flat, overlay, with_colour_bar
    image, not_radiograph = predictor.read(data, name=name)
    result = predictor.predict(image[None], not_radiograph=[not_radiograph])[0]
    heatmap = predictor.heatmaps(image[None])[0]
    result["gradcam_flat"] = is_flat(heatmap)
    # The model saw the radiograph squashed to size×size; stretching the map back over the whole picture
    # puts each cell where it came from.
    return result, with_colour_bar(overlay(shown, heatmap))


def _label_markdown(result: dict) -> str:
    warning = f"### ⚠️ {_md(result['warning'])}\n\n" if result["warning"] else ""
    return f"{warning}## {result['label']}"


def _details_markdown(result: dict, model: LoadedModel) -> str:
    card = model.predictor.card
    source = getattr(card, "threshold_source", "") or "model card"
    return "\n".join([
        f"**⚠️ {NOTICE.capitalize()}.** Grad-CAM shows where the model found evidence, not where disease is.",
        "",
        f"- **Label:** {result['label']}",
        f"- **Confidence:** {100 * result['confidence']:.1f} %",
        f"- **P(pneumonia):** {result['probability']:.4f}",
        f"- **Threshold:** {result['threshold']:.4f} ({_md(source)}); PNEUMONIA when P(pneumonia) ≥ threshold",
        f"- **Model:** {_md(model.description)} ({_md(card.architecture)}, {card.image_size} px)",
        f"- **Distance from the training images:** {result['ood_score']:.2f} (above 1: unlike them)",
    ] + ([f"- **Grad-CAM:** {FLAT_MAP}"] if result.get("gradcam_flat") else []))


def _md(text: str) -> str:
    """Text shown as is in Markdown (file names and error reasons can hold * _ ` < | ...)."""
    return re.sub(r"([\\`*_{}\[\]()<>#+!|~])", r"\\\1", str(text))


# ---------------------------------------------------------------- the page

CSS = """
#research-note { border-left: 4px solid #d97706; padding: 0.4em 0.8em; background: rgba(217, 119, 6, 0.08); }
#error-box { color: #b91c1c; }
#result-label h2 { margin: 0.2em 0; }
"""


def sample_files() -> list[Path]:
    return sorted(SAMPLES.glob("*/*.jpeg"))


def build_app(model_name: str = MODEL_NAME) -> gr.Blocks:
    entries, default, status = model_choices(model_name)
    with gr.Blocks(title="pneumo-ml demo: chest X-ray classifier", analytics_enabled=False) as app:
        gr.Markdown("# Pneumonia from a chest X-ray: NORMAL vs PNEUMONIA")
        gr.Markdown(f"**⚠️ {NOTICE.capitalize()}.** A demonstration of models trained by pneumo-ml: it is not a "
                    "medical device and must not be used to diagnose, treat or triage anyone.",
                    elem_id="research-note")
        with gr.Row():
            with gr.Column(scale=3):
                picker = gr.Dropdown(choices=[(e.label, e.uri) for e in entries], value=default,
                                     label="Model (registered version or alias)", elem_id="model-picker",
                                     interactive=True)
            with gr.Column(scale=1, min_width=120):
                refresh = gr.Button("Refresh models", elem_id="refresh-models", size="sm")
        model_status = gr.Markdown(status, elem_id="model-status")
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="Chest X-ray (JPEG, PNG, DICOM, BMP, TIFF)", file_types=FILE_TYPES,
                                 type="filepath", elem_id="xray-upload", height=140)
                predict_button = gr.Button("Predict", variant="primary", elem_id="predict-button")
                error_box = gr.Markdown("", elem_id="error-box")
                result_label = gr.Markdown("", elem_id="result-label")
                result_details = gr.Markdown("", elem_id="result-details")
            with gr.Column():
                input_image = gr.Image(label="Radiograph (as the model's reader decodes it)", type="numpy",
                                       image_mode="L", format="png", interactive=False, elem_id="input-image",
                                       height=360, buttons=["download", "fullscreen"])
            with gr.Column():
                gradcam_image = gr.Image(label="Grad-CAM: evidence for PNEUMONIA (brighter = more)", type="numpy",
                                         format="png", interactive=False, elem_id="gradcam-image", height=360,
                                         buttons=["download", "fullscreen"])
        samples = sample_files()
        if samples:
            gr.Examples(examples=[[str(p)] for p in samples], inputs=[upload], elem_id="examples",
                        label="Examples (click one, then Predict)",
                        example_labels=[f"{p.parent.name}: {p.stem}" for p in samples])
        gr.Markdown(ATTRIBUTION, elem_id="attribution")

        outputs = [input_image, result_label, result_details, gradcam_image, error_box]
        # One queue for both, first come first served: a preview never lands after (and wipes) a prediction.
        upload.change(preview_file, inputs=upload, outputs=outputs, api_name="preview", show_progress="minimal",
                      concurrency_id="xray")
        predict_button.click(predict_file, inputs=[upload, picker], outputs=outputs, api_name="predict",
                             concurrency_id="xray")
        refresh.click(lambda: _picker_update(model_name), outputs=[picker, model_status], api_name="models")
    return app


def launch(host: str = "127.0.0.1", port: int = 7860, model_name: str = MODEL_NAME, share: bool = False,
           **kwargs):
    """Serve the demo (blocks until stopped unless prevent_thread_lock=True). Loopback and no share link by
    default: exposing it is an explicit choice (--host 0.0.0.0, --share)."""
    app = build_app(model_name)
    app.queue(default_concurrency_limit=1)  # one at a time (Grad-CAM hooks the shared model); others queue
    options = dict(server_name=host, server_port=port, share=share, show_error=False, css=CSS,
                   max_file_size=MAX_FILE_SIZE)
    options.update(kwargs)
    app.launch(**options)
    return app
