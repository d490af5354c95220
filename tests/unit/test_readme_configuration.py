"""README's "Configuration" table documents every ESCALATION_* variable the service reads, and names no
variable it does not read (config.VARIABLES is the one list; the README's table is written for people,
so it is checked rather than generated)."""

from __future__ import annotations

import re
from pathlib import Path

from escalation import config

README = Path(__file__).resolve().parents[2] / "README.md"


def _documented() -> tuple[set[str], set[str]]:
    """(names a row documents, full names written in the table). A row may shorten siblings:
    `ESCALATION_DB_POOL_MIN` / `_MAX` documents ESCALATION_DB_POOL_MAX; `ESCALATION_X` / `_FILE` ESCALATION_X_FILE."""
    section = README.read_text().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    documented: set[str] = set()
    written: set[str] = set()
    for row in section.splitlines():
        if not row.startswith("| `"):
            continue
        base = ""
        for token in re.findall(r"`([A-Z0-9_]+)`", row.split("|")[1]):
            if token.startswith("ESCALATION_"):
                base = token
                documented.add(token)
                written.add(token)
            elif token.startswith("_") and base:
                parts, suffix = base.split("_"), token[1:].split("_")
                documented.add("_".join(parts[: len(parts) - len(suffix)] + suffix))
                documented.add(base + token)
    return documented, written


def test_every_variable_has_a_row_in_the_readme() -> None:
    documented, _ = _documented()
    missing = [v.name for v in config.VARIABLES if v.name not in documented]
    assert missing == [], f"README.md 'Configuration' lacks {missing}"


def test_the_readme_table_names_only_variables_that_exist() -> None:
    _, written = _documented()
    assert written <= {v.name for v in config.VARIABLES}, written - {v.name for v in config.VARIABLES}
