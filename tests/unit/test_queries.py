"""SQL files: names are unique and every query is found by name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from escalation.store import queries
from escalation.store.migrate import migrations


def test_parse_splits_named_queries() -> None:
    text = "-- name: a\nSELECT 1;\n\n-- name: b\nSELECT 2;\n"
    assert queries.parse(text) == {"a": "SELECT 1;", "b": "SELECT 2;"}


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        queries.parse("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")


def test_unknown_query_names_itself() -> None:
    with pytest.raises(KeyError, match="no_such_query"):
        queries.sql("no_such_query")


def test_shipped_queries_load() -> None:
    assert queries.sql("upsert_merchant").startswith("INSERT INTO merchants")


def test_migrations_are_numbered_without_gaps() -> None:
    found = migrations()
    assert [m.version for m in found] == list(range(1, len(found) + 1))


def test_every_query_the_code_names_exists() -> None:
    """A query removed from store/sql while code still names it fails here, not at run time (a merge
    once dropped four that the R13 moves still used)."""
    root = Path(__file__).resolve().parents[2]
    shipped = queries.named()
    missing = [
        f"{path.relative_to(root)}: {name}"
        for path in sorted([*(root / "escalation").rglob("*.py"), *(root / "workers").rglob("*.py")])
        for name in re.findall(r'\bsql\("([a-z0-9_]+)"\)', path.read_text(encoding="utf-8"))
        if name not in shipped
    ]
    assert missing == []
