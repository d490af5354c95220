"""Runs the contract tools (buf, squawk) that `make venv` installs from PyPI next to the interpreter."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# An unreachable proxy: a tool that tries the network fails loudly instead of quietly passing on a
# developer's laptop and breaking on an offline CI runner.
_OFFLINE = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}


def tool(name: str) -> str:
    """Path of a console script from the dev dependencies (buf-bin, squawk-cli); raises if it is missing."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is missing: run `make venv` (it is a dev dependency in pyproject.toml)")
    return found


def run(name: str, *args: str, cwd: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    """Runs a tool offline in cwd with its cache under cache; returns the finished process (never raises on rc)."""
    env = {**os.environ, **_OFFLINE, "BUF_CACHE_DIR": str(cache), "XDG_CACHE_HOME": str(cache)}
    return subprocess.run(
        [tool(name), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )
