"""deploy/Dockerfile and .dockerignore, checked offline (issue 11 §6): hadolint clean, base image pinned
by digest, dependencies installed from the hash-locked file only, and a build context that leaves out
local state and secrets."""

from __future__ import annotations

import re

import pytest

from tests.deploy.harness import BIN, DEPLOY, REPO, run

DOCKERFILE = DEPLOY / "Dockerfile"


def test_hadolint_finds_nothing() -> None:
    # Every severity counts: info and style findings fail too.
    result = run(BIN / "hadolint", "--failure-threshold", "style", DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def _from_images() -> list[str]:
    text = DOCKERFILE.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.MULTILINE))
    images = []
    for ref in re.findall(r"^FROM (\S+)", text, flags=re.MULTILINE):
        images.append(args.get(ref.removeprefix("${").removesuffix("}"), ref))
    return images


def test_every_base_image_is_pinned_by_digest() -> None:
    images = _from_images()
    stages = set(re.findall(r"^FROM \S+ AS (\w+)", DOCKERFILE.read_text(), flags=re.MULTILINE))
    external = [image for image in images if image not in stages]
    assert external
    for image in external:
        assert re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", image), image


def test_dependencies_come_from_the_lock_with_hashes_and_the_package_without_deps() -> None:
    text = DOCKERFILE.read_text()
    installs = re.findall(r"pip install ([^\n&]*)", text)
    assert any("--require-hashes" in i and "-r requirements.lock" in i for i in installs), installs
    # Any other install adds our package only: nothing unlocked is resolved.
    for install in installs:
        assert "--require-hashes" in install or "--no-deps" in install, install
    assert "COPY deploy/requirements.lock" in text


def test_the_image_runs_as_a_numeric_non_root_user() -> None:
    users = re.findall(r"^USER (\S+)", DOCKERFILE.read_text(), flags=re.MULTILINE)
    assert users
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), users  # numeric: runAsNonRoot can verify it
    assert int(uid) != 0, users


def _dockerignore() -> list[tuple[bool, str]]:
    """(negated, pattern) in order; Docker's rule: the last matching pattern decides."""
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), line.removeprefix("!").rstrip("/")))
    return rules


def _regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern syntax: ``*`` and ``?`` stay within one path element, ``**`` spans any."""
    out = ""
    for token in re.split(r"(\*\*/?|\*|\?)", pattern):
        if token in ("**", "**/"):
            out += "(.*/)?" if token == "**/" else ".*"
        elif token == "*":
            out += "[^/]*"
        elif token == "?":
            out += "[^/]"
        else:
            out += re.escape(token)
    return re.compile(out)


def _excluded(path: str) -> bool:
    """Whether the build context leaves ``path`` out (moby's rule: the last pattern matching the path
    or one of its parent directories decides)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    verdict = False
    for negated, pattern in _dockerignore():
        if any(_regex(pattern).fullmatch(prefix) for prefix in prefixes):
            verdict = not negated
    return verdict


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".data/dev.env",
        ".data/dev-jwt-secret",
        ".git/config",
        "deploy/.env",
        ".env",
        "escalation/.env",
        "tests/conftest.py",
        "escalation/__pycache__/cli.cpython-311.pyc",
        "server.key",
        "deploy/tls/server.pem",
        ".mypy_cache/x",
    ],
)
def test_the_build_context_leaves_out(path: str) -> None:
    assert _excluded(path), path


@pytest.mark.parametrize(
    "path", ["pyproject.toml", "README.md", "escalation/cli.py", "workers/loop.py", "deploy/requirements.lock"]
)
def test_the_build_context_keeps_what_the_dockerfile_copies(path: str) -> None:
    assert not _excluded(path), path
    assert (REPO / path).exists()
