"""SQL lives in ``sql/*.sql``; each query is introduced by a ``-- name: <query_name>`` line."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_HEADER = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    """Splits a .sql file into its named queries."""
    parts = _HEADER.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = body.strip()
    return queries


@cache
def _all() -> dict[str, str]:
    queries: dict[str, str] = {}
    for entry in sorted(resources.files("escalation.store").joinpath("sql").iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        for name, sql in parse(entry.read_text(encoding="utf-8")).items():
            if name in queries:
                raise ValueError(f"query {name!r} is defined in two files")
            queries[name] = sql
    return queries


def named() -> dict[str, str]:
    """Every query by name (a copy): tracing names database spans after them."""
    return dict(_all())


def sql(name: str) -> str:
    """The text of the query called ``name``; KeyError names it when it does not exist."""
    try:
        return _all()[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in escalation/store/sql") from None
