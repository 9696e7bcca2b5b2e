"""The last completed epoch's checkpoint, written every epoch beside the cache so that a hard kill (kill -9,
the OOM killer) loses at most the epoch in progress.

Written from a CPU snapshot by a background thread (training does not wait for the disk), atomically (a kill
mid-write leaves the previous file whole), and loaded with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import torch

from .data import cache_root
from .tensorfile import TensorFileError, load_tensors

log = logging.getLogger(__name__)
REQUIRED_KEYS = {"model", "optimizer", "epoch", "history", "best_epoch", "best_score", "best_state", "stale_epochs"}


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message says which file and why."""


def local_path(run_id: str) -> Path:
    return cache_root() / "checkpoints" / f"{run_id}.pt"


def save(checkpoint: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)


def load(path: Path, where: str) -> dict:
    """The checkpoint at `path`, checked to be whole; CheckpointError naming `where` otherwise."""
    try:
        saved = load_tensors(path)
    except TensorFileError as e:
        raise CheckpointError(f"{where}: unreadable checkpoint ({str(e).removeprefix(f'{path}: ')})") from None
    except Exception as e:  # torch raises many kinds for a torn or foreign file
        raise CheckpointError(f"{where}: unreadable checkpoint ({e.__class__.__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    if not isinstance(saved, dict) or not REQUIRED_KEYS <= set(saved):
        missing = sorted(REQUIRED_KEYS - set(saved)) if isinstance(saved, dict) else ["everything"]
        raise CheckpointError(f"{where}: not a pneumo-ml checkpoint (missing {', '.join(missing)})")
    return saved


class Writer:
    """Writes the newest snapshot handed to it, one write at a time, off the training thread."""

    def __init__(self, path: Path):
        self.path = path
        self._latest: dict | None = None
        self._cond = threading.Condition()
        self._busy = False

    def submit(self, checkpoint: dict) -> None:
        with self._cond:
            self._latest = checkpoint
            if not self._busy:
                self._busy = True
                threading.Thread(target=self._drain, name="checkpoint-writer", daemon=True).start()

    def _drain(self) -> None:
        while True:
            with self._cond:
                checkpoint, self._latest = self._latest, None
                if checkpoint is None:
                    self._busy = False
                    self._cond.notify_all()
                    return
            try:
                save(checkpoint, self.path)
            except OSError as e:  # a full disk must not stop training; the next epoch tries again
                log.warning("could not write the checkpoint %s: %s", self.path, e)

    def wait(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: not self._busy)

    def discard(self) -> None:
        self.wait()
        self.path.unlink(missing_ok=True)
