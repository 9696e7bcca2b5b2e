"""Decode each image once: uint8 size×size arrays keyed by (file content hash, size), in memory and on disk.

A suite's four experiments, and every epoch of each, reuse the same decoded pixels. Misses are decoded in
worker processes; this module stays free of torch so that those workers start fast.
"""
from __future__ import annotations

import atexit
import contextlib
import hashlib
import multiprocessing
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm.auto import tqdm

from . import procs
from .io import ImageReadError, read_file
from .preprocess import decode_resized

DEFAULT_MEMORY_BYTES = 8 << 30


@dataclass(frozen=True)
class DecodeFailure:
    index: int
    path: str
    reason: str


@dataclass
class CacheStats:
    memory_hits: int = 0
    disk_hits: int = 0
    decoded: int = 0


class DecodedCache:
    """A bounded in-memory LRU over an optional on-disk store (one .npy per image)."""

    def __init__(self, root: str | os.PathLike | None = None, max_bytes: int = DEFAULT_MEMORY_BYTES):
        self.root = Path(root).expanduser() if root else None
        self.max_bytes = max_bytes
        self.stats = CacheStats()
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._keys: dict[tuple[str, int, int], str] = {}  # (path, mtime_ns, size) -> content key
        self._lock = threading.Lock()

    def load(self, paths: list[str], size: int, *, workers: int = 0, progress: bool = True,
             desc: str = "decode", out: np.ndarray | None = None) -> tuple[np.ndarray, list[DecodeFailure]]:
        """(N, size, size) uint8 for `paths`; unreadable files come back as failures (their rows stay zero).

        `out` may be a memory-mapped array (see `image_array`) for data sets larger than memory."""
        out = np.zeros((len(paths), size, size), dtype=np.uint8) if out is None else out
        failures: list[DecodeFailure] = []
        misses: list[tuple[int, str, str | None]] = []
        for i, path in enumerate(paths):
            key = self._content_key(path, size)
            hit = self._get(key) if key else None
            if hit is not None:
                out[i] = hit
            else:
                misses.append((i, path, key))
        if misses:
            for i, key, image, reason in self._decode_all(misses, size, workers, progress, desc):
                if reason is not None:
                    failures.append(DecodeFailure(i, paths[i], reason))
                    continue
                out[i] = image
                if key:
                    self._put(key, image)
        return out, failures

    def content_hash(self, path: str) -> str | None:
        """The sha1 of a file's bytes, as the cache keys use it (memoised: free after `load`); None if unreadable."""
        key = self._content_key(path, 0)
        return key.rsplit("-", 1)[0] if key else None

    def _content_key(self, path: str, size: int) -> str | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        memo = (path, st.st_mtime_ns, st.st_size)
        if memo not in self._keys:
            try:
                self._keys[memo] = hashlib.sha1(read_file(path)).hexdigest()
            except ImageReadError:
                return None  # decoding it fails the same way, and reports why: a skippable failure
        return f"{self._keys[memo]}-{size}"

    def _get(self, key: str) -> np.ndarray | None:
        with self._lock:
            if key in self._memory:
                self._memory.move_to_end(key)
                self.stats.memory_hits += 1
                return self._memory[key]
        if self.root is not None:
            file = self._disk_path(key)
            if file.is_file():
                try:
                    image = np.load(file, allow_pickle=False)
                except (OSError, ValueError):
                    return None
                self.stats.disk_hits += 1
                self._remember(key, image)
                return image
        return None

    def _put(self, key: str, image: np.ndarray) -> None:
        self.stats.decoded += 1
        self._remember(key, image)
        if self.root is not None:
            file = self._disk_path(key)
            file.parent.mkdir(parents=True, exist_ok=True)
            tmp = file.with_suffix(f".{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                np.save(f, image, allow_pickle=False)
            os.replace(tmp, file)  # atomic: concurrent runs never read half a file

    def _remember(self, key: str, image: np.ndarray) -> None:
        with self._lock:
            if key in self._memory:
                return
            self._memory[key] = image
            self._bytes += image.nbytes
            while self._bytes > self.max_bytes and self._memory:
                _, old = self._memory.popitem(last=False)
                self._bytes -= old.nbytes

    def _disk_path(self, key: str) -> Path:
        return self.root / key.rsplit("-", 1)[1] / key[:2] / f"{key}.npy"

    def _decode_all(self, misses, size, workers, progress, desc):
        workers = workers or os.cpu_count() or 1
        bar = tqdm(total=len(misses), desc=desc, unit="img", disable=not progress, leave=False)
        try:
            if workers <= 1 or len(misses) < 16:
                for i, path, key in misses:
                    yield (i, key, *_decode_one(path, size))
                    bar.update()
                return
            chunk = max(1, min(32, len(misses) // (workers * 4)))
            results = decode_pool(workers).map(_decode_one, [p for _, p, _ in misses], [size] * len(misses),
                                               chunksize=chunk)
            for (i, _, key), result in zip(misses, results):
                yield (i, key, *result)
                bar.update()
        finally:
            bar.close()


_pools: dict[int, ProcessPoolExecutor] = {}


def decode_pool(workers: int) -> ProcessPoolExecutor:
    """One pool of decoder processes per process, started once and reused by every load.

    Forkserver (safe beside torch's threads) with this module preloaded: each worker is a fork of a server
    that has already imported numpy, PIL and pydicom, so starting one costs milliseconds, not an import."""
    if workers not in _pools:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        _pools[workers] = ProcessPoolExecutor(workers, mp_context=context, initializer=_exit_with,
                                              initargs=(os.getpid(),))
        atexit.register(_pools[workers].shutdown, wait=False, cancel_futures=True)
    return _pools[workers]


def _exit_with(parent: int) -> None:
    """A worker's watchdog: a parent killed hard (kill -9, the OOM killer) cannot stop its pool, so each worker
    leaves by itself once the process that started the pool is gone."""
    def watch() -> None:
        while procs.alive(parent):
            time.sleep(1.0)
        os._exit(0)
    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _decode_one(path: str, size: int) -> tuple[np.ndarray | None, str | None]:
    try:
        return decode_resized(path, size), None
    except ImageReadError as e:
        return None, str(e).removeprefix(f"{path}: ")  # the reason alone: callers list it beside the path


def image_array(n: int, size: int, *, spill_dir: Path, max_bytes: int = DEFAULT_MEMORY_BYTES,
                name: str = "images") -> np.ndarray:
    """Room for n decoded images: in memory when it fits in `max_bytes`, else a .npy memory map under
    `spill_dir`, which the loader then reads batch by batch (the OS keeps only what is in use)."""
    if n * size * size <= max_bytes:
        return np.zeros((n, size, size), dtype=np.uint8)
    spill_dir.mkdir(parents=True, exist_ok=True)
    path = spill_dir / f"{name}-{os.getpid()}-{n}x{size}.npy"
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, size, size))
    os.unlink(path)  # the mapping keeps the data; nothing is left behind when the process ends
    return array


_shared: DecodedCache | None = None


def shared_cache(root: str | os.PathLike | None = None, max_bytes: int = DEFAULT_MEMORY_BYTES) -> DecodedCache:
    """The process-wide cache: a suite's experiments decode each image once between them."""
    global _shared
    if _shared is None or (root and _shared.root != Path(root).expanduser()):
        _shared = DecodedCache(root)
    _shared.max_bytes = max_bytes
    return _shared


@contextlib.contextmanager
def cold_shared_cache() -> Iterator[None]:
    """A fresh process-wide cache for the duration (the benchmark's cold start); the previous one restored."""
    global _shared
    saved, _shared = _shared, None
    try:
        yield
    finally:
        _shared = saved
