"""Files and folders named on a command line: inputs expanded to the image files inside them, outputs checked
to be writable before any work is done."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .data import IMAGE_SUFFIXES
from .errors import UserError


def expand_paths(paths) -> tuple[list[Path], list[Path]]:
    """(files, missing): folders are searched recursively for image files; files are taken as they are."""
    files, missing = [], []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.exists():
            files.append(path)
        else:
            missing.append(path)
    return files, missing


def unwritable_reason(folder: Path) -> str | None:
    """Why no file can be created in `folder` (or in its nearest existing ancestor, as folders are created on
    the way), or None. Tried for real: permission bits do not stop root, read-only mounts stop everyone."""
    folder = folder.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError as e:
        return f"folder {folder} is not writable ({e.strerror or e})"


def check_output_file(path: str | os.PathLike, option: str = "--out") -> None:
    target = Path(path)
    if target.is_dir():
        raise UserError(f"{option} {path}: is a folder; give a file name")
    if reason := unwritable_reason(target.parent):
        raise UserError(f"{option} {path}: {reason}")
    if target.exists() and not os.access(target, os.W_OK):
        raise UserError(f"{option} {path}: the file is not writable")


def check_output_folder(path: str | os.PathLike, option: str = "--out") -> None:
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise UserError(f"{option} {path}: exists and is not a folder")
    if reason := unwritable_reason(target):
        raise UserError(f"{option} {path}: {reason}")
