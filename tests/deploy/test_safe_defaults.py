"""Safe defaults (issue 10 §6): no usable secret in any committed file, and the dev files that hold the
dev secret (or tokens signed with it) readable by their owner only.

The scan reads every file git tracks, except tests/ (their secrets sign tokens for throwaway servers the
tests start themselves) and this repository's generated protobuf code. It looks for: a secret-named key
(…SECRET, …PASSWORD, …TOKEN) given a literal value, a connection URL with a literal password, a string
shaped like the dev JWT secret (`secrets.token_urlsafe`), a JWT, and a PEM private key.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from escalation.devenv import runner
from tests.deploy.harness import REPO

# An environment-style key (ESCALATION_JWT_SECRET, POSTGRES_PASSWORD, …), not inside a `${…}`.
_KEY_WITH_VALUE = re.compile(
    r"""(?<![\w{$])(?P<key>[A-Z0-9_]*(?:SECRET|PASSWORD|PASSWD|TOKEN)[A-Z0-9_]*)["']?[ \t]*[:=][ \t]*["']?"""
    r"""(?P<value>[^\s"',;)}\]]*)"""
)
_URL_PASSWORD = re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@]+:(?P<value>[^@\s/]+)@")
# secrets.token_urlsafe(n ≥ 32): at least 43 URL-safe base64 characters; a real one mixes cases and
# digits (an identifier or a hex digest does not).
_URLSAFE = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43,}(?![A-Za-z0-9_-])")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.")
_PRIVATE_KEY = re.compile(r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----")


def _placeholder(value: str, python: bool) -> bool:
    """Not a usable secret: empty, an interpolation (`${X}`, `$X`, `{x}`), an ellipsis or `<…>`; in
    Python source also a name or a call (a variable, attribute or call's result holds the value, not the
    text: `_TOKEN = re.compile(…)`) or a number (a size such as paging's _MAX_TOKEN)."""
    return (
        len(value) < 4
        or value.startswith(("$", "{", "<", ".", "%"))
        or (python and re.fullmatch(r"[a-z_][a-z0-9_.]*(\(.*)?|[0-9_]+", value) is not None)
    )


def _secret_shaped(word: str) -> bool:
    return bool(re.search(r"[a-z]", word) and re.search(r"[A-Z]", word) and re.search(r"[0-9]", word))


def findings(text: str, python: bool = False) -> list[str]:
    """Every usable-looking secret in ``text`` (``python``: it is Python source), as short descriptions."""
    found = []
    for match in _KEY_WITH_VALUE.finditer(text):
        # A `…_FILE` key names where the secret lives (docs/production.md), not the secret.
        if match["key"].endswith("_FILE"):
            continue
        if not _placeholder(match["value"], python):
            found.append(f"{match['key']} has a literal value")
    for match in _URL_PASSWORD.finditer(text):
        if not _placeholder(match["value"], python):
            found.append("a URL with a literal password")
    found += ["a string shaped like a generated secret" for w in _URLSAFE.findall(text) if _secret_shaped(w)]
    found += ["a JWT"] * len(_JWT.findall(text))
    found += ["a PEM private key"] * len(_PRIVATE_KEY.findall(text))
    return found


def _committed() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    paths = [REPO / p for p in listed.decode().split("\0") if p]
    return [p for p in paths if p.is_file() and p.relative_to(REPO).parts[0] != "tests" and "/v1/" not in str(p)]


def test_no_committed_file_holds_a_usable_secret() -> None:
    files = _committed()
    assert any(p.name == "compose.yaml" for p in files)
    found = {}
    for path in files:
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        if hits := findings(text, python=path.suffix == ".py"):
            found[str(path.relative_to(REPO))] = hits
    assert found == {}


@pytest.mark.parametrize(
    "text",
    [
        "    ESCALATION_JWT_SECRET: change-me-change-me-change-me-change-me",
        "export ESCALATION_JWT_SECRET=Zm9vYmFyYmF6cXV4",
        'ESCALATION_DATABASE_URL: "postgresql://escalation:escalation@postgres:5432/escalation"',
        "environment: { POSTGRES_USER: escalation, POSTGRES_PASSWORD: escalation2024 }",
        "secret = 'q3V8kL2mN9pR4sT7uW1xY5zA6bC0dE8fG3hJ9kL2mN4pQ7rS'",
        "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJkZW1vIn0.sig",
        "-----BEGIN RSA PRIVATE KEY-----",
    ],
)
def test_the_scan_finds_the_kinds_of_committed_secret(text: str) -> None:
    assert findings(text), text


@pytest.mark.parametrize(
    "text",
    [
        "ESCALATION_JWT_SECRET: ${ESCALATION_JWT_SECRET:?set it in deploy/.env}",
        "postgresql://escalation:${POSTGRES_PASSWORD:?set it}@postgres:5432/escalation",
        "Mint tokens with `ESCALATION_JWT_SECRET=... escalation token`",
        "ESCALATION_JWT_SECRET: ''",
        "FROM python:3.11@sha256:5148c0e4bbb64271bca1d3322360ebf4bfb7564507ae32dd639322e4952a6b16",
        "def test_the_build_context_keeps_what_the_dockerfile_copies_and_nothing_else() -> None:",
        "ESCALATION_JWT_SECRET=",
        "ESCALATION_KAFKA_SASL_PASSWORD_FILE=/run/secrets/kafka-password",
        "ESCALATION_KAFKA_SASL_PASSWORD_FILE: /var/run/secrets/kafka/password",
    ],
)
def test_the_scan_leaves_placeholders_digests_and_names_alone(text: str) -> None:
    assert findings(text) == [], text


@pytest.mark.parametrize(
    "text",
    [
        'f"export ESCALATION_JWT_SECRET={secret}\\n"',
        '{"ESCALATION_JWT_SECRET": secret, "X": 1}',
        "token = mint()",
        '_TOKEN = re.compile(r"[A-Za-z0-9_-]+")',
        "SECRET_FIELDS = frozenset(('password',))",
    ],
)
def test_in_python_a_name_holding_the_secret_is_not_one(text: str) -> None:
    assert findings(text, python=True) == [], text


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> object:
    """A umask that masks nothing: the files must be private whatever the developer's umask."""
    old = os.umask(0)
    yield None
    os.umask(old)


def test_make_run_writes_the_dev_secret_and_dev_env_owner_only(tmp_path: Path, open_umask: object) -> None:
    secret = runner._jwt_secret(tmp_path)
    ports = runner.DevPorts(postgres=55432, kafka=19092, grpc_addr="127.0.0.1:50051", metrics_addr="127.0.0.1:9464")
    runner._banner(ports, secret, tmp_path)
    assert _mode(tmp_path / "dev-jwt-secret") == 0o600
    assert _mode(tmp_path / "dev.env") == 0o600
    assert f"ESCALATION_JWT_SECRET={secret}" in (tmp_path / "dev.env").read_text()


def test_dev_files_left_world_readable_by_an_older_run_are_tightened(tmp_path: Path, open_umask: object) -> None:
    for name in ("dev-jwt-secret", "dev.env"):
        (tmp_path / name).write_text("x" * 64)
        (tmp_path / name).chmod(0o644)
    secret = runner._jwt_secret(tmp_path)
    ports = runner.DevPorts(postgres=55432, kafka=19092, grpc_addr="127.0.0.1:50051", metrics_addr="127.0.0.1:9464")
    runner._banner(ports, secret, tmp_path)
    assert _mode(tmp_path / "dev-jwt-secret") == 0o600
    assert _mode(tmp_path / "dev.env") == 0o600


def test_make_run_binds_grpc_and_metrics_to_loopback_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "ESCALATION_GRPC_ADDR",
        "ESCALATION_METRICS_ADDR",
        "ESCALATION_DEV_PG_PORT",
        "ESCALATION_DEV_KAFKA_PORT",
    ):
        monkeypatch.delenv(name, raising=False)
    ports = runner.DevPorts.from_env()
    assert (ports.grpc_addr, ports.metrics_addr) == ("127.0.0.1:50051", "127.0.0.1:9464")
    monkeypatch.setenv("ESCALATION_GRPC_ADDR", "0.0.0.0:50052")
    assert runner.DevPorts.from_env().grpc_addr == "0.0.0.0:50052"
