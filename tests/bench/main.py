"""`make bench`: every SPEC §5 target measured in one run on this machine, as ratios where the spec says so.

Starts its own durable PostgreSQL (fsync, synchronous_commit and full_page_writes on: the real thing,
not the test suite's fast mode) and embedded broker on free ports, runs the servers under test as
separate processes, prints progress as it goes, and ends with a Markdown table (also written to
tests/bench/last-results.md). ``--quick`` is a one-minute smoke run with smaller sizes.

Measurements, in SPEC §5 order (the table keeps it):
1. a bare grpc.aio unary echo server (its own process), 64 calls in flight for 8 s → calls/s, the baseline;
2. OpenSession on ``escalation serve`` (its own process) spread over 50 merchants × 3 agents, same client
   → opens/s and ratio; one merchant alone (its opens serialize on its row) → opens/s; OpenSession at
   100/s on a fixed schedule (open loop) → p50/p99 from each call's scheduled send time;
3. SendMessage on 200 open sessions, same client → msgs/s and ratio; then the SQL ceiling: the statements
   of one OpenSession and of one SendMessage (tests/bench/pgbench/*.sql) run by 20 pgbench clients
   without the service → transactions/s, next to the service's rate through gRPC (sqlceiling.py);
4. event fan-out: Connect streams of the 50 main accounts on replica A, OpenSession through replica B;
5. 100,000 deadlines spread over 60 s plus 10,000 due in one second, ended by two
   ``escalation worker deadlines`` processes → lateness, early count, time to clear the burst;
6. CloseSession(ESCALATED) at 200/s for 10 s with ``escalation worker outbox`` running → latency from a
   ticket's close_time to its arrival at a Kafka consumer;
7. raw aiokafka produce of 50,000 × 1 KB vs an OutboxRelay draining 50,000 such outbox rows → ratio, with
   fresh table statistics and with statistics from before the backlog;
8. 10,000 idle Connect streams on one fresh ``escalation serve`` → its RSS;
9. tenant isolation: 2,000 Connect streams of one shop plus bursts of its events on a fresh
   ``escalation serve`` → another shop's GetSession p99 ÷ its quiet p99 (``--quick``: 500 streams).
Each throughput line also reports CPU milliseconds per call of every process, and how busy the machine
was: client, servers, PostgreSQL and the broker share this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import asyncpg
import grpc

from escalation.observability import logging as obs_logging
from tests.bench import api, cpu, deadlines, isolation, realtime, sqlceiling, tickets_flow
from tests.bench.env import REPO, BenchEnv, BenchError, Child, say
from tests.bench.load import LoadResult, percentile
from tests.bench.report import Report, code_version
from tests.bench.sizes import FULL, QUICK, Sizes
from tests.bench.verdicts import OPEN_TARGET, SEND_TARGET, Verdicts, ms

RESULTS = Path(__file__).resolve().parent / "last-results.md"
T = TypeVar("T")

BACKGROUND_WARNING = 0.2  # cores busy before the bench starts that make its numbers suspect


class Run:
    def __init__(self, env: BenchEnv, sizes: Sizes, report: Report, only: str | None = None) -> None:
        self.only = only
        self.env = env
        self.sizes = sizes
        self.report = report
        self.metadata = api.platform_metadata()
        self.verdicts = Verdicts(report, sizes)
        self.failures = 0

    async def step(self, name: str, work: Callable[[], Awaitable[T]]) -> T | None:
        """Runs one measurement; a failure is reported and the run goes on with the next one."""
        say(f"== {name}")
        try:
            return await work()
        except (BenchError, grpc.aio.AioRpcError, asyncpg.PostgresError, OSError, TimeoutError) as exc:
            self.failures += 1
            say(f"!! {name} failed: {exc}")
            self.env.keep_logs = True
            return None

    def cpu_groups(self, server: Child | None) -> cpu.CpuGroups:
        groups: dict[str, Callable[[], list[int]]] = {"client": lambda: [os.getpid()]}
        if server is not None:
            pid = server.proc.pid
            groups[server.name] = lambda: [pid]
        pg_pid = self.env.pg.pid if self.env.pg is not None else None
        if pg_pid is not None:
            groups["postgres"] = lambda: cpu.with_children(pg_pid)
        return groups

    async def measured(
        self, server: Child | None, work: Callable[[], Awaitable[LoadResult]]
    ) -> tuple[LoadResult, dict[str, float]]:
        meter = cpu.CpuMeter(self.cpu_groups(server))
        result = await work()
        used = meter.stop()
        say(f"  {result.label}: {result.summary()}")
        say(f"  CPU during the run: {cpu.describe(used)}")
        return result, used

    async def main(self) -> None:
        sizes, report = self.sizes, self.report
        idle = cpu.CpuMeter({})
        await asyncio.sleep(1.0)
        background = idle.stop()["machine"]
        if background > BACKGROUND_WARNING:
            say(f"!! the machine is already busy ({background:.2f} cores): results will be pessimistic")
        say("starting PostgreSQL (durable: fast=False) and the embedded broker on free ports")
        await asyncio.to_thread(self.env.start_services)
        facts = await self.env.server_facts()
        report.facts = {
            "Code": code_version(REPO),
            "Other load before the start": f"{background:.2f} cores busy",
            "PostgreSQL": f"{facts['server_version']} durable (fsync={facts['fsync']}, synchronous_commit="
            f"{facts['synchronous_commit']}, full_page_writes={facts['full_page_writes']}, shared_buffers="
            f"{facts['shared_buffers']})",
            "Broker": "Tansu (embedded, in-memory storage)",
            "Load client": f"one process (the bench), pre-serialized requests, responses not parsed, "
            f"{sizes.concurrency} calls in flight, {sizes.duration:.0f} s measured after {sizes.warmup:.0f} s warm-up",
            "Servers": "`escalation serve` / `escalation worker …` processes with default settings "
            "(DB pool 2–20, batch 500), on the same machine as the client, PostgreSQL and the broker",
        }
        say(f"PostgreSQL {report.facts['PostgreSQL']}")
        whole_run = cpu.CpuMeter({})
        api_url = await self.env.create_database("bench_api")
        pool = await asyncpg.create_pool(api_url, min_size=1, max_size=4)
        assert pool is not None
        try:
            await api.make_merchants(pool, sizes)
            say(f"{sizes.merchants} merchants with {sizes.agents_per_merchant} designated agents each")
            if self.only == "isolation":
                await self._isolation(api_url)
            elif self.only == "sql-ceiling":
                await self._sql_ceiling(None, None)
            elif self.only in ("throughput", "open-loop"):
                echo = await self._echo_baseline() if self.only == "throughput" else None
                serve, addr = await self.env.serve("escalation-serve", api_url)
                async with grpc.aio.insecure_channel(addr) as channel:
                    if self.only == "throughput":
                        await self._throughput(channel, serve, pool, echo)
                    else:
                        await self._open_loop(channel, serve)
                self.env.stop_child(serve)
            elif self.only == "deadlines":
                late = await self.step("5. deadlines", lambda: deadlines.run_deadlines(self.env, self.sizes))
                self.verdicts.deadlines(late)
            elif self.only == "streams":
                memory = await self.step(
                    f"8. {self.sizes.memory_streams:,} merchant streams on one server process",
                    lambda: realtime.stream_memory(self.env, self.sizes, api_url),
                )
                self.verdicts.memory(memory)
            elif self.only == "fan-out":
                serve, addr = await self.env.serve("escalation-serve", api_url)
                fan = await self.step(
                    "4. event fan-out across two replicas",
                    lambda: realtime.fan_out(self.env, self.sizes, api_url, addr, self.metadata),
                )
                self.verdicts.fan_out(fan)
                self.env.stop_child(serve)
            else:
                await self._all(api_url, pool)
        finally:
            await pool.close()
            others = whole_run.stop()["others"]
            report.facts["Other processes during the run"] = f"{others:.2f} cores on average" + (
                " (results are pessimistic: something else was running)" if others > BACKGROUND_WARNING else ""
            )

    async def _all(self, api_url: str, pool: asyncpg.Pool) -> None:
        """Every measurement, in SPEC §5 order (the report's rows follow it)."""
        sizes = self.sizes
        echo = await self._echo_baseline()
        say("== starting `escalation serve` (replica A)")
        serve, addr = await self.env.serve("escalation-serve", api_url)
        async with grpc.aio.insecure_channel(addr) as channel:
            session_ids = await self._throughput(channel, serve, pool, echo)
            fan = await self.step(
                "4. event fan-out across two replicas",
                lambda: realtime.fan_out(self.env, sizes, api_url, addr, self.metadata),
            )
            self.verdicts.fan_out(fan)

            late = await self.step("5. deadlines", lambda: deadlines.run_deadlines(self.env, sizes))
            self.verdicts.deadlines(late)

            flow = tickets_flow.TicketsBench(self.env, api_url)
            closes = await self.step(
                "6. close → ticket on Kafka", lambda: self._close(flow, channel, pool, session_ids)
            )
            self.verdicts.closes(closes)
        relay = await self.step("7. outbox relay vs raw aiokafka produce", lambda: flow.relay_vs_raw(sizes))
        self.verdicts.relay(relay)
        for child in [c for c in self.env.children if c.name in ("escalation-serve", "outbox-relay")]:
            self.env.stop_child(child)
        memory = await self.step(
            f"8. {sizes.memory_streams:,} merchant streams on one server process",
            lambda: realtime.stream_memory(self.env, sizes, api_url),
        )
        self.verdicts.memory(memory)
        await self._isolation(api_url)

    async def _echo_baseline(self) -> LoadResult | None:
        """Step 1, before any server of ours runs."""
        echo_result = await self.step("1. baseline: bare grpc.aio unary echo", self._echo)
        if echo_result is None:
            return None
        result, used = echo_result
        self.report.info(
            f"Baseline: bare grpc.aio unary echo ({len(api.open_request('m', 0))} B in/out)",
            f"{result.rate:,.0f} calls/s (p50 {ms(percentile(result.latencies, 50))}, p99 "
            f"{ms(percentile(result.latencies, 99))}; {cpu.per_call(used, result.rate)})",
        )
        return result

    async def _throughput(
        self, channel: grpc.aio.Channel, serve: Child, pool: asyncpg.Pool, echo: LoadResult | None
    ) -> list[str]:
        """OpenSession (50 merchants, one merchant, open loop), SendMessage and the SQL ceiling; the
        ratios are to ``echo``. Returns the sessions SendMessage wrote to (the close → ticket step
        leaves them alone)."""
        sizes = self.sizes
        opens = await self.step(
            f"2. OpenSession over {sizes.merchants} merchants",
            lambda: self.measured(
                serve,
                lambda: api.run_opens(
                    channel,
                    sizes,
                    self.metadata,
                    merchants=sizes.merchants,
                    duration=sizes.duration,
                    label="OpenSession",
                ),
            ),
        )
        self.verdicts.ratio(
            f"OpenSession, {sizes.merchants} merchants × {sizes.agents_per_merchant} agents",
            "opens/s",
            opens,
            echo,
            OPEN_TARGET,
        )
        single = await self.step(
            "2b. OpenSession, one merchant",
            lambda: self.measured(
                serve,
                lambda: api.run_opens(
                    channel,
                    sizes,
                    self.metadata,
                    merchants=1,
                    duration=sizes.single_merchant_duration,
                    label="OpenSession/1 merchant",
                ),
            ),
        )
        self.verdicts.one_merchant(single)
        await self._open_loop(channel, serve)
        session_ids = [
            str(r["session_id"])
            for r in await pool.fetch(
                "SELECT session_id FROM sessions WHERE state = 'OPEN' ORDER BY open_time LIMIT $1",
                sizes.send_sessions,
            )
        ]
        sends = None
        if len(session_ids) < sizes.send_sessions:
            say(f"!! only {len(session_ids)} open sessions: SendMessage skipped")
        else:
            sends = await self.step(
                f"3. SendMessage on {sizes.send_sessions} sessions",
                lambda: self.measured(serve, lambda: api.run_sends(channel, sizes, self.metadata, session_ids)),
            )
        self.verdicts.ratio(
            f"SendMessage, {sizes.send_sessions} open sessions (with client_msg_id)",
            "msgs/s",
            sends,
            echo,
            SEND_TARGET,
        )
        await self._sql_ceiling(opens[0] if opens else None, sends[0] if sends else None)
        return session_ids

    async def _open_loop(self, channel: grpc.aio.Channel, serve: Child) -> None:
        sizes = self.sizes
        measured = await self.step(
            f"2c. OpenSession at {sizes.open_loop_rate:.0f}/s, open loop",
            lambda: self.measured(serve, lambda: api.run_open_loop(channel, sizes, self.metadata)),
        )
        self.verdicts.open_loop(measured)

    async def _sql_ceiling(self, opens: LoadResult | None, sends: LoadResult | None) -> None:
        """The PostgreSQL work of each RPC without the service, next to the service's rate (SPEC §5)."""
        rates = {"OpenSession": opens.rate if opens else None, "SendMessage": sends.rate if sends else None}
        await sqlceiling.measure(self, self.env, self.sizes, self.report, rates)

    async def _isolation(self, api_url: str) -> None:
        sizes = self.sizes
        fewer = "" if sizes.isolation_streams >= 2_000 else f" ({sizes.name} run: fewer than the 2,000 of the target)"
        result = await self.step(
            f"9. tenant isolation: {sizes.isolation_streams:,} streams of one shop{fewer}",
            lambda: isolation.run_isolation(self.env, sizes, api_url, self.metadata),
        )
        self.verdicts.isolation(result)

    async def _echo(self) -> tuple[LoadResult, dict[str, float]]:
        result, used = await api.run_echo(self.env, self.sizes, self.metadata, self.cpu_groups)
        say(f"  echo: {result.summary()}")
        say(f"  CPU during the run: {cpu.describe(used)}")
        return result, used

    async def _close(
        self, flow: tickets_flow.TicketsBench, channel: grpc.aio.Channel, pool: asyncpg.Pool, exclude: list[str]
    ) -> tickets_flow.CloseResult:
        need = math.ceil(self.sizes.close_rate * self.sizes.close_seconds)
        rows = await pool.fetch(
            "SELECT session_id FROM sessions WHERE state = 'OPEN' AND NOT session_id = ANY($1::uuid[]) "
            "ORDER BY open_time DESC LIMIT $2",
            exclude,
            need,
        )
        if len(rows) < need:
            say(f"  opening {need - len(rows)} more sessions to close")
            await api.open_more(channel, self.metadata, self.sizes, need - len(rows))
            rows = await pool.fetch(
                "SELECT session_id FROM sessions WHERE state = 'OPEN' AND NOT session_id = ANY($1::uuid[]) "
                "ORDER BY open_time DESC LIMIT $2",
                exclude,
                need,
            )
        say(
            f"  closing {need} sessions as ESCALATED at {self.sizes.close_rate:.0f}/s "
            "with `escalation worker outbox` running"
        )
        result = await flow.close_to_ticket(channel, self.metadata, self.sizes, [str(r["session_id"]) for r in rows])
        say(
            f"  {result.received} of {result.closed} tickets received; "
            f"latency p50 {ms(percentile(result.latencies, 50))}"
            f", p99 {ms(percentile(result.latencies, 99))}, max {ms(max(result.latencies, default=math.nan))}"
        )
        return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a ~1 minute smoke run with smaller sizes")
    parser.add_argument(
        "--output", type=Path, default=RESULTS, help=f"where to write the Markdown table (default {RESULTS})"
    )
    parser.add_argument(
        "--only",
        choices=["throughput", "open-loop", "sql-ceiling", "fan-out", "deadlines", "streams", "isolation"],
        help="run one part only (the merchants are still set up): throughput = echo, OpenSession (50 merchants, "
        "one merchant, open loop), SendMessage and the SQL ceiling",
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    # The in-process clients (asyncpg, aiokafka) log through the project's setup; only problems show.
    obs_logging.configure(log_format="console", level="warning")
    report = Report(mode=f"{sizes.name} run")
    env = BenchEnv()
    run = Run(env, sizes, report, only=args.only)
    status = 0
    try:
        asyncio.run(run.main())
    except KeyboardInterrupt:
        say("interrupted")
        status = 130
    except BenchError as exc:
        say(f"!! the bench could not run: {exc}")
        env.keep_logs = True
        status = 1
    finally:
        say("stopping every process and removing the data directories")
        env.close()
    if run.failures:
        status = status or 1
    if report.rows:
        table = report.markdown()
        print("\n" + table, flush=True)
        report.write(args.output)
        say(f"wrote {args.output}")
    sys.exit(status)
