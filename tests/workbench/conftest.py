"""Fixtures of the workbench tests (tests/workbench/harness.py)."""

from tests.workbench.harness import service

__all__ = ["service"]
