"""The warnings worker (SPEC R10): warns merchants whose reply timeliness over the trailing 24 h is poor.

Every ``interval`` it judges the sessions each merchant opened in the 24 hours before the check (as
known at the check) and warns those whose session 3-minute rate is below the threshold or whose
average response is above it, given enough rated sessions. A merchant gets at most one warning per
period, the UTC day the check runs in; the warning row and its outbox row (published by the relay to
``escalation.merchant-warnings.v1``) are written by one statement. Any number of replicas may run:
``UNIQUE (merchant_id, period_start)`` lets one insert win and the others insert nothing.

The check time is the database clock unless a clock is injected (tests). ``NOTIFY
escalation_warnings`` makes a sleeping worker check at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg
import structlog

from escalation.domain.limits import DEFAULT_BATCH_SIZE
from escalation.domain.timeliness import WarningRule
from escalation.services import warnings
from escalation.store.queries import sql
from workers.loop import Wakeup, run_forever

log = structlog.get_logger(__name__)

CHANNEL = "escalation_warnings"


@dataclass(frozen=True)
class WarningsConfig:
    rule: WarningRule = field(default_factory=WarningRule)
    interval: float = 300.0  # seconds between checks
    batch_size: int = DEFAULT_BATCH_SIZE  # merchants whose figures one query computes
    clock: Callable[[], datetime] | None = None  # None: the database clock


class WarningsWorker:
    def __init__(self, pool: asyncpg.Pool, config: WarningsConfig | None = None) -> None:
        self._pool = pool
        self.config = config or WarningsConfig()

    async def _now(self) -> datetime:
        if self.config.clock is not None:
            return self.config.clock()
        now: datetime = await self._pool.fetchval(sql("database_now"))
        return now

    async def run_once(self) -> warnings.CheckResult:
        """One check at the current time; returns what this worker created (not its peers)."""
        at = await self._now()
        result = await warnings.check(self._pool, self.config.rule, at, batch_size=self.config.batch_size)
        for w in result.created:
            log.info(
                "warnings.created",
                merchant_id=w.merchant_id,
                warning_id=str(w.warning_id),
                kinds=[k.value for k in w.kinds],
                period_start=w.period_start.isoformat(),
            )
        return result

    async def run(self, stop: asyncio.Event, listen_dsn: str) -> None:
        """Checks every ``interval`` until ``stop`` is set; errors are logged and retried, never fatal."""
        await run_forever(name="warnings", stop=stop, wakeup=Wakeup(listen_dsn, CHANNEL), round_=self._round)

    async def _round(self) -> float:
        await self.run_once()
        return self.config.interval
