"""Which build is running: ``escalation --version`` and the ``escalation_build_info`` gauge (issue 11 §5).

The version is the installed package's (pyproject.toml, via importlib.metadata). The revision comes from
ESCALATION_BUILD_REVISION, which the image bakes in at build time (``docker build --build-arg
REVISION=$(git rev-parse HEAD)``; the Dockerfile turns it into the variable), because an image holds no
.git. Run from a git checkout without it (development, tests), it is that checkout's HEAD; otherwise
"unknown". A variable rather than a generated file: nothing to regenerate or forget to commit, and a
rebuilt image cannot carry a stale file.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from prometheus_client import Gauge

_SOURCE = Path(__file__).resolve().parents[2]
REVISION_VARIABLE = "ESCALATION_BUILD_REVISION"

BUILD_INFO = Gauge(
    "escalation_build_info", "Always 1; the labels say which build this process runs.", ["version", "revision"]
)


def version() -> str:
    """The package version, e.g. "0.1.0"; "0+unknown" when not installed (a bare source tree)."""
    try:
        return importlib.metadata.version("escalation")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def revision(env: Mapping[str, str] | None = None) -> str:
    """ESCALATION_BUILD_REVISION, else the source checkout's HEAD (12 hex digits), else "unknown"."""
    baked = (os.environ if env is None else env).get(REVISION_VARIABLE, "")
    if baked:
        return baked
    if (_SOURCE / ".git").exists():  # a directory, or a file in a git worktree
        try:
            head = subprocess.run(
                ("git", "-C", str(_SOURCE), "rev-parse", "--short=12", "HEAD"),
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "unknown"
        return head or "unknown"
    return "unknown"


def describe() -> str:
    """What ``escalation --version`` prints: "escalation 0.1.0 (revision 3f2c…)"."""
    return f"escalation {version()} (revision {revision()})"


def publish(build_revision: str = "") -> None:
    """Sets ``escalation_build_info{version,revision} 1`` (``build_revision`` from settings, if validated there)."""
    BUILD_INFO.labels(version=version(), revision=build_revision or revision()).set(1)
