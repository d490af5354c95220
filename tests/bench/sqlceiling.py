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
import os
import re
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol, TypeVar

import asyncpg

from tests.bench import cpu
from tests.bench.env import BenchEnv, BenchError, say
from tests.bench.pgbench_scripts import OPEN_SCRIPT, SEND_SCRIPT, set_up, statements
from tests.bench.report import NONE, Report
from tests.bench.sizes import Sizes

PGBENCH = Path("/usr/lib/postgresql/15/bin/pgbench")
OPEN_TPS_TARGET = 1_500.0  # transactions/s, the PostgreSQL work of one OpenSession (SPEC §5)
# Each script, the RPC it reproduces and its SPEC §5 target (None: measured for information).
SCRIPTS: tuple[tuple[Path, str, float | None], ...] = (
    (OPEN_SCRIPT, "OpenSession", OPEN_TPS_TARGET),
    (SEND_SCRIPT, "SendMessage", None),
)
T = TypeVar("T")


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
