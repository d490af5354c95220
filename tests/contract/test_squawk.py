"""squawk is clean on every migration after the recorded baseline (0001-0006, see .squawk.toml).

Transactional migrations are linted as run inside a transaction (the config's assume_in_transaction),
`-- escalation: no-transaction` ones without it, so each file is judged as the migrator runs it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from escalation.store.migrate import migrations
from tests.contract.tools import ROOT, run

MIGRATIONS = Path("escalation") / "store" / "migrations"


def squawk_findings(root: Path, cache: Path) -> list[str]:
    """squawk's findings on root's migrations as 'path:line:col: warning: rule message' lines."""
    found = migrations(root / MIGRATIONS)
    in_transaction = [str(MIGRATIONS / f"{m.version:04d}_{m.name}.sql") for m in found if m.transactional]
    outside = [str(MIGRATIONS / f"{m.version:04d}_{m.name}.sql") for m in found if not m.transactional]
    findings: list[str] = []
    for paths, mode in ((in_transaction, "--assume-in-transaction"), (outside, "--no-assume-in-transaction")):
        if not paths:
            continue
        # Every path may be in the baseline (excluded): that is not an error.
        args = ("-c", ".squawk.toml", mode, "--reporter", "gcc", "--no-error-on-unmatched-pattern", *paths)
        result = run("squawk", *args, cwd=root, cache=cache)
        lines = [line for line in result.stdout.splitlines() if ": warning: " in line or ": error: " in line]
        assert result.returncode in (0, 1), result.stdout + result.stderr
        assert (result.returncode == 1) == bool(lines), result.stdout + result.stderr
        findings += lines
    return findings


def rules(findings: list[str]) -> set[str]:
    return {line.split(": ", 2)[2].split(" ", 1)[0] for line in findings}


def _copy_with(tmp_path: Path, new: dict[str, str]) -> Path:
    """A copy of the migrations and .squawk.toml with new files added."""
    root = tmp_path / "repo"
    shutil.copytree(ROOT / MIGRATIONS, root / MIGRATIONS)
    shutil.copy(ROOT / ".squawk.toml", root / ".squawk.toml")
    for name, sql in new.items():
        (root / MIGRATIONS / name).write_text(sql)
    return root


def test_migrations_after_the_baseline_are_squawk_clean(tmp_path: Path) -> None:
    assert squawk_findings(ROOT, tmp_path) == []


def test_a_file_added_after_the_baseline_is_checked_and_the_baseline_is_not(tmp_path: Path) -> None:
    version = len(migrations()) + 1
    initial = (ROOT / MIGRATIONS / "0001_initial.sql").read_text()
    root = _copy_with(tmp_path, {f"{version:04d}_again.sql": initial})

    findings = squawk_findings(root, tmp_path)

    assert findings
    assert {line.split(":", 1)[0] for line in findings} == {str(MIGRATIONS / f"{version:04d}_again.sql")}


NO_TX = "-- escalation: no-transaction\n"


@pytest.mark.parametrize(
    ("sql", "rule"),
    [
        ("CREATE INDEX outbox_topic ON outbox (topic);\n", "require-concurrent-index-creation"),
        ("DROP INDEX outbox_parked;\n", "require-concurrent-index-deletion"),
        ("ALTER TABLE outbox ADD COLUMN note text NOT NULL;\n", "adding-required-field"),
        ("ALTER TABLE outbox ALTER COLUMN topic TYPE varchar(300);\n", "changing-column-type"),
        ("ALTER TABLE outbox ADD COLUMN tries integer;\n", "prefer-bigint-over-int"),
        (
            "ALTER TABLE tickets ADD CONSTRAINT tickets_session FOREIGN KEY (session_id) REFERENCES sessions (id);\n",
            "adding-foreign-key-constraint",
        ),
        # Outside a transaction a statement that fails midway stays half done: re-runs need IF NOT EXISTS.
        (NO_TX + "CREATE INDEX CONCURRENTLY outbox_topic ON outbox (topic);\n", "prefer-robust-stmts"),
    ],
)
def test_a_risky_new_migration_is_reported(tmp_path: Path, sql: str, rule: str) -> None:
    version = len(migrations()) + 1
    root = _copy_with(tmp_path, {f"{version:04d}_risky.sql": sql})
    assert rule in rules(squawk_findings(root, tmp_path))


@pytest.mark.parametrize(
    "sql",
    [
        "ALTER TABLE outbox ADD COLUMN traceparent text;\n",
        NO_TX + "CREATE INDEX CONCURRENTLY IF NOT EXISTS outbox_topic ON outbox (topic);\n",
        NO_TX + "DROP INDEX CONCURRENTLY IF EXISTS outbox_parked;\n",
        "ALTER TABLE outbox ADD COLUMN tries bigint NOT NULL DEFAULT 0;\n",
    ],
)
def test_a_safe_new_migration_passes(tmp_path: Path, sql: str) -> None:
    version = len(migrations()) + 1
    root = _copy_with(tmp_path, {f"{version:04d}_safe.sql": sql})
    assert squawk_findings(root, tmp_path) == []
