"""Merchant warnings (SPEC R10): judge merchants, store one warning per period with its outbox row, list.

The rule, the period and the window are pure (escalation.domain.timeliness); this module reads the
figures, and writes each warning and its event in one statement that inserts nothing when another
worker got there first (``UNIQUE (merchant_id, period_start)`` + ``ON CONFLICT DO NOTHING``).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from escalation import errors
from escalation.bus.kafka import WARNINGS_TOPIC
from escalation.domain import timeliness
from escalation.domain.limits import DEFAULT_BATCH_SIZE
from escalation.domain.timeliness import Figures, WarningKind, WarningRule
from escalation.services import records
from escalation.services.stats import Window, duration, figures_by_merchant
from escalation.store import signals
from escalation.store.queries import sql
from escalation.v1 import events_pb2

CONTENT_TYPE = "application/x-protobuf; messageType=escalation.v1.MerchantWarning"


@dataclass(frozen=True)
class MerchantWarning:
    warning_id: uuid.UUID
    merchant_id: str
    kinds: Sequence[WarningKind]
    period_start: datetime
    period_end: datetime
    create_time: datetime
    payload: bytes


@dataclass
class CheckResult:
    checked: int = 0  # merchants whose figures were computed
    created: list[MerchantWarning] = field(default_factory=list)  # warnings this call stored (not another worker)


def build(
    merchant_id: str, figures: Figures, kinds: Sequence[WarningKind], rule: WarningRule, check_time: datetime
) -> MerchantWarning:
    """The warning (and the event payload) for a merchant whose figures broke ``kinds``."""
    warning_id = uuid.uuid4()
    period_start, period_end = timeliness.warning_period(check_time)
    window_start, window_end = timeliness.warning_window(check_time)
    event = events_pb2.MerchantWarning(
        warning_id=str(warning_id),
        merchant_id=merchant_id,
        kinds=[events_pb2.MerchantWarning.Kind.Value(f"KIND_{k.value}") for k in kinds],
        period_start=records.timestamp(period_start),
        period_end=records.timestamp(period_end),
        sessions=figures.sessions,
        session_reply_rate_3m=figures.session_reply_rate,
        reply_rate_threshold=rule.reply_rate_threshold,
        average_response=duration(figures.average_response),
        average_response_threshold=duration(rule.average_response),
        create_time=records.timestamp(check_time),
        window_start=records.timestamp(window_start),
        window_end=records.timestamp(window_end),
        min_sessions=rule.min_sessions,
        sessions_rated=figures.sessions_rated,
        sessions_answered_in_3m=figures.sessions_answered_in_3m,
    )
    return MerchantWarning(
        warning_id, merchant_id, list(kinds), period_start, period_end, check_time, event.SerializeToString()
    )


async def record(conn: asyncpg.Connection, warning: MerchantWarning) -> bool:
    """Stores the warning and its outbox row atomically; False when the period already has one."""
    created = await conn.fetchval(
        sql("insert_warning"),
        warning.warning_id,
        warning.merchant_id,
        warning.period_start,
        warning.period_end,
        [k.value for k in warning.kinds],
        warning.payload,
        warning.create_time,
        WARNINGS_TOPIC,
        CONTENT_TYPE,
    )
    return created is not None


async def check(
    pool: asyncpg.Pool, rule: WarningRule, check_time: datetime, *, batch_size: int = DEFAULT_BATCH_SIZE
) -> CheckResult:
    """Judges every merchant not yet warned in ``check_time``'s period; warns those that break the rule."""
    result = CheckResult()
    period_start, _ = timeliness.warning_period(check_time)
    start, end = timeliness.warning_window(check_time)
    async with pool.acquire() as conn:
        candidates = [
            r["merchant_id"]
            for r in await conn.fetch(sql("warning_candidates"), start, end, period_start, rule.min_sessions)
        ]
        # Sorted candidates, one statement per warning: concurrent workers never wait on each other in
        # a cycle, and none holds a lock longer than one insert.
        for offset in range(0, len(candidates), batch_size):
            batch = candidates[offset : offset + batch_size]
            by_merchant = await figures_by_merchant(conn, batch, Window(start, end), as_of=check_time)
            result.checked += len(batch)
            for merchant_id in batch:
                kinds = timeliness.warning_kinds(by_merchant[merchant_id], rule)
                if not kinds:
                    continue
                warning = build(merchant_id, by_merchant[merchant_id], kinds, rule, check_time)
                if await record(conn, warning):
                    result.created.append(warning)
                    signals.touch(pool, outbox=True)  # record() committed (autocommit statement)
    return result


async def list_warnings(
    pool: asyncpg.Pool, merchant_id: str | None, *, after: tuple[datetime, uuid.UUID] | None, limit: int
) -> list[asyncpg.Record]:
    """Warnings newest first, after the (create_time, warning_id) key; an unknown merchant is NOT_FOUND."""
    async with pool.acquire() as conn:
        if merchant_id is not None and await conn.fetchrow(sql("get_merchant"), merchant_id) is None:
            raise errors.MerchantNotFound()
        rows: list[asyncpg.Record] = await conn.fetch(
            sql("list_warnings"),
            merchant_id,
            after[0] if after else None,
            after[1] if after else None,
            limit,
        )
    return rows
