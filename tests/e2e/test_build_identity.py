"""Which build runs: `escalation --version` and escalation_build_info on every process's /metrics (issue 11 §5)."""

from __future__ import annotations

import asyncio
import importlib.metadata
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from escalation import config
from tests.e2e.harness import REPO, run
from tests.e2e.replicas import serving, wait_serving
from tests.e2e.workers_harness import ESCALATION, _fetch_metrics, clean_env, wait_started, worker

VERSION = importlib.metadata.version("escalation")


def _version_line(**env: str) -> str:
    result = run((*ESCALATION, "--version"), clean_env(**env))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_version_prints_the_package_version_and_the_baked_revision() -> None:
    assert _version_line(ESCALATION_BUILD_REVISION="1a2b3c4d5e6f") == f"escalation {VERSION} (revision 1a2b3c4d5e6f)"


def test_version_in_a_checkout_without_a_baked_revision_names_its_head() -> None:
    head = subprocess.run(
        ("git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"), capture_output=True, text=True, check=True
    ).stdout.strip()
    assert _version_line() == f"escalation {VERSION} (revision {head})"


@pytest.mark.parametrize("bad", ["has space", "x" * 65, "semi;colon"])
def test_a_malformed_revision_is_a_configuration_error(bad: str) -> None:
    with pytest.raises(config.ConfigError, match="ESCALATION_BUILD_REVISION"):
        config.load({"ESCALATION_BUILD_REVISION": bad})


async def _build_info(metrics_addr: str) -> dict[tuple[str, str], float]:
    text = await asyncio.to_thread(_fetch_metrics, metrics_addr)
    return {
        (s.labels["version"], s.labels["revision"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "escalation_build_info"
        for s in family.samples
    }


async def test_serve_and_workers_publish_build_info(database_url: str, tmp_path: Path) -> None:
    revision = {"ESCALATION_BUILD_REVISION": "e2e-rev-7"}
    with worker("deadlines", database_url, tmp_path, "deadlines", env=revision) as deadlines:
        await wait_started(deadlines)
        assert await _build_info(deadlines.metrics_addr) == {(VERSION, "e2e-rev-7"): 1.0}
    with serving(database_url, tmp_path / "serve", count=1, **revision) as (replica,):
        await wait_serving(replica)
        assert await _build_info(replica.metrics_addr) == {(VERSION, "e2e-rev-7"): 1.0}
