"""SHA-256 manifests of a logged model's files: written when training logs the model, checked before a model
is loaded. A model is code (MLflow models-from-code): a file changed after training would run on load."""
from __future__ import annotations

import hashlib
from pathlib import Path

from .errors import TrackingError

MANIFEST_ARTIFACT = "integrity/model_sha256sums.txt"  # run artifact; its own digest is a run and version tag
# Written by MLflow into each downloaded copy of a registered version (its name and version, read as YAML data,
# never run): it differs per copy, so it cannot be pinned.
UNPINNED = {"registered_model_meta"}


class IntegrityError(TrackingError):
    """A model's files differ from the ones training logged; the message names the first file that differs."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def manifest(folder: Path) -> str:
    """`sha256sum` lines for every file under `folder`, sorted by path."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() not in UNPINNED)
    return "".join(f"{file_sha256(p)}  {p.relative_to(folder).as_posix()}\n" for p in files)


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def verify(folder: Path, recorded: str, recorded_digest: str, what: str) -> None:
    """Refuse `folder` unless its files are exactly those of `recorded`, whose digest must be `recorded_digest`."""
    if text_sha256(recorded) != recorded_digest:
        raise IntegrityError(f"{what}: its file manifest was changed after training; refusing to load it")
    expected = _parse(recorded)
    found = _parse(manifest(folder))
    for path in sorted(set(expected) | set(found)):
        if path not in found:
            raise IntegrityError(f"{what}: file {path} that training logged is missing; refusing to load it")
        if path not in expected:
            raise IntegrityError(f"{what}: file {path} was added after training; refusing to load it")
        if found[path] != expected[path]:
            raise IntegrityError(f"{what}: file {path} differs from what training logged (sha256 {found[path][:12]}"
                                 f"… instead of {expected[path][:12]}…); refusing to load it")


def _parse(text: str) -> dict[str, str]:
    return {path: digest for digest, _, path in (line.partition("  ") for line in text.splitlines() if line)}
