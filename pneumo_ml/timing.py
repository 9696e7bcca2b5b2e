"""Where the time goes: a stage's wall time recorded under its name (training, the suite and the benchmark)."""
from __future__ import annotations

import contextlib
import time
from typing import Iterator


@contextlib.contextmanager
def stage(timings: dict[str, float], key: str) -> Iterator[None]:
    """`timings[key]` = the seconds the block took, also when it raises."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = time.perf_counter() - start
