"""The SQL ceiling (SPEC §5): the PostgreSQL work of one RPC, run by pgbench without the service.

``tests/bench/pgbench/<rpc>.sql`` holds the statements one RPC sends (see the files' headers). pgbench
runs them with 20 clients and prepared statements on the bench's durable PostgreSQL, in a database of
their own: the transactions per second it reaches are what PostgreSQL can do for that RPC on this
machine whatever the service does, so the service's rate through gRPC is read against it. When an
RPC becomes one server-side function call, its script becomes that one ``SELECT``: nothing here
changes (the variables the scripts may use are all passed, used or not).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import asyncpg

from escalation.domain import assignment, limits
from escalation.services import records
from escalation.store import events
from escalation.v1 import common_pb2
from tests.bench import cpu
from tests.bench.api import FOLLOW_UP_TEXT, OPENING_TEXT, PLATFORM_AGENT, make_merchant
from tests.bench.env import BenchEnv, BenchError, say
from tests.bench.report import NONE, Report
from tests.bench.sizes import Sizes

PGBENCH = Path("/usr/lib/postgresql/15/bin/pgbench")
SCRIPT_DIR = Path(__file__).resolve().parent / "pgbench"
OPEN_SCRIPT, SEND_SCRIPT = SCRIPT_DIR / "open_session.sql", SCRIPT_DIR / "send_message.sql"
OPEN_TPS_TARGET = 1_500.0  # transactions/s, the PostgreSQL work of one OpenSession (SPEC §5)
# Each script, the RPC it reproduces and its SPEC §5 target (None: measured for information).
SCRIPTS: tuple[tuple[Path, str, float | None], ...] = (
    (OPEN_SCRIPT, "OpenSession", OPEN_TPS_TARGET),
    (SEND_SCRIPT, "SendMessage", None),
)
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
T = TypeVar("T")
_VARIABLE = re.compile(r"(?<!:):([a-z_][a-z0-9_]*)")


@dataclass
class SqlResult:
    label: str
    clients: int
    transactions: int
    failed: int
    seconds: float
    latency_ms: float  # pgbench's average transaction latency
    postgres_cpu: float  # CPU seconds of the whole PostgreSQL process tree during the run
    client_cpu: float  # CPU seconds of pgbench
    machine: dict[str, float]  # CpuMeter's machine and others

    @property
    def rate(self) -> float:
        return self.transactions / self.seconds if self.seconds > 0 else 0.0

    def per_call(self) -> str:
        """CPU milliseconds per transaction, as cpu.per_call words it for the gRPC lines."""
        if not self.transactions:
            return "no transaction"
        pg = self.postgres_cpu / self.transactions * 1000
        client = self.client_cpu / self.transactions * 1000
        busy = f"machine busy {self.machine.get('machine', 0.0):.2f} of {cpu.CORES} cores"
        return f"CPU per call: pgbench {client:.2f} ms, postgres {pg:.2f} ms; {busy}"


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


async def prepare(env: BenchEnv, sizes: Sizes, name: str = "bench_sql") -> tuple[str, dict[str, str]]:
    """A migrated database of its own, set up for the scripts; returns its URL and the variables to pass."""
    url = await env.create_database(name)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    assert pool is not None
    try:
        values = await set_up(pool, merchants=sizes.merchants, sessions=sizes.sql_send_sessions)
    finally:
        await pool.close()
    return url, values


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


def pgbench_argv(url: str, script: Path, values: Mapping[str, str], clients: int, run: str) -> list[str]:
    """pgbench running ``script`` with prepared statements; ``run`` is ``--time=S`` or ``--transactions=N``."""
    argv = [str(PGBENCH), "--no-vacuum", "--protocol=prepared", f"--client={clients}", f"--jobs={min(2, clients)}"]
    argv += [run, f"--file={script}"]
    argv += [f"--define={k}={v}" for k, v in values.items()]
    return [*argv, url]


def _run(argv: list[str], pg_pid: int | None) -> tuple[str, float, float, dict[str, float]]:
    """Runs pgbench; returns its output, its CPU seconds, PostgreSQL's, and the machine's use."""
    meter = cpu.CpuMeter({})
    pg_before = cpu.tree_seconds(pg_pid) if pg_pid else 0.0
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PGAPPNAME": "pgbench"}
    )
    assert proc.stdout is not None
    output = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    pg_used = (cpu.tree_seconds(pg_pid) - pg_before) if pg_pid else 0.0
    machine = meter.stop()
    if proc.returncode != 0:
        raise BenchError(f"pgbench exited with status {proc.returncode}:\n{output[-3000:]}")
    return output, usage.ru_utime + usage.ru_stime, pg_used, machine


def _number(pattern: str, output: str) -> float:
    found = re.search(pattern, output)
    if found is None:
        raise BenchError(f"pgbench output without {pattern!r}:\n{output[-3000:]}")
    return float(found.group(1))


async def run_script(
    env: BenchEnv, sizes: Sizes, url: str, values: Mapping[str, str], script: Path, label: str
) -> SqlResult:
    """``sizes.sql_clients`` pgbench clients run ``script`` for a warm-up, then for ``sizes.duration``."""
    pg_pid = env.pg.pid if env.pg is not None else None
    clients = sizes.sql_clients
    say(f"  {label}: pgbench, {clients} clients, prepared statements, warming up {sizes.warmup:.0f} s")
    await asyncio.to_thread(
        _run, pgbench_argv(url, script, values, clients, f"--time={max(1, round(sizes.warmup))}"), pg_pid
    )
    started = time.monotonic()
    output, client_cpu, pg_cpu, machine = await asyncio.to_thread(
        _run, pgbench_argv(url, script, values, clients, f"--time={max(1, round(sizes.duration))}"), pg_pid
    )
    wall = time.monotonic() - started
    transactions = int(_number(r"number of transactions actually processed: (\d+)", output))
    failed_match = re.search(r"number of failed transactions: (\d+)", output)
    seconds = _number(r"duration: (\d+) s", output)
    result = SqlResult(
        label=label,
        clients=clients,
        transactions=transactions,
        failed=int(failed_match.group(1)) if failed_match else 0,
        seconds=seconds,
        latency_ms=_number(r"latency average = ([\d.]+) ms", output),
        # Measured over pgbench's whole life (connecting included), so scaled to its measured window.
        postgres_cpu=pg_cpu * seconds / wall,
        client_cpu=client_cpu * seconds / wall,
        machine=machine,
    )
    say(
        f"  {label}: {result.rate:,.0f} transactions/s, latency average {result.latency_ms:.1f} ms; {result.per_call()}"
    )
    return result


class Stepper(Protocol):
    """Runs one named measurement; a failure is reported and yields None (main.Run.step)."""

    async def step(self, name: str, work: Callable[[], Awaitable[T]]) -> T | None: ...


async def measure(
    run: Stepper, env: BenchEnv, sizes: Sizes, report: Report, grpc_rates: Mapping[str, float | None]
) -> None:
    """Both scripts with the database as it is, then without its NOTIFY triggers; one report line each.

    ``grpc_rates``: the service's rate through gRPC for each RPC in this run (None: not measured).
    """
    prepared = await run.step(
        f"3b. SQL ceiling: setting up a database with {sizes.sql_send_sessions:,} sessions",
        lambda: prepare(env, sizes),
    )
    facts = await env.server_facts()
    durable = f"fsync={facts['fsync']}, synchronous_commit={facts['synchronous_commit']}"
    measured: dict[str, SqlResult] = {}
    for script, rpc, target in SCRIPTS:
        measure = (
            f"SQL ceiling: the PostgreSQL work of one {rpc} ({script.name}, {len(statements(script))} round trips), "
            f"{sizes.sql_clients} pgbench clients, prepared statements, {durable}, without the service"
        )
        wanted = f"≥ {target:,.0f} tps" if target else NONE
        result = None
        if prepared is not None:
            url, values = prepared
            result = await run.step(
                f"3b. SQL ceiling of {rpc}", partial(run_script, env, sizes, url, values, script, rpc)
            )
        if result is None:
            report.failed(measure, "see the log above", wanted)
            continue
        measured[rpc] = result
        text = f"**{result.rate:,.0f} tps** (latency average {result.latency_ms:.1f} ms; {result.per_call()})"
        if result.failed:
            text += f"; {result.failed} transactions failed"
        rate = grpc_rates.get(rpc)
        if rate is not None:
            text += f"; the service through gRPC in this run: {rate:,.0f}/s = {rate / result.rate:.2f} × this ceiling"
        else:
            text += "; the service's rate through gRPC was not measured in this run"
        if target is None:
            report.info(measure, text)
            say(f"  SQL ceiling of {rpc}: {result.rate:,.0f} tps")
        else:
            verdict = report.target(measure, text, wanted, result.rate >= target and not result.failed)
            say(f"  SQL ceiling of {rpc}: {result.rate:,.0f} tps (target {wanted}): {verdict}")
    if prepared is not None and measured:
        await _without_notify(run, env, sizes, report, prepared, measured)


async def _without_notify(
    run: Stepper,
    env: BenchEnv,
    sizes: Sizes,
    report: Report,
    prepared: tuple[str, dict[str, str]],
    measured: Mapping[str, SqlResult],
) -> None:
    """The same scripts again with every trigger that calls pg_notify disabled: what NOTIFY costs."""
    url, values = prepared
    disabled = await run.step("3c. SQL ceiling without NOTIFY triggers", lambda: disable_notify_triggers(url))
    measure = "Same PostgreSQL work without the triggers that NOTIFY (information: what per-commit NOTIFY costs)"
    if disabled is None:
        report.failed(measure, "see the log above")
        return
    if not disabled:
        report.info(measure, "no trigger calls pg_notify: nothing to compare")
        return
    parts = []
    for script, rpc, _ in SCRIPTS:
        if rpc not in measured:
            continue
        result = await run.step(
            f"3c. {rpc} without NOTIFY triggers", partial(run_script, env, sizes, url, values, script, rpc)
        )
        if result is not None:
            parts.append(
                f"{rpc} **{result.rate:,.0f} tps** = {result.rate / measured[rpc].rate:.2f} × with them "
                f"({result.per_call()})"
            )
    report.info(measure, "; ".join(parts) + f" (disabled: {', '.join(disabled)})" if parts else "see the log above")


async def disable_notify_triggers(url: str) -> list[str]:
    """Disables every user trigger whose function calls pg_notify; returns them as ``table.trigger``."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT t.tgrelid::regclass::text AS tbl, t.tgname FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
            "WHERE NOT t.tgisinternal AND p.prosrc ILIKE '%pg_notify%' ORDER BY 1, 2"
        )
        for row in rows:
            await conn.execute(f'ALTER TABLE {row["tbl"]} DISABLE TRIGGER "{row["tgname"]}"')
    finally:
        await conn.close()
    return [f"{r['tbl']}.{r['tgname']}" for r in rows]
