"""The pgbench scripts of the SQL ceiling (tests/bench/pgbench/*.sql): reading them, the values they
bind, and a database set up for them (merchants, and the sessions send_message.sql writes to).

The scripts' conventions are in their headers; docs/performance.md says why they look as they do.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import asyncpg

from escalation.domain import assignment, limits
from escalation.services import records
from escalation.store import events
from escalation.v1 import common_pb2
from tests.bench.api import FOLLOW_UP_TEXT, OPENING_TEXT, PLATFORM_AGENT, make_merchant
from tests.bench.env import BenchError

SCRIPT_DIR = Path(__file__).resolve().parent / "pgbench"
OPEN_SCRIPT, SEND_SCRIPT = SCRIPT_DIR / "open_session.sql", SCRIPT_DIR / "send_message.sql"
AGENTS = 3  # per merchant: agents m*10+1 .. m*10+3 (the scripts rely on it)
REPLY_TIMEOUT = 120.0  # seconds, the reception settings' default
REMIND_BEFORE = 60.0  # seconds, SessionPolicy's default
PRESENCE_WINDOW = 45.0  # seconds, SessionPolicy's default

# pgbench variables are numbers. bench_uuid(n): a new session's id made of a random number (today's
# open_session.sql chooses the id, as the service does). bench_session(n): the id of the n-th session
# set_up() opened, whatever chose it, which send_message.sql writes to; so the setup works with any
# open script. Both are expressions without FROM, so PostgreSQL inlines them into the statement:
# bench_session is a subscript of a constant array, no table read.
BENCH_UUID = """
CREATE FUNCTION bench_uuid(n bigint) RETURNS uuid LANGUAGE sql IMMUTABLE STRICT
AS $$ SELECT lpad(to_hex(n), 32, '0')::uuid $$
"""
BENCH_SESSION = """
CREATE FUNCTION bench_session(n bigint) RETURNS uuid LANGUAGE sql IMMUTABLE STRICT
AS $$ SELECT ('{ids}'::uuid[])[n] $$
"""
_VARIABLE = re.compile(r"(?<!:):([a-z_][a-z0-9_]*)")


def statements(script: Path) -> list[tuple[str | None, str]]:
    """The SQL commands of a pgbench script, in order, each with the ``-- name:`` it reproduces (or None).

    Meta-commands (``\\set``) and comments are left out; a command ends with ``;`` at the end of a line.
    """
    found: list[tuple[str | None, str]] = []
    name: str | None = None
    lines: list[str] = []
    for line in script.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("-- name:"):
            name = stripped.removeprefix("-- name:").strip()
        elif stripped.startswith(("--", "\\")) or not stripped:
            continue
        else:
            lines.append(line)
            if stripped.endswith(";"):
                found.append((name, "\n".join(lines).rstrip(";")))
                name, lines = None, []
    return found


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


async def run_once(conn: asyncpg.Connection, script: Path, variables: Mapping[str, object]) -> None:
    """Runs a script's SQL once on ``conn`` with ``variables`` as literals, in the caller's transaction.

    For setting up: pgbench itself has no way to give each transaction a chosen session number.
    BEGIN and COMMIT are skipped (the caller owns the transaction); meta-commands too, so every
    variable must be given.
    """
    for _, text in statements(script):
        if text.strip().upper() in ("BEGIN", "COMMIT"):
            continue
        await conn.execute(_VARIABLE.sub(lambda m: _literal(str(variables[m.group(1)])), text))


def _bytea(data: bytes) -> str:
    return "\\x" + data.hex()


def _bytea_array(items: list[bytes]) -> str:
    return "{" + ",".join(f'"\\\\x{item.hex()}"' for item in items) + "}"


def variables(merchants: int, sessions: int) -> dict[str, str]:
    """What the scripts bind besides their own ``\\set`` numbers: the values the service would send,
    the protobuf payloads serialized by the service's own code from a representative session."""
    opening = common_pb2.MessageContent(text=common_pb2.Text(body=OPENING_TEXT)).SerializeToString()
    follow_up = common_pb2.MessageContent(text=common_pb2.Text(body=FOLLOW_UP_TEXT)).SerializeToString()
    now = datetime.now(UTC)
    session_id = uuid.uuid4()
    candidates = [assignment.Candidate(f"{10 + a}", 3, 10, now) for a in range(1, AGENTS + 1)]
    decision = common_pb2.AssignmentDecision(
        rule_version=assignment.RULE_VERSION,
        agent_id=candidates[0].agent_id,
        agent_connected=False,
        candidates=[
            common_pb2.AssignmentCandidate(
                agent_id=c.agent_id,
                open_sessions=c.open_sessions,
                capacity=c.capacity,
                saturation=float(c.saturation),
                last_assign_time=records.timestamp(c.last_assign_time),
            )
            for c in candidates
        ],
    )
    decision.decide_time.GetCurrentTime()
    session_row: dict[str, Any] = {
        "session_id": session_id,
        "merchant_id": "1",
        "assigned_agent_id": "11",
        "platform_agent_id": PLATFORM_AGENT,
        "order_id": "1234567890123456789",
        "category": "ORDER_OPERATION",
        "state": "OPEN",
        "close_reason": None,
        "open_time": now,
        "close_time": None,
        "reply_deadline": now,
        "last_seq": 1,
        "ticket_id": None,
        "assignment": decision.SerializeToString(),
    }

    def message(seq: int, content: bytes, client_msg_id: str | None) -> common_pb2.Message:
        row = {
            "session_id": session_id,
            "seq": seq,
            "sender": "PLATFORM",
            "sender_id": PLATFORM_AGENT,
            "client_msg_id": client_msg_id,
            "send_time": now,
            "content": content,
            "template_id": None,
        }
        return records.message(cast(asyncpg.Record, row))

    session = records.session(cast(asyncpg.Record, session_row))
    opened = events.session_assigned(session, [message(1, opening, None)])
    small = common_pb2.Session(session_id=str(session_id), merchant_id="1", assigned_agent_id="11")
    sent = [events.message_added(small, message(2, follow_up, "1234567890123456789"))]
    return {
        "merchants": str(merchants),
        "sessions": str(sessions),
        "platform_agent": PLATFORM_AGENT,
        "presence_window": str(PRESENCE_WINDOW),
        "category": "ORDER_OPERATION",
        "request_hash": _bytea(hashlib.sha256(b"a request").digest()),
        "assignment": _bytea(decision.SerializeToString()),
        "sender": "PLATFORM",
        "kind": "TEXT",
        "reply_timeout": str(REPLY_TIMEOUT),
        "remind_before": str(REMIND_BEFORE),
        "max_messages": str(limits.MAX_SESSION_MESSAGES),
        "max_content_bytes": str(limits.MAX_SESSION_CONTENT_BYTES),
        "open_kinds": "{" + ",".join(e.kind for e in opened) + "}",
        "open_payloads": _bytea_array([_payload(e) for e in opened]),
        "send_kinds": "{" + ",".join(e.kind for e in sent) + "}",
        "send_payloads": _bytea_array([_payload(e) for e in sent]),
        "opening": _bytea(opening),
        "follow_up": _bytea(follow_up),
        # What a one-call-per-RPC script (migration 0010) binds instead of rows and payloads built in Python.
        "message_kinds": "{TEXT}",
        "open_contents": _bytea_array([opening]),
        "rule_version": assignment.RULE_VERSION,
    }


def _payload(event: events.Event) -> bytes:
    # As events.append stores it: the body with its session id set.
    body = type(event.body)()
    body.CopyFrom(event.body)
    body.session_id = str(event.session_id)
    return body.SerializeToString()


async def set_up(pool: asyncpg.Pool, *, merchants: int, sessions: int) -> dict[str, str]:
    """Merchants 1..``merchants`` with their agents, and the sessions 1..``sessions`` send_message.sql
    writes to: session n opened by open_session.sql for merchant n % merchants + 1 (its agent
    merchant*10+1 when the script lets the bench choose), found by bench_session(n). Returns the
    variables to pass to pgbench."""
    values = variables(merchants, sessions)
    await pool.execute(BENCH_UUID)
    for m in range(1, merchants + 1):
        await make_merchant(pool, str(m), str(m * 10), [str(m * 10 + a) for a in range(1, AGENTS + 1)])
    async with pool.acquire() as conn, conn.transaction():
        for n in range(1, sessions + 1):
            merchant = n % merchants + 1
            await run_once(
                conn,
                OPEN_SCRIPT,
                {**values, "session": n, "request": n, "merchant": merchant, "agent": merchant * 10 + 1},
            )
    opened = await pool.fetch(
        "SELECT request_id, session_id FROM sessions WHERE platform_agent_id = $1 AND request_id = ANY($2::text[])",
        PLATFORM_AGENT,
        [str(n) for n in range(1, sessions + 1)],
    )
    ids = {int(r["request_id"]): str(r["session_id"]) for r in opened}
    if sorted(ids) != list(range(1, sessions + 1)):
        raise BenchError(f"open_session.sql opened {len(ids)} of the {sessions} sessions")
    await pool.execute(BENCH_SESSION.replace("{ids}", "{" + ",".join(ids[n] for n in sorted(ids)) + "}"))
    return values
