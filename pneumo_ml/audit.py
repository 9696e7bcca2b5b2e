"""Audit a Kermany-layout folder: split sizes, patient leakage, duplicate files, shortcuts.

The shortcut figure is the cross-validated AUC of a straight line (pneumo_ml.baseline's classifier) through
what a model could read without looking at the lungs: metadata (width, height, aspect ratio, file size) and
the global intensity statistics of pneumo_ml.baseline.

`pneumo-ml data audit DIR` prints the report; a patient or an identical file found in more than one
split makes the folder leaky (exit 1). Duplicates within one split and unreadable files are reported
but do not fail the audit (`pneumo-ml data check` fails on unreadable files).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from .baseline import FEATURE_NAMES as INTENSITY_FEATURES
from .baseline import HISTOGRAM_BINS, cross_validated_auc, intensity_features
from .data import CLASSES, SPLITS, links_leaving, scan_folder
from .io import ImageReadError, open_regular, read_xray

SHORTCUT_WARN_AUC = 0.75
METADATA_FEATURES = ("width", "height", "aspect_ratio", "file_size")
FEATURES = METADATA_FEATURES + INTENSITY_FEATURES
INTENSITY_DECODE = 256  # JPEGs decode at a reduced DCT scale >= this; the features stride down to 256 anyway
_PIL_FORMATS = ("JPEG", "PNG", "BMP", "TIFF")  # read_xray's formats besides DICOM
MAX_LISTED = 20  # within-split duplicate groups printed; a note, so the rest go to --json only
_HASH_CHUNK = 1 << 20


@dataclass
class AuditReport:
    root: str
    counts: pd.DataFrame  # split (or "all") x class: number of files
    leaking_patients: dict[str, list[str]]
    cross_split_duplicates: list[list[str]]
    within_split_duplicates: list[list[str]]
    stats: pd.DataFrame  # per class: n, width/height/file_size median/min/max, mean_intensity median, modes
    shortcut_auc: float | None  # metadata and intensity statistics together
    shortcut_feature: str | None
    unreadable: list[tuple[str, str]]
    has_splits: bool = True
    feature_aucs: dict[str, float] = field(default_factory=dict)  # each feature alone; > 0.5: higher in PNEUMONIA
    links_outside: list[str] = field(default_factory=list)  # symlinks whose target is outside the root: a note
    metadata_auc: float | None = None  # metadata alone
    intensity_auc: float | None = None  # global intensity statistics alone: pneumo_ml.baseline's figure

    @property
    def leaky(self) -> bool:
        return bool(self.leaking_patients or self.cross_split_duplicates)

    def to_dict(self) -> dict:
        return {
            "root": self.root,
            "leaky": self.leaky,
            "has_splits": self.has_splits,
            "counts": _frame_dict(self.counts),
            "leaking_patients": self.leaking_patients,
            "cross_split_duplicates": self.cross_split_duplicates,
            "within_split_duplicates": self.within_split_duplicates,
            "stats": _frame_dict(self.stats),
            "shortcut_auc": self.shortcut_auc,
            "shortcut_feature": self.shortcut_feature,
            "feature_aucs": self.feature_aucs,
            "metadata_auc": self.metadata_auc,
            "intensity_auc": self.intensity_auc,
            "unreadable": [{"path": p, "reason": r} for p, r in self.unreadable],
            "links_outside": self.links_outside,
        }


def audit_folder(root: Path, *, progress: bool = True) -> AuditReport:
    """Scan ROOT (with or without train/val/test) and collect every finding; raises DataError if no images."""
    root = Path(root).resolve()
    files = scan_folder(root)
    has_splits = files["split"].notna().any()
    files["split"] = files["split"].fillna("all")
    files["rel"] = [Path(p).relative_to(root).as_posix() for p in files["path"]]

    # Threads: hashing and Pillow's JPEG decoder release the GIL.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        rows = list(tqdm(pool.map(_inspect, files["path"], files["rel"]), total=len(files), desc="audit",
                         unit="file", file=sys.stderr, disable=not progress))
    files = pd.concat([files.reset_index(drop=True), pd.DataFrame(rows)], axis=1)

    counts = pd.crosstab(files["split"], files["label"]).reindex(
        index=list(SPLITS) if has_splits else ["all"], columns=list(CLASSES), fill_value=0)
    counts.index.name, counts.columns.name = "split", None

    cross, within = _duplicates(files.dropna(subset=["sha1"]))
    readable = files[files["error"].isna()]
    aucs, feature, feature_aucs = _shortcut(readable)
    return AuditReport(
        root=str(root),
        counts=counts,
        leaking_patients=_leaking_patients(files),
        cross_split_duplicates=cross,
        within_split_duplicates=within,
        stats=_stats(readable),
        shortcut_auc=aucs["both"],
        shortcut_feature=feature,
        unreadable=[(r.rel, r.error) for r in files[files["error"].notna()].itertuples()],
        has_splits=bool(has_splits),
        feature_aucs=feature_aucs,
        links_outside=[Path(p).relative_to(root).as_posix() for p in links_leaving(root, files["path"])],
        metadata_auc=aucs["metadata"],
        intensity_auc=aucs["intensity"],
    )


def _inspect(path: str, rel: str) -> dict:
    """Hash, header and a draft decode of one file; a failure becomes `error` (the reason), not an exception."""
    row = {"sha1": None, "error": None, "file_size": np.nan, "width": np.nan, "height": np.nan, "mode": None,
           **{name: np.nan for name in INTENSITY_FEATURES}}
    try:
        digest = hashlib.sha1()
        with open_regular(path, rel) as fp:
            while chunk := fp.read(_HASH_CHUNK):
                digest.update(chunk)
        row["sha1"] = digest.hexdigest()
        row["file_size"] = os.stat(path).st_size
        image = read_xray(path, name=rel, draft_size=INTENSITY_DECODE)
        row |= dict(zip(INTENSITY_FEATURES, intensity_features(image).tolist()))
        try:
            row["width"], row["height"], row["mode"] = _header(path)
        except Exception as e:  # decoders raise many types; read_xray accepted the file, so this is rare
            raise ImageReadError(f"{rel}: unreadable header ({type(e).__name__}: {e})") from e
    except ImageReadError as e:
        row["error"] = str(e).removeprefix(f"{rel}: ")
    except OSError as e:
        row["error"] = f"cannot read file ({e.strerror or e})"
    return row


def _header(path: str) -> tuple[int, int, str]:
    """Width, height and mode without decoding pixels (called only once read_xray accepted the file)."""
    try:
        # not every Pillow format: magic-less ones (e.g. TGA) could claim a DICOM preamble
        with Image.open(path, formats=_PIL_FORMATS) as img:
            return img.size[0], img.size[1], img.mode
    except UnidentifiedImageError:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        return int(ds.Columns), int(ds.Rows), "DICOM"


def _leaking_patients(files: pd.DataFrame) -> dict[str, list[str]]:
    spread = files.groupby("patient_id")["split"].nunique()
    leaky = files[files["patient_id"].isin(spread[spread > 1].index)]
    return {patient: list(group["rel"]) for patient, group in sorted(leaky.groupby("patient_id"))}


def _duplicates(files: pd.DataFrame) -> tuple[list[list[str]], list[list[str]]]:
    """Groups of byte-identical files, in scan order (train, val, test)."""
    cross, within = [], []
    for _, group in sorted(files.groupby("sha1"), key=lambda item: item[1].index[0]):
        if len(group) > 1:
            (cross if group["split"].nunique() > 1 else within).append(list(group["rel"]))
    return cross, within


def _stats(readable: pd.DataFrame) -> pd.DataFrame:
    rows = {}
    for label in CLASSES:
        part = readable[readable["label"] == label]
        if part.empty:
            continue
        row = {"n": len(part)}
        for col in ("width", "height", "file_size"):
            row |= {f"{col}_median": float(part[col].median()), f"{col}_min": int(part[col].min()),
                    f"{col}_max": int(part[col].max())}
        row["mean_intensity_median"] = round(float(part["mean"].median()), 1)
        row["modes"] = ", ".join(f"{mode} {n}" for mode, n in part["mode"].value_counts().items())
        rows[label] = row
    stats = pd.DataFrame.from_dict(rows, orient="index")
    stats.index.name = "class"
    return stats


def _shortcut(readable: pd.DataFrame) -> tuple[dict[str, float | None], str | None, dict[str, float]]:
    """Cross-validated AUCs of a straight line through metadata, through intensity statistics and through both;
    and the feature that separates best alone."""
    from sklearn.metrics import roc_auc_score

    none = {"metadata": None, "intensity": None, "both": None}
    y = (readable["label"] == "PNEUMONIA").to_numpy(int)
    if len(set(y)) < 2:
        return none, None, {}
    frame = readable.assign(aspect_ratio=readable["width"] / readable["height"])
    X = frame[list(FEATURES)].to_numpy(float)
    feature_aucs = {name: round(float(roc_auc_score(y, X[:, i])), 4) for i, name in enumerate(FEATURES)}
    n_meta = len(METADATA_FEATURES)
    X[:, :n_meta] = np.log(X[:, :n_meta])  # sizes are multiplicative; logs keep outliers from dominating the fit
    groups = _cv_groups(readable)
    columns = {"metadata": slice(0, n_meta), "intensity": slice(n_meta, None), "both": slice(None)}
    aucs = {part: cross_validated_auc(X[:, cols], y, groups) for part, cols in columns.items()}
    if aucs["both"] is None:
        return none, None, feature_aucs
    feature = max(FEATURES, key=lambda name: abs(feature_aucs[name] - 0.5))
    return {part: round(auc, 4) for part, auc in aucs.items()}, feature, feature_aucs


def _cv_groups(frame: pd.DataFrame) -> np.ndarray:
    """Files of one patient or with identical bytes form one group, kept in one fold: split apart, a copy in
    training would predict its twin (or, for a copy filed under the other class, anti-predict it)."""
    parent: dict = {}

    def find(node):
        while parent.setdefault(node, node) != node:
            node = parent[node]
        return node

    for patient, sha in zip(frame["patient_id"], frame["sha1"]):
        parent[find(("patient", patient))] = find(("sha1", sha))
    return pd.factorize(pd.Series([find(("sha1", sha)) for sha in frame["sha1"]]))[0]


def _frame_dict(frame: pd.DataFrame) -> dict:
    return json.loads(frame.to_json(orient="index"))  # plain Python types, NaN -> None


# ----------------------------------------------------------------------------- printing


def format_report(report: AuditReport) -> str:
    total = int(report.counts.to_numpy().sum())
    lines = [f"Audit of {report.root} ({total} files)", "", "Files per split and class"]
    counts = report.counts.rename_axis(None)
    counts["total"] = counts.sum(axis=1)
    counts.loc["total"] = counts.sum()
    lines += _indent(counts.to_string())

    lines += ["", "Leakage across splits"]
    if not report.has_splits:
        lines.append("  no train/val/test subfolders: no cross-split leakage to find")
    else:
        lines.append(f"  patients in more than one split: {len(report.leaking_patients) or 'none'}")
        lines += [f"    {patient}: {', '.join(paths)}" for patient, paths in report.leaking_patients.items()]
        lines.append(f"  identical files in more than one split: {len(report.cross_split_duplicates) or 'none'}")
        lines += [f"    {' = '.join(group)}" for group in report.cross_split_duplicates]
    if report.within_split_duplicates:
        where = "within one split" if report.has_splits else "in the folder"
        lines.append(f"  note: identical files {where}: {len(report.within_split_duplicates)} group(s)")
        lines += [f"    {' = '.join(group)}" for group in report.within_split_duplicates[:MAX_LISTED]]
        if len(report.within_split_duplicates) > MAX_LISTED:
            lines.append(f"    ... and {len(report.within_split_duplicates) - MAX_LISTED} more (all in --json)")

    lines += ["", "Image statistics per class: median [min-max]"]
    if report.stats.empty:
        lines.append("  no readable images")
    else:
        table = pd.DataFrame({
            "n": report.stats["n"],
            "width": _spread(report.stats, "width"),
            "height": _spread(report.stats, "height"),
            "file size (KB)": _spread(report.stats, "file_size", 1 / 1024),
            "mean intensity": report.stats["mean_intensity_median"],
            "modes": report.stats["modes"],
        })
        lines += _indent(table.to_string())

    lines += ["", "Shortcuts: cross-validated AUC of a straight line through what needs no look at the lungs"]
    if report.shortcut_auc is None:
        lines.append("  too few readable images (need 2 patients per class) to cross-validate a shortcut classifier")
    else:
        lines.append(f"  metadata ({', '.join(METADATA_FEATURES)}): {report.metadata_auc:.2f}")
        lines.append(f"  global intensity statistics (mean, std, percentiles, {HISTOGRAM_BINS}-bin "
                     f"histogram, mean gradient; the IntensityBaseline): {report.intensity_auc:.2f}")
        lines.append(f"  shortcut AUC, both together: {report.shortcut_auc:.2f}")
        single = report.feature_aucs[report.shortcut_feature]
        if single == 0.5:
            lines.append("  most telling feature: none (no feature alone separates the classes)")
        else:
            lines.append(f"  most telling feature: {report.shortcut_feature} (higher in "
                         f"{'PNEUMONIA' if single > 0.5 else 'NORMAL'}; AUC {max(single, 1 - single):.2f} on its own)")
        if report.shortcut_auc >= SHORTCUT_WARN_AUC:
            lines.append(f"  WARNING: shortcut AUC {report.shortcut_auc:.2f} >= {SHORTCUT_WARN_AUC}: a model can tell "
                         f"the classes apart from metadata and global statistics alone; this shortcut can inflate "
                         f"test scores without looking at the lungs (resize to one size, compare per-class "
                         f"acquisition and exposure)")

    if report.links_outside:
        lines += ["", f"note: {len(report.links_outside)} symlink(s) point outside {report.root} (read as images "
                      f"of the folder): {', '.join(report.links_outside[:MAX_LISTED])}"]
    if report.unreadable:
        lines += ["", f"Unreadable files: {len(report.unreadable)} (left out of the statistics)"]
        lines += [f"  {path}: {reason}" for path, reason in report.unreadable]

    lines.append("")
    if report.leaky:
        lines.append(f"LEAKY: {len(report.leaking_patients)} patient(s) and {len(report.cross_split_duplicates)} "
                     f"identical file group(s) span splits")
    else:
        lines.append("no leakage across splits" if report.has_splits else "no splits to leak across")
    return "\n".join(lines)


def _spread(stats: pd.DataFrame, col: str, scale: float = 1.0) -> pd.Series:
    return pd.Series({label: f"{row[f'{col}_median'] * scale:.0f} [{row[f'{col}_min'] * scale:.0f}-"
                             f"{row[f'{col}_max'] * scale:.0f}]" for label, row in stats.iterrows()})


def _indent(text: str) -> list[str]:
    return ["  " + line for line in text.splitlines()]
