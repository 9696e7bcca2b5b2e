"""The Chromium the browser tests drive (Debian's package in CI; Playwright's own download is not used)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    """Fails, not skips, when Chromium is missing: CI installs it."""
    path = os.environ.get("PNEUMO_ML_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail(f"Chromium not found at {path} (CI installs Debian's chromium; set PNEUMO_ML_CHROMIUM)")
    return path
