"""Connection pool setup and the one place that turns asyncpg errors into domain errors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg

from escalation import errors

# Constraint name → domain error factory. Only constraints that a client can trip belong here;
# anything else surfacing as a constraint error is a bug and stays INTERNAL.
_CONSTRAINTS: dict[str, Callable[[], errors.EscalationError]] = {
    "reception_settings_reply_timeout_range": lambda: errors.InvalidArgument(
        [errors.FieldViolation("reply_timeout", "must be between 120 and 180 seconds")]
    ),
    "agents_capacity_range": lambda: errors.InvalidArgument(
        [errors.FieldViolation("agent.capacity", "must be between 1 and 50")]
    ),
    "agents_main_account_has_im": lambda: errors.MainAccountImRequired(),
    "sessions_merchant_id_fkey": lambda: errors.MerchantNotFound(),
    "agents_merchant_id_fkey": lambda: errors.MerchantNotFound(),
    "reception_settings_merchant_id_fkey": lambda: errors.MerchantNotFound(),
    "reply_templates_merchant_id_fkey": lambda: errors.MerchantNotFound(),
}

_UNAVAILABLE = (
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.AdminShutdownError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.InterfaceError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)


def translate(exc: BaseException) -> errors.EscalationError | None:
    """The domain error an exception from the database layer means, or None if it is a bug."""
    if isinstance(exc, errors.EscalationError):
        return exc
    if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
        name = getattr(exc, "constraint_name", None)
        factory = _CONSTRAINTS.get(name or "")
        return factory() if factory else None
    if isinstance(exc, asyncpg.SerializationError | asyncpg.DeadlockDetectedError):
        return errors.ConcurrentUpdate()
    if isinstance(exc, asyncpg.QueryCanceledError):
        return errors.DatabaseUnavailable("the database query timed out; retry with backoff")
    if isinstance(exc, _UNAVAILABLE):
        return errors.DatabaseUnavailable()
    return None


async def _release(conn: asyncpg.Connection) -> None:
    """Cheaper than asyncpg's default reset, a round trip on every release (UNLISTEN, RESET ALL, …).

    Pool connections never LISTEN, SET or take session advisory locks here (those use their own
    connections), so the only state worth undoing is a transaction left open by a cancelled task.
    """
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def create_pool(dsn: str, *, min_size: int, max_size: int, command_timeout: float) -> asyncpg.Pool:
    """A pool whose connections fail fast instead of hanging when the database is gone."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        command_timeout=command_timeout,
        reset=_release,
        # Statement-level cap too, so a stuck lock surfaces as an error rather than a hung RPC.
        server_settings={
            "application_name": "escalation",
            "statement_timeout": str(int(command_timeout * 1000)),
        },
    )
    assert pool is not None
    return pool
