"""The layers import downwards only: api → services → realtime → store → domain (issue 12 §1).

``lint-imports`` (import-linter, contracts in pyproject.toml ``[tool.importlinter]``) also runs in
``make lint``; here it runs on the tree as it is, and on a copy with one import that climbs, to show the
contract would refuse the circle realtime/streams.py ↔ api/merchant.py had.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH puts the tree's own packages first, ahead of the editable install.
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(tree / "pyproject.toml")],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def _copy(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("escalation", "workers"):
        shutil.copytree(ROOT / package, tree / package, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


def test_the_tree_keeps_every_import_contract() -> None:
    done = _lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "climb"),
    [
        ("realtime/hub.py", "from escalation.api import status"),  # the old streams.py → api circle
        ("services/records.py", "from escalation.api import status"),
        ("store/events.py", "from escalation.realtime import hub"),
        ("domain/paging.py", "from escalation.config import Settings"),
    ],
)
def test_an_import_that_climbs_breaks_a_contract(tmp_path: Path, module: str, climb: str) -> None:
    tree = _copy(tmp_path)
    path = tree / "escalation" / module
    text = path.read_text(encoding="utf-8")
    head, sep, rest = text.partition("from __future__ import annotations\n")
    assert sep, f"{module} has no __future__ import to place the climb after"
    path.write_text(f"{head}{sep}{climb}  # noqa: F401\n{rest}", encoding="utf-8")
    done = _lint_imports(tree)
    assert done.returncode != 0, done.stdout
    assert "BROKEN" in done.stdout
