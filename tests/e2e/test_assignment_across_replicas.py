"""SPEC R2 across real replicas: two `escalation serve` OS processes on one database.

"The pick and the count increment are one atomic step: concurrent OpenSession calls on any number of
replicas never read the same count." Every burst below alternates between the two processes, so any
gap in the atomicity (a pick made from a count another transaction is about to change) shows up as
two decisions that read the same state, as an unbalanced shop, or as a counter that drifted from the
sessions table.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC
from fractions import Fraction
from pathlib import Path

import asyncpg
import grpc
import pytest

from escalation.bus.kafka import TICKETS_TOPIC
from escalation.domain import assignment
from escalation.domain.assignment import RULE_VERSION
from escalation.v1 import common_pb2, platform_pb2, platform_pb2_grpc
from tests.e2e import replicas
from tests.integration.grpc_harness import failure
from tests.integration.sessions_harness import PLATFORM, make_shop, open_request

pytestmark = pytest.mark.e2e

RPC_TIMEOUT = 30.0
RESOLVED = platform_pb2.CloseSessionRequest.OUTCOME_RESOLVED
ESCALATED = platform_pb2.CloseSessionRequest.OUTCOME_ESCALATED


@dataclass
class Cluster:
    replicas: list[replicas.Replica]
    channels: list[grpc.aio.Channel]

    def platform(self, n: int) -> platform_pb2_grpc.PlatformServiceAsyncStub:
        """The PlatformService of replica ``n`` modulo the number of replicas (so callers can alternate)."""
        return platform_pb2_grpc.PlatformServiceStub(self.channels[n % len(self.channels)])

    async def shut_down(self) -> None:
        """Every replica survived the test: it stops on SIGTERM with status 0 and logged no traceback."""
        for channel in self.channels:
            await channel.close(grace=None)
        for replica in self.replicas:
            assert replica.terminate() == 0, replica.output()
            assert "Traceback" not in replica.output(), replica.output()


@pytest.fixture
async def cluster(database_url: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    with replicas.serving(database_url, tmp_path, count=2, ESCALATION_DB_POOL_MAX="20") as procs:
        await asyncio.gather(*(replicas.wait_serving(r) for r in procs))
        channels = [grpc.aio.insecure_channel(r.grpc_addr) for r in procs]
        try:
            yield Cluster(procs, channels)
        finally:
            for channel in channels:
                await channel.close(grace=None)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    try:
        yield conn
    finally:
        await conn.close()


# --- helpers ---------------------------------------------------------------------------------------


async def _open_burst(cluster: Cluster, merchant_id: str, count: int) -> list[common_pb2.Session]:
    """``count`` concurrent OpenSession calls, alternating replicas; all must succeed. Prints the rate."""
    requests = [open_request(merchant_id, request_id=f"{merchant_id}-burst-{n}") for n in range(count)]
    started = time.perf_counter()
    answers = await asyncio.gather(
        *(
            cluster.platform(n).OpenSession(request, metadata=PLATFORM, timeout=RPC_TIMEOUT)
            for n, request in enumerate(requests)
        ),
        return_exceptions=True,
    )
    elapsed = time.perf_counter() - started
    failed = [a for a in answers if isinstance(a, BaseException)]
    assert not failed, f"{len(failed)} of {count} OpenSession calls failed, e.g. {_describe(failed[0])}"
    # The measured rate is part of what this module reports (see it with pytest -s).
    print(f"\n{count} OpenSession across {len(cluster.replicas)} replicas in {elapsed:.2f} s = {count / elapsed:.0f}/s")
    opened = [a for a in answers if isinstance(a, platform_pb2.OpenSessionResponse)]
    assert len(opened) == count
    assert len({a.session.session_id for a in opened}) == count, "two requests got the same session"
    return [a.session for a in opened]


def _describe(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        try:
            detail = failure(error)
        except AssertionError:
            return f"{error.code()}: {error.details()}"
        return f"{detail.code} {detail.reason}: {detail.message}"
    return repr(error)


async def _stored(cluster: Cluster, opened: Sequence[common_pb2.Session]) -> list[common_pb2.Session]:
    """Each session read back with GetSession from the replica that did *not* open it."""
    return list(
        await asyncio.gather(
            *(
                cluster.platform(n + 1).GetSession(
                    platform_pb2.GetSessionRequest(session_id=s.session_id), metadata=PLATFORM, timeout=RPC_TIMEOUT
                )
                for n, s in enumerate(opened)
            )
        )
    )


async def _open_counts(db: asyncpg.Connection, merchant_id: str) -> Counter[str]:
    """The truth: OPEN sessions per assigned agent, straight from the sessions table."""
    rows = await db.fetch(
        "SELECT assigned_agent_id, count(*) AS n FROM sessions WHERE merchant_id = $1 AND state = 'OPEN' "
        "GROUP BY assigned_agent_id",
        merchant_id,
    )
    return Counter({r["assigned_agent_id"]: r["n"] for r in rows})


async def _assert_counters_match_sessions(db: asyncpg.Connection, merchant_id: str) -> Counter[str]:
    """agents.open_sessions equals the number of OPEN sessions for every agent of the shop (no drift)."""
    truth = await _open_counts(db, merchant_id)
    rows = await db.fetch("SELECT agent_id, open_sessions FROM agents WHERE merchant_id = $1", merchant_id)
    counters = {r["agent_id"]: r["open_sessions"] for r in rows}
    assert set(truth) <= set(counters), (truth, counters)
    assert counters == {agent: truth[agent] for agent in counters}, f"counter drifted: {counters} vs sessions {truth}"
    return truth


def _assert_decisions(
    opened: Sequence[common_pb2.Session], stored: Sequence[common_pb2.Session], capacities: dict[str, int]
) -> None:
    """Every stored decision is complete and follows the rule, and no two decisions read the same state.

    With no session closed during the burst, every open adds one to the shop's total, so if pick +
    increment is atomic the decisions saw totals 0, 1, ..., N−1 — each exactly once — and each agent's
    own wins saw its count at 0, 1, ..., wins−1. Two decisions reading the same count break this.
    """
    totals: list[int] = []
    seen_by_winner: dict[str, list[int]] = {agent: [] for agent in capacities}
    for answer, session in zip(opened, stored, strict=True):
        decision = session.assignment
        assert session.session_id == answer.session_id
        assert decision == answer.assignment, "the stored decision differs from the one OpenSession returned"
        assert decision.rule_version == RULE_VERSION
        assert decision.agent_id == session.assigned_agent_id, session
        candidates = {c.agent_id: c for c in decision.candidates}
        assert len(decision.candidates) == len(capacities), decision
        assert {a: c.capacity for a, c in candidates.items()} == capacities, decision
        saturation = {a: Fraction(c.open_sessions, c.capacity) for a, c in candidates.items()}
        assert saturation[decision.agent_id] == min(saturation.values()), f"not the least saturated: {decision}"
        # Every tie-break too: the pure rule, given the state the decision read, names the same agent.
        state = [
            assignment.Candidate(
                c.agent_id,
                c.open_sessions,
                c.capacity,
                c.last_assign_time.ToDatetime(tzinfo=UTC) if c.HasField("last_assign_time") else None,
            )
            for c in decision.candidates
        ]
        assert assignment.choose(state).agent_id == decision.agent_id, f"not the pure rule's pick: {decision}"
        totals.append(sum(c.open_sessions for c in decision.candidates))
        seen_by_winner[decision.agent_id].append(candidates[decision.agent_id].open_sessions)
    repeated = sorted(total for total, times in Counter(totals).items() if times > 1)
    assert sorted(totals) == list(range(len(opened))), f"decisions read the same shop state: totals {repeated[:10]}"
    for agent, seen in seen_by_winner.items():
        assert sorted(seen) == list(range(len(seen))), f"{agent} won twice at one count: {sorted(seen)}"


def _assert_saturation_bound(counts: Counter[str], capacities: dict[str, int]) -> None:
    """At quiescence (no closes): for every agent i with sessions, sat_i − min sat ≤ 1 / cap_i.

    Why: when i got its last session it had the lowest saturation, (n_i − 1)/cap_i ≤ sat_j for every j,
    and counts only grew since. So the most saturated agent is at most one of its sessions ahead of the
    least saturated one (for equal capacities: max − min of the counts ≤ 1).
    """
    saturation = {agent: Fraction(counts[agent], cap) for agent, cap in capacities.items()}
    lowest = min(saturation.values())
    for agent, cap in capacities.items():
        if counts[agent]:
            assert saturation[agent] - lowest <= Fraction(1, cap), (
                f"{agent} is {saturation[agent] - lowest} ahead of the least saturated (bound 1/{cap}): "
                f"counts {dict(counts)}, capacities {capacities}"
            )


# --- tests -----------------------------------------------------------------------------------------


async def test_concurrent_open_sessions_across_two_replicas_stay_balanced(
    cluster: Cluster, db: asyncpg.Connection
) -> None:
    capacities = {f"even-sub-{n}": 10 for n in range(1, 6)}
    await make_shop(cluster.channels[0], "even", capacities)

    opened = await _open_burst(cluster, "even", 240)

    counts = await _open_counts(db, "even")
    assert sum(counts.values()) == 240
    assert set(counts) <= set(capacities), counts
    per_agent = [counts[agent] for agent in capacities]
    assert max(per_agent) - min(per_agent) <= 1, f"unbalanced: {dict(counts)}"
    assert await _assert_counters_match_sessions(db, "even") == counts
    _assert_decisions(opened, await _stored(cluster, opened), capacities)
    await cluster.shut_down()


async def test_capacities_two_to_one_are_followed_within_one_session(cluster: Cluster, db: asyncpg.Connection) -> None:
    capacities = {"ratio-a": 20, "ratio-b": 20, "ratio-c": 10}
    await make_shop(cluster.channels[1], "ratio", capacities)

    opened = await _open_burst(cluster, "ratio", 250)

    counts = await _open_counts(db, "ratio")
    assert sum(counts.values()) == 250
    assert set(counts) <= set(capacities), counts
    # 250 = 5 × (20 + 20 + 10): the bound leaves exactly one outcome, 100/100/50.
    _assert_saturation_bound(counts, capacities)
    assert await _assert_counters_match_sessions(db, "ratio") == counts
    _assert_decisions(opened, await _stored(cluster, opened), capacities)
    await cluster.shut_down()


async def test_concurrent_opens_then_closes_return_every_count_to_zero(
    cluster: Cluster, db: asyncpg.Connection
) -> None:
    capacities = {f"churn-sub-{n}": 25 for n in range(1, 5)}
    await make_shop(cluster.channels[0], "churn", capacities)
    opened = await _open_burst(cluster, "churn", 100)
    counts = await _assert_counters_match_sessions(db, "churn")
    assert sum(counts.values()) == 100

    # Even positions resolved, odd ones escalated; each outcome goes through both replicas.
    outcomes = [RESOLVED if n % 2 == 0 else ESCALATED for n in range(len(opened))]
    closed = await asyncio.gather(
        *(
            cluster.platform(n // 2).CloseSession(
                platform_pb2.CloseSessionRequest(session_id=s.session_id, outcome=outcome),
                metadata=PLATFORM,
                timeout=RPC_TIMEOUT,
            )
            for n, (s, outcome) in enumerate(zip(opened, outcomes, strict=True))
        ),
        return_exceptions=True,
    )
    failed = [c for c in closed if isinstance(c, BaseException)]
    assert not failed, f"{len(failed)} CloseSession calls failed, e.g. {_describe(failed[0])}"
    sessions = [c for c in closed if isinstance(c, common_pb2.Session)]

    resolved = {s.session_id for s, o in zip(opened, outcomes, strict=True) if o == RESOLVED}
    escalated = {s.session_id for s in opened} - resolved
    assert len(resolved) == len(escalated) == 50
    for session in sessions:
        assert session.state == common_pb2.SESSION_STATE_ENDED, session
        if session.session_id in resolved:
            assert session.close_reason == common_pb2.CLOSE_REASON_RESOLVED, session
            assert session.ticket_id == "", session
        else:
            assert session.close_reason == common_pb2.CLOSE_REASON_PLATFORM_ESCALATED, session
            assert session.ticket_id, session

    rows = await db.fetch("SELECT agent_id, open_sessions FROM agents WHERE merchant_id = 'churn'")
    assert {r["agent_id"]: r["open_sessions"] for r in rows} == dict.fromkeys([*capacities, "churn-main"], 0)
    assert await _open_counts(db, "churn") == Counter()

    tickets = await db.fetch("SELECT ticket_id, session_id, reason FROM tickets WHERE merchant_id = 'churn'")
    ticket_sessions = Counter(str(t["session_id"]) for t in tickets)
    assert set(ticket_sessions) == escalated, "a ticket for a RESOLVED session, or an ESCALATED one without"
    assert max(ticket_sessions.values()) == 1, "more than one ticket for a session"
    assert {t["reason"] for t in tickets} == {"PLATFORM_ESCALATED"}
    ticket_ids = {str(t["ticket_id"]) for t in tickets}
    assert ticket_ids == {s.ticket_id for s in sessions if s.ticket_id}, "CloseSession named another ticket"

    outbox = await db.fetch("SELECT topic, event_id, message_key FROM outbox")
    assert Counter(r["event_id"] for r in outbox) == Counter(ticket_ids), "not exactly one outbox row per ticket"
    assert {(r["topic"], bytes(r["message_key"])) for r in outbox} == {(TICKETS_TOPIC, b"churn")}
    await cluster.shut_down()
