"""Files and folders named on a command line, expanded to the image files inside them."""
from __future__ import annotations

from pathlib import Path

from .data import IMAGE_SUFFIXES


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
