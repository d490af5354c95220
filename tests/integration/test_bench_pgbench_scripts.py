"""`make bench`'s SQL ceiling measures what the service sends: the pgbench scripts are its statements.

Each statement of tests/bench/pgbench/*.sql names the query of escalation/store/sql/ it reproduces and
must read the same but for its parameters; run by pgbench itself, one script transaction must write
what one RPC through the service writes, table by table.
"""

from __future__ import annotations

import re
import subprocess
import uuid
from pathlib import Path

import asyncpg
import pytest

from escalation.auth import Identity, Role
from escalation.domain.session import Kind
from escalation.services import sessions
from escalation.store.queries import sql
from tests.bench import pgbench_scripts, sqlceiling

SCRIPTS = [pgbench_scripts.OPEN_SCRIPT, pgbench_scripts.SEND_SCRIPT]


def _normal(text: str) -> str:
    """The statement with comments, layout, parameters and their casts gone: the bench's ids
    (``bench_uuid(:n)``, ``bench_session(:n)``, ``ARRAY[...]`` built from numbers) and literal NULLs
    count as parameters."""
    text = re.sub(r"--[^\n]*", "", text)
    text = re.sub(r"ARRAY\[[^\]]*\]|bench_\w+\(:\w+\)", "?", text)
    text = re.sub(r"\$\d+|(?<!:):[a-z_]\w*|\bNULL\b", "?", text)
    text = re.sub(r"\?(::\w+(\[\])?)+", "?", text)
    return " ".join(text.split()).rstrip(";")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_each_script_statement_is_the_services_query_but_for_its_parameters(script: Path) -> None:
    found = pgbench_scripts.statements(script)
    named = [(name, text) for name, text in found if name is not None]
    assert named, "the script names the queries it reproduces"
    assert all(text in ("BEGIN", "COMMIT") for name, text in found if name is None), "unnamed statements"
    for name, text in named:
        assert _normal(text) == _normal(sql(name)), name


async def _counts(pool: asyncpg.Pool) -> tuple[int, ...]:
    row = await pool.fetchrow(
        """SELECT (SELECT count(*) FROM sessions), (SELECT count(*) FROM messages),
                  (SELECT count(*) FROM merchant_events), (SELECT sum(open_sessions) FROM agents),
                  (SELECT sum(last_event_cursor) FROM merchants), (SELECT count(*) FROM outbox)"""
    )
    assert row is not None
    return tuple(int(v) for v in row)


def _pgbench_once(url: str, script: Path, values: dict[str, str]) -> None:
    argv = sqlceiling.pgbench_argv(url, script, values, 1, "--transactions=1")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "number of failed transactions: 0" in done.stdout, done.stdout


def _diff(after: tuple[int, ...], before: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(a - b for a, b in zip(after, before, strict=True))


async def test_one_script_transaction_writes_what_one_rpc_writes(database_url: str, pool: asyncpg.Pool) -> None:
    values = await pgbench_scripts.set_up(pool, merchants=3, sessions=4)
    platform = Identity(values["platform_agent"], Role.PLATFORM)
    policy = sessions.SessionPolicy()
    opening = bytes.fromhex(values["opening"].removeprefix("\\x"))
    follow_up = bytes.fromhex(values["follow_up"].removeprefix("\\x"))

    for merchant in ("1", "2"):  # two shops, so neither result is one merchant's accident
        before = await _counts(pool)
        opened = await sessions.open_session(
            pool,
            platform,
            sessions.OpenRequest(
                uuid.uuid4().hex, b"h", merchant, "ORDER_OPERATION", "o-1", [sessions.NewMessage(Kind.TEXT, opening)]
            ),
            policy,
        )
        by_service = _diff(await _counts(pool), before)
        before = await _counts(pool)
        _pgbench_once(database_url, pgbench_scripts.OPEN_SCRIPT, values)
        assert _diff(await _counts(pool), before) == by_service == (1, 1, 2, 1, 2, 0)

        before = await _counts(pool)
        await sessions.add_message(
            pool,
            platform,
            opened.session["session_id"],
            sessions.NewMessage(Kind.TEXT, follow_up, client_msg_id=uuid.uuid4().hex),
            policy,
        )
        by_service = _diff(await _counts(pool), before)
        before = await _counts(pool)
        _pgbench_once(database_url, pgbench_scripts.SEND_SCRIPT, values)
        assert _diff(await _counts(pool), before) == by_service == (0, 1, 1, 0, 1, 0)

    # The scripts' rows look like the service's: an open session with a deadline, its messages in order.
    rows = await pool.fetch(
        "SELECT state, last_seq, reply_deadline IS NOT NULL AS waiting FROM sessions "
        "WHERE session_id = ANY(SELECT bench_session(n) FROM generate_series(1, 4) n)"
    )
    assert len(rows) == 4
    assert all(r["state"] == "OPEN" and r["waiting"] for r in rows)
    assert sum(r["last_seq"] for r in rows) == 4 + 2  # one opening message each, plus the two sends
