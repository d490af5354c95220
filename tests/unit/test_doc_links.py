"""The repository stands alone: every relative link in README.md and docs/*.md resolves inside it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target) and [text]: target; the target up to whitespace, ')' or '#'.
LINK = re.compile(r"\]\(([^)\s#]*)(?:#[^)\s]*)?\)|^\[[^\]]+\]:\s*(\S+)", re.MULTILINE)


def relative_links(doc: Path) -> list[str]:
    targets = [a or b for a, b in LINK.findall(doc.read_text())]
    return [t for t in targets if t and not re.match(r"[a-z][a-z0-9+.-]*:", t)]


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_every_relative_link_resolves_inside_the_repository(doc: Path) -> None:
    broken = []
    for target in relative_links(doc):
        resolved = (doc.parent / target).resolve()
        if not resolved.is_relative_to(ROOT) or not resolved.exists():
            broken.append(target)
    assert broken == []


def test_the_readme_links_to_the_rules_the_service_implements() -> None:
    assert "docs/rules.md" in relative_links(ROOT / "README.md")
