"""deploy/requirements.lock is in step with pyproject.toml (checked offline; `make lock` rewrites it).

The lock is `uv pip compile --generate-hashes` output: each package pinned with ``==``, its hashes, and
``# via`` lines naming what needs it. In step means: the packages needed by ``escalation
(pyproject.toml)`` are exactly the runtime dependencies, each pin satisfies its specifier, every pin
has hashes, and every package is needed by something locked (nothing stale, nothing missing).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.deploy.harness import DEPLOY, REPO

LOCK = DEPLOY / "requirements.lock"
ROOT = "escalation (pyproject.toml)"


@dataclass
class Pin:
    version: Version
    hashes: int = 0
    via: set[str] = field(default_factory=set)  # canonical names, or ROOT


def parse_lock(text: str) -> dict[str, Pin]:
    pins: dict[str, Pin] = {}
    current: Pin | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if match := re.match(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)", raw):
            current = pins[canonicalize_name(match[1])] = Pin(Version(match[2]))
        elif current is not None and line.startswith("--hash=sha256:"):
            assert re.fullmatch(r"--hash=sha256:[0-9a-f]{64}( \\)?", line), line
            current.hashes += 1
        elif current is not None and (via := re.match(r"^#\s+(?:via\s+)?(\S.*)$", line)) and via[1] != "via":
            name = via[1].strip()
            current.via.add(name if name == ROOT else str(canonicalize_name(name)))
    return pins


def runtime_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]]


def problems(pins: dict[str, Pin], requirements: list[Requirement]) -> list[str]:
    """Why the lock is out of step with ``requirements`` (empty: in step)."""
    found = []
    wanted: dict[str, Requirement] = {canonicalize_name(r.name): r for r in requirements}
    direct: set[str] = {name for name, pin in pins.items() if ROOT in pin.via}
    for name in sorted(set(wanted) - direct):
        found.append(f"{name} is a dependency but not locked as one")
    for name in sorted(direct - set(wanted)):
        found.append(f"{name} is locked as a dependency but pyproject.toml has no such dependency")
    for name, requirement in wanted.items():
        if name in pins and not requirement.specifier.contains(pins[name].version, prereleases=True):
            found.append(f"{name}=={pins[name].version} does not satisfy {requirement}")
    for name, pin in pins.items():
        if pin.hashes == 0:
            found.append(f"{name} has no hash")
        if not pin.via:
            found.append(f"{name} is needed by nothing")
        for parent in pin.via - {ROOT}:
            if parent not in pins:
                found.append(f"{name} is needed by {parent}, which is not locked")
    return found


def test_the_lock_is_in_step_with_pyproject() -> None:
    assert problems(parse_lock(LOCK.read_text()), runtime_requirements()) == []


def test_the_check_sees_a_dependency_added_removed_or_repinned() -> None:
    pins = parse_lock(LOCK.read_text())
    requirements = runtime_requirements()
    added = [*requirements, Requirement("httpx>=0.27")]
    assert problems(pins, added) == ["httpx is a dependency but not locked as one"]
    removed = [r for r in requirements if canonicalize_name(r.name) != "structlog"]
    assert problems(pins, removed) == ["structlog is locked as a dependency but pyproject.toml has no such dependency"]
    repinned = [Requirement("grpcio==1.0.0") if r.name == "grpcio" else r for r in requirements]
    assert problems(pins, repinned) == [f"grpcio=={pins['grpcio'].version} does not satisfy grpcio==1.0.0"]


def test_the_check_sees_a_lock_without_hashes_or_with_a_stale_package() -> None:
    text = LOCK.read_text()
    unhashed = re.sub(r"(structlog==\S+ \\\n)(\s+--hash=\S+( \\)?\n)+", r"structlog==26.1.0\n", text)
    assert "structlog has no hash" in problems(parse_lock(unhashed), runtime_requirements())
    stale = text + "leftover==1.0 \\\n    --hash=sha256:" + "0" * 64 + "\n    # via gone-package\n"
    assert "leftover is needed by gone-package, which is not locked" in problems(
        parse_lock(stale), runtime_requirements()
    )
