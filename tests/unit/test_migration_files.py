"""How the migrator reads migration files: names, the no-transaction header, statements (docs/migrations.md)."""

from __future__ import annotations

import pytest

from escalation.store.migrate import MigrationError, migrations, parse


def test_the_shipped_migrations_are_numbered_without_gaps_and_transactional_unless_marked() -> None:
    shipped = migrations()
    assert [m.version for m in shipped] == list(range(1, len(shipped) + 1))
    for migration in shipped:
        assert migration.transactional == ("-- escalation: no-transaction" not in migration.sql)


@pytest.mark.parametrize("name", ["0007_x.sql.orig", "7_x.sql", "0007_X.sql", "0007_x.sql\n", "README.md"])
def test_files_that_are_not_migrations_are_ignored(name: str) -> None:
    assert parse(name, "SELECT 1;") is None


@pytest.mark.parametrize(
    "header",
    [
        "-- escalation: no-transaction\n",
        "--escalation:no-transaction\n",
        "-- 0007: an index on outbox\n--\n-- escalation: no-transaction\n",
        "\n-- escalation: no-transaction   \n",
    ],
)
def test_the_no_transaction_header_is_found_among_the_leading_comments(header: str) -> None:
    migration = parse("0007_x.sql", header + "CREATE INDEX CONCURRENTLY IF NOT EXISTS x ON outbox (id);\n")
    assert migration is not None
    assert not migration.transactional
    assert migration.concurrent_indexes() == ["x"]


def test_the_header_below_a_statement_does_not_count() -> None:
    migration = parse("0007_x.sql", "SELECT 1;\n-- escalation: no-transaction\n")
    assert migration is not None
    assert migration.transactional


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE INDEX CONCURRENTLY x ON outbox (id);",
        "create unique index concurrently if not exists x on outbox (id);",
        "-- why\nDROP INDEX CONCURRENTLY x;",
        "REINDEX INDEX CONCURRENTLY x;",
    ],
)
def test_concurrently_without_the_header_is_refused_before_anything_runs(sql: str) -> None:
    with pytest.raises(MigrationError, match="no-transaction"):
        parse("0007_x.sql", sql)


def test_the_word_concurrently_in_a_comment_is_fine() -> None:
    migration = parse("0007_x.sql", "-- not CONCURRENTLY: the table is new and empty\nCREATE INDEX x ON t (id);\n")
    assert migration is not None
    assert migration.transactional


@pytest.mark.parametrize("body", ["$$ SELECT 1; $$", "$fn$ SELECT 1; $fn$"])
def test_a_no_transaction_migration_cannot_hold_dollar_quoted_bodies(body: str) -> None:
    with pytest.raises(MigrationError, match="dollar"):
        parse("0007_x.sql", f"-- escalation: no-transaction\nDO {body};\n")


def test_a_no_transaction_migration_is_split_into_its_statements() -> None:
    migration = parse(
        "0007_x.sql",
        "-- escalation: no-transaction\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS a ON t (x);  -- why a\n"
        "-- why b\n"
        "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS public.b\n    ON t (y);\n"
        'CREATE INDEX CONCURRENTLY IF NOT EXISTS "C" ON t (z)',
    )
    assert migration is not None
    assert migration.statements() == [
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS a ON t (x)",
        "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS public.b\n    ON t (y)",
        'CREATE INDEX CONCURRENTLY IF NOT EXISTS "C" ON t (z)',
    ]
    assert migration.concurrent_indexes() == ["a", "public.b", '"C"']
