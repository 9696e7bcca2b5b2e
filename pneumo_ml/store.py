"""The SQLite tracking store's file: can it be opened, who may migrate it, was a migration cut short.

No mlflow here (see `tracking.ensure_store`): these checks run before MLflow touches the file, because MLflow
retries an unopenable SQLite file for minutes and migrates a new one without any inter-process lock.
"""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from filelock import FileLock, Timeout

from .errors import TrackingError
from .inputs import unwritable_reason

LEFTOVER_PREFIX = "_alembic_tmp_"  # tables alembic's SQLite batch migrations create and drop again
REPAIR_HINT = "repair it with `pneumo-ml store repair` (drops the leftover copies, then finishes the migration)"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (relative to the working folder unless absolute); else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def check_openable(path: Path) -> None:
    """Fail at once, naming the file, where SQLite would answer "unable to open database file" (after MLflow
    has retried for about two minutes)."""
    where = f"tracking store {path.absolute()}"
    if path.exists():
        if not path.is_file() or not os.access(path, os.R_OK):
            raise TrackingError(f"{where}: not a readable file")
        return
    if reason := unwritable_reason(path.parent):  # MLflow creates missing parent folders
        raise TrackingError(f"{where}: cannot be created, {reason}; run from a writable folder or set "
                            f"MLFLOW_TRACKING_URI")


def first_use_lock(path: Path, timeout: float = 600) -> FileLock | _NoLock:
    """An inter-process lock beside the database file; none where the folder is read-only (nothing to migrate
    there: a read-only store can only be read)."""
    lock_path = Path(f"{path}.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(path.parent.resolve(), os.W_OK) and not lock_path.exists():
        return _NoLock()
    return _Held(FileLock(str(lock_path), timeout=timeout), path)


class _Held:
    def __init__(self, lock: FileLock, path: Path):
        self.lock, self.path = lock, path

    def __enter__(self):
        try:
            self.lock.acquire()
        except Timeout:
            raise TrackingError(f"tracking store {self.path}: another process has held {self.lock.lock_file} "
                                f"for {self.lock.timeout:.0f} s; is it hung?") from None
        return self

    def __exit__(self, *exc):
        self.lock.release()


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def leftover_tables(path: Path) -> list[str]:
    """Copies an interrupted schema migration left behind (they make every later migration fail)."""
    if not path.is_file():
        return []
    with sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE ? ESCAPE '\\'",
                          (LEFTOVER_PREFIX.replace("_", "\\_") + "%",)).fetchall()
    return sorted(name for (name,) in rows)


def check_not_half_migrated(path: Path) -> None:
    leftovers = leftover_tables(path)
    if leftovers:
        raise TrackingError(f"tracking store {path}: an earlier MLflow schema migration was interrupted (leftover "
                            f"table(s) {', '.join(leftovers)}); {REPAIR_HINT}")


def drop_leftovers(path: Path) -> list[str]:
    """Drop the leftover copies whose original table still exists (the original holds the data); a leftover
    without its original is the only copy of that table, so it is kept and named instead."""
    dropped, orphans = [], []
    with sqlite3.connect(str(path)) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for name in leftover_tables(path):
            if name[len(LEFTOVER_PREFIX):] in tables:
                db.execute(f'DROP TABLE "{name}"')
                dropped.append(name)
            else:
                orphans.append(name)
    if orphans:
        raise TrackingError(f"tracking store {path}: {', '.join(orphans)} hold(s) the only copy of a table; "
                            f"back up the file and rename each to its name without {LEFTOVER_PREFIX!r}")
    return dropped
