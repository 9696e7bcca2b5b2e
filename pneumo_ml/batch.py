"""Batch prediction and Grad-CAM over files and folders (`pneumo-ml predict` / `pneumo-ml explain`)."""
from __future__ import annotations

from pathlib import Path
from textwrap import fill

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .errors import DataError
from .inputs import expand_paths
from .io import ImageReadError
from .preprocess import display_image
from .vocabulary import PREDICTION_FIELDS

COLUMNS = ["path", *PREDICTION_FIELDS, "error"]


def _decoded_batches(predictor, files: list[Path], batch_size: int, progress: bool, desc: str):
    """(paths, images, failures) per batch, each image with why it is not a radiograph ('' if it is); an
    unreadable file is a failure, never the end of the run."""
    bar = tqdm(total=len(files), desc=desc, unit="img", disable=not progress, leave=False)
    for start in range(0, len(files), batch_size):
        paths, images, failures = [], [], []
        for path in files[start:start + batch_size]:
            try:
                images.append(predictor.read(path))
                paths.append(path)
            except ImageReadError as e:
                failures.append((path, str(e)))
        bar.update(len(paths) + len(failures))
        yield paths, images, failures
    bar.close()


def predict_files(model_uri: str, paths, *, threshold: float | None = None, batch_size: int = 32,
                  device: str = "cpu", progress: bool = True) -> pd.DataFrame:
    from .tracking import load_predictor
    files, missing = expand_paths(paths)
    if not files:
        raise DataError(f"{', '.join(map(str, missing))}: no such file or folder" if missing
                        else f"no images found in {', '.join(map(str, paths))}")
    predictor = load_predictor(model_uri, device)
    rows = [{"path": str(p), "error": f"{p}: no such file or folder"} for p in missing]
    for batch_paths, images, failures in _decoded_batches(predictor, files, batch_size, progress, "predict"):
        rows += [{"path": str(p), "error": reason} for p, reason in failures]
        if images:
            results = predictor.predict(np.stack([i for i, _ in images]), threshold=threshold,
                                        not_radiograph=[r for _, r in images])
            rows += [{"path": str(p), **r, "error": ""} for p, r in zip(batch_paths, results)]
    order = {str(p): i for i, p in enumerate(list(missing) + files)}
    frame = pd.DataFrame(rows, columns=COLUMNS).fillna({"error": ""})
    return frame.sort_values("path", key=lambda s: s.map(order)).reset_index(drop=True)


DISPLAY_MAX = 1024  # longest side of an overlay `explain` writes


def explain_files(model_uri: str, paths, out: Path, *, device: str = "cpu",
                  batch_size: int = 8) -> tuple[list[Path], list[str], list[str]]:
    from .explain import save_overlay
    from .tracking import load_predictor
    files, missing = expand_paths(paths)
    predictor = load_predictor(model_uri, device)
    out.mkdir(parents=True, exist_ok=True)
    written, errors, warnings = [], [f"{p}: no such file or folder" for p in missing], []
    for batch_paths, images, failures in _decoded_batches(predictor, files, batch_size, True, "explain"):
        errors += [reason for _, reason in failures]
        if not images:
            continue
        stack = np.stack([i for i, _ in images])
        results = predictor.predict(stack, not_radiograph=[r for _, r in images])
        for path, heat, result in zip(batch_paths, predictor.heatmaps(stack), results):
            target = _free_name(out / f"{path.stem}_gradcam.png")
            # shown at the radiograph's own aspect ratio: the model's square map is stretched back over it
            title = (f"{path.name}: {result['label']} p={result['probability']:.3f} "
                     f"(threshold {result['threshold']:.3f})"
                     + (f"\n{fill(result['warning'], 70)}" if result["warning"] else ""))
            save_overlay(target, display_image(path, DISPLAY_MAX), heat, title=title)
            written.append(target)
            warnings += [f"{path}: {result['warning']}"] if result["warning"] else []
    return written, errors, warnings


def _free_name(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1
    return candidate
