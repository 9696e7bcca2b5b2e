"""Data sources and the study's protocol: a split table (path, label, patient, split) from any source.

Sources: `synthetic` (generated once into the cache folder), a Kermany-layout folder
(ROOT/{train,val,test}/{NORMAL,PNEUMONIA} or ROOT/{NORMAL,PNEUMONIA}), or a CSV manifest
`path,label[,patient_id,split]`. Sampling is stratified and grouped by patient: no patient is in two splits.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DataError
from .vocabulary import CLASSES

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"}
SPLIT_COLUMNS = ["path", "label", "target", "patient_id", "split", "mask"]


@dataclass
class SplitTable:
    """The split used by a run (logged as data/split.csv), plus what sampling had to report."""

    frame: pd.DataFrame
    source: str  # as the user named it ("synthetic", a folder, a manifest)
    root: str = ""  # where the files are
    warnings: list[str] = field(default_factory=list)

    def part(self, split: str) -> pd.DataFrame:
        return self.frame[self.frame["split"] == split].reset_index(drop=True)


def cache_root() -> Path:
    """~/.cache/pneumo-ml (or $PNEUMO_ML_CACHE, or $XDG_CACHE_HOME/pneumo-ml)."""
    if os.environ.get("PNEUMO_ML_CACHE"):
        return Path(os.environ["PNEUMO_ML_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pneumo-ml"


def patient_id(path: str | Path) -> str:
    """Kermany names: person1946_bacteria_4874 -> person1946; IM-0115-0001 -> IM-0115;
    NORMAL2-IM-1427-0001 -> NORMAL2-IM-1427; anything else: the file stem."""
    stem = Path(path).stem
    if m := re.match(r"^(person\d+)_", stem, re.IGNORECASE):
        return m.group(1).lower()
    if m := re.match(r"^((?:NORMAL2-)?IM-\d+)-\d+", stem, re.IGNORECASE):
        return m.group(1).upper()
    if m := re.match(r"^(synth\d+-\d+)_", stem):
        return m.group(1)
    return stem


def load_split(data: str, *, n_train: int, n_val: int, n_test: int, seed: int = 0,
               synthetic_difficulty: float | None = None) -> SplitTable:
    """The study's protocol on any source: n_* images per split (0 = all there are), half per class."""
    counts = {"train": n_train, "val": n_val, "test": n_test}
    if data == "synthetic":
        root = ensure_synthetic(n_train=n_train, n_val=n_val, n_test=n_test, seed=seed,
                                difficulty=synthetic_difficulty)
        files = read_manifest(root / "manifest.csv")
        location = str(root)
    else:
        path = Path(data).expanduser()
        if not path.exists():
            raise DataError(f"{data}: no such data folder or manifest (use --data synthetic for the embedded set)")
        files = read_manifest(path) if path.is_file() else scan_folder(path)
        location = str(path.resolve())
    table = sample_protocol(files, counts, seed=seed, source=str(data))
    table.root = location
    return table


def ensure_synthetic(*, n_train: int, n_val: int, n_test: int, seed: int, difficulty: float | None) -> Path:
    """The embedded default: generated once per (generator version, counts, seed, difficulty) into the cache folder."""
    from . import synthetic

    difficulty = synthetic.DEFAULT_DIFFICULTY if difficulty is None else difficulty
    sizes = [n or 200 for n in (n_train, n_val, n_test)]
    name = f"v{synthetic.GENERATOR_VERSION}-seed{seed}-d{difficulty:g}-{sizes[0]}-{sizes[1]}-{sizes[2]}"
    root = cache_root() / "synthetic" / name  # the version: a changed generator never reuses an old set
    if not (root / "manifest.csv").is_file():
        log.info("generating the synthetic data set into %s", root)
        try:
            synthetic.write_dataset(root, n_train=sizes[0], n_val=sizes[1], n_test=sizes[2], seed=seed,
                                    difficulty=difficulty, workers=min(4, os.cpu_count() or 1))
        except OSError:
            # Another process (a parallel run, another rank) wrote the same set first: theirs is identical.
            if not (root / "manifest.csv").is_file():
                raise
    return root


def scan_folder(root: Path) -> pd.DataFrame:
    """All image files of a Kermany-layout folder, with or without train/val/test subfolders."""
    root = root.resolve()
    has_splits = any((root / s).is_dir() for s in SPLITS)
    rows = []
    for split in (SPLITS if has_splits else (None,)):
        base = root / split if split else root
        for label in CLASSES:
            folder = base / label
            if not folder.is_dir():
                continue
            for path in sorted(folder.rglob("*")):
                if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                    # The path as found, not resolved: a symlink is an image of the folder wherever its target
                    # lives (symlink farms are a common way to build a data set), its mask found by its own path.
                    rows.append({"path": str(path), "label": label, "split": split})
    if not rows:
        expected = "{train,val,test}/{NORMAL,PNEUMONIA}/ or {NORMAL,PNEUMONIA}/"
        raise DataError(f"{root}: no images found (expected the Kermany layout {expected})")
    frame = pd.DataFrame(rows)
    frame["patient_id"] = frame["path"].map(patient_id)
    frame["mask"] = frame["path"].map(lambda p: _mask_for(root, Path(p)))
    if not has_splits:
        frame["split"] = None
    return frame


def read_manifest(path: Path) -> pd.DataFrame:
    """A CSV `path,label[,patient_id,split[,mask]]`; relative paths are relative to the CSV's folder."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as e:  # pandas raises many kinds
        raise DataError(f"{path}: not a readable CSV manifest ({e.__class__.__name__}: {e})") from e
    missing_cols = {"path", "label"} - set(frame.columns)
    if missing_cols:
        raise DataError(f"{path}: manifest lacks column(s) {', '.join(sorted(missing_cols))}")
    frame["label"] = frame["label"].str.strip().str.upper()
    bad = frame[~frame["label"].isin(CLASSES)]
    if len(bad):
        row = bad.index[0]
        raise DataError(f"{path}: row {row + 2}: label {bad['label'].iloc[0]!r} is not NORMAL or PNEUMONIA"
                        f" ({len(bad)} such rows)")
    base = path.parent
    frame["path"] = [str((base / p).resolve()) if not os.path.isabs(p) else p for p in frame["path"]]
    # Only what does not exist is refused here; a file that exists but cannot be read (a FIFO, no permission) is
    # refused by the reader, before any byte is read, and --skip-bad can skip it.
    absent = [(i, p) for i, p in enumerate(frame["path"]) if not os.path.lexists(p)]
    if absent:
        listed = "; ".join(f"row {i + 2}: {p}" for i, p in absent[:5])
        raise DataError(f"{path}: {len(absent)} file(s) not found ({listed}{' ...' if len(absent) > 5 else ''})")
    if "patient_id" not in frame or (frame["patient_id"] == "").all():
        frame["patient_id"] = frame["path"].map(patient_id)
    if "split" not in frame or (frame["split"] == "").all():
        frame["split"] = None
    else:
        frame["split"] = frame["split"].str.strip().str.lower()
        odd = frame[~frame["split"].isin(SPLITS)]
        if len(odd):
            raise DataError(f"{path}: row {odd.index[0] + 2}: split {odd['split'].iloc[0]!r} is not train, val or test")
    if "mask" in frame:
        frame["mask"] = [str((base / m).resolve()) if m and not os.path.isabs(m) else (m or None)
                         for m in frame["mask"]]
    else:
        frame["mask"] = None
    return frame[["path", "label", "patient_id", "split", "mask"]]


def sample_protocol(files: pd.DataFrame, counts: dict[str, int], *, seed: int, source: str) -> SplitTable:
    """Stratified, patient-grouped sampling of counts[split] images (0 = all) per split."""
    files = files.copy()
    files["patient_id"] = files["patient_id"].astype(str)
    notes: list[str] = []
    for label in CLASSES:
        if not (files["label"] == label).any():
            raise DataError(f"{source}: no {label} images: both classes are needed")
    if files["split"].isna().all():
        files["split"] = _assign_patient_splits(files, counts, seed)
    else:
        files, note = _drop_leaky_patients(files, source)
        if note:
            notes.append(note)
            log.warning(note)
    rng = np.random.default_rng(seed)
    parts = []
    for split in SPLITS:
        pool = files[files["split"] == split]
        parts.append(_sample_split(pool, counts[split], rng, f"{source} [{split}]"))
    frame = pd.concat(parts, ignore_index=True)
    frame["target"] = (frame["label"] == "PNEUMONIA").astype(int)
    frame = frame[SPLIT_COLUMNS]
    shared = frame.groupby("patient_id")["split"].nunique()
    assert (shared <= 1).all(), "a patient ended up in two splits"
    return SplitTable(frame, source, warnings=notes)


def _sample_split(pool: pd.DataFrame, n: int, rng: np.random.Generator, where: str) -> pd.DataFrame:
    if n == 0:
        if pool.empty or pool["label"].nunique() < 2:
            raise DataError(f"{where}: needs images of both classes, found {_class_counts(pool)}")
        return pool
    quotas = {"NORMAL": n // 2, "PNEUMONIA": n - n // 2}
    taken = []
    for label, quota in quotas.items():
        candidates = pool[pool["label"] == label]
        if len(candidates) < quota:
            raise DataError(f"{where}: needs {quota} {label} images, found {len(candidates)} "
                            f"(lower --n-train/--n-val/--n-test, or 0 for all)")
        taken.append(_take_by_patient(candidates, quota, rng))
    return pd.concat(taken)


def _take_by_patient(candidates: pd.DataFrame, quota: int, rng: np.random.Generator) -> pd.DataFrame:
    """Whole patients in random order until the quota is met (the last patient may be cut short)."""
    patients = candidates["patient_id"].unique()
    order = {p: i for i, p in enumerate(rng.permutation(patients))}
    ranked = candidates.assign(_rank=candidates["patient_id"].map(order)).sort_values(["_rank", "path"])
    return ranked.head(quota).drop(columns="_rank")


def _assign_patient_splits(files: pd.DataFrame, counts: dict[str, int], seed: int) -> pd.Series:
    """A folder without splits: each patient goes to test, then val, then train, class by class."""
    rng = np.random.default_rng(seed)
    split_of: dict[str, str] = {}
    for label in CLASSES:
        pool = files[files["label"] == label]
        per_patient = pool.groupby("patient_id").size()
        patients = [p for p in rng.permutation(per_patient.index.to_numpy()) if p not in split_of]
        for split in ("test", "val"):
            need = counts[split] // 2 if label == "NORMAL" else counts[split] - counts[split] // 2
            if counts[split] == 0:
                need = round(len(pool) * 0.1)
            while need > 0 and patients:
                patient = patients.pop()
                split_of[patient] = split
                need -= per_patient[patient]
        for patient in patients:
            split_of[patient] = "train"
    return files["patient_id"].map(split_of)


def _drop_leaky_patients(files: pd.DataFrame, source: str) -> tuple[pd.DataFrame, str | None]:
    """A patient in two of the folder's splits is kept only in its evaluation split, and reported."""
    spread = files.groupby("patient_id")["split"].nunique()
    leaky = set(spread[spread > 1].index)
    if not leaky:
        return files, None
    drop = files["patient_id"].isin(leaky) & (files["split"] == "train")
    kept_eval = files[files["patient_id"].isin(leaky) & (files["split"] != "train")]
    leaky_eval = kept_eval.groupby("patient_id")["split"].nunique()
    drop |= files["patient_id"].isin(set(leaky_eval[leaky_eval > 1].index)) & (files["split"] == "val")
    note = (f"{source}: the folder's own split is leaky: {len(leaky)} patient(s) appear in more than one split "
            f"(e.g. {', '.join(sorted(leaky)[:3])}); their {int(drop.sum())} image(s) in train/val were excluded")
    return files[~drop], note


def _class_counts(frame: pd.DataFrame) -> str:
    counts = frame["label"].value_counts()
    return ", ".join(f"{counts.get(c, 0)} {c}" for c in CLASSES)


def links_leaving(root: Path, paths) -> list[str]:
    """The symlinks among `paths` (under `root`) whose target lies outside it."""
    root = root.resolve()
    return [str(p) for p in map(Path, paths) if p.is_symlink() and not p.resolve().is_relative_to(root)]


def _mask_for(root: Path, path: Path) -> str | None:
    """Synthetic sets keep lesion masks under ROOT/masks/ mirroring the image paths."""
    mask = root / "masks" / path.relative_to(root).with_suffix(".png")
    return str(mask) if mask.is_file() else None
