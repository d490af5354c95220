"""Shared by the offline deploy/ checks: where things are, and the tools from the dev extras."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent
# The cluster version the manifests are validated against (kubernetes-validate's bundled schemas).
KUBERNETES_VERSION = "1.31.0"


def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    """Runs a tool from this virtualenv (hadolint, kubernetes-validate) offline; never raises on status."""
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False, timeout=60)


def load_all(path: Path) -> list[dict[str, Any]]:
    """Every YAML document of ``path`` (empty ones skipped)."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def load(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict), path
    return doc
