"""Connection pool setup and the one place that turns asyncpg errors into domain errors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg

from escalation import errors
from escalation.domain import limits

# Constraint name → domain error factory. Only constraints that a client can trip belong here;
# anything else surfacing as a constraint error is a bug and stays INTERNAL.
_CONSTRAINTS: dict[str, Callable[[], errors.EscalationError]] = {
    "reception_settings_reply_timeout_range": lambda: errors.InvalidArgument(
        [errors.FieldViolation("reply_timeout", "must be between 120 and 180 seconds")]
    ),
    "reception_settings_idle_timeout_range": lambda: errors.InvalidArgument(
        [errors.FieldViolation("idle_timeout", "must be between 300 and 7200 seconds")]
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

# A rule a server-side function refused (migrations/0010): it raises SQLSTATE EX001 with the domain
# error's reason in HINT and what the message needs in DETAIL. Reason → factory taking DETAIL.
REFUSAL_STATE = "EX001"


def _session_closed(ticket_id: str) -> errors.EscalationError:
    # SPEC R6: the ticket id in the error metadata when the session became one.
    return errors.SessionClosed(metadata={"ticket_id": ticket_id} if ticket_id else None)


def _session_full(detail: str) -> errors.EscalationError:
    # SPEC R7: DETAIL is "messages", or "content_bytes:<size of the refused message's content>".
    if detail == "messages":
        return errors.SessionFull(
            f"the session already holds {limits.MAX_SESSION_MESSAGES} messages; close or escalate it",
            metadata={"limit": "messages", "max_messages": str(limits.MAX_SESSION_MESSAGES)},
        )
    adding = detail.removeprefix("content_bytes:")
    return errors.SessionFull(
        f"this message ({adding} bytes) would take the session past {limits.MAX_SESSION_CONTENT_BYTES} content "
        "bytes; close or escalate it",
        metadata={"limit": "content_bytes", "max_content_bytes": str(limits.MAX_SESSION_CONTENT_BYTES)},
    )


def _im_permission_required(detail: str) -> errors.EscalationError:
    if detail == "not_in_directory":
        return errors.ImPermissionRequired("this agent is not in the shop's account directory")
    return errors.ImPermissionRequired()


_REFUSALS: dict[str, Callable[[str], errors.EscalationError]] = {
    "SESSION_NOT_FOUND": lambda _: errors.SessionNotFound(),
    "SESSION_CLOSED": _session_closed,
    "SESSION_FULL": _session_full,
    "CLIENT_MSG_ID_REUSED": lambda _: errors.ClientMsgIdReused(),
    "REQUEST_ID_REUSED": lambda _: errors.RequestIdReused(),
    "IM_PERMISSION_REQUIRED": _im_permission_required,
    "AGENT_DISABLED": lambda _: errors.AgentDisabled(),
    "TEMPLATE_NOT_FOUND": lambda _: errors.TemplateNotFound(),
    "MERCHANT_NOT_FOUND": lambda _: errors.MerchantNotFound(),
    "MERCHANT_DISABLED": lambda _: errors.MerchantDisabled(),
    "NO_ELIGIBLE_AGENT": lambda _: errors.NoEligibleAgent(),
}

# SPEC §3: a lost, broken, read-only or shutting-down database is UNAVAILABLE (DATABASE_UNAVAILABLE),
# never INTERNAL. Matched by SQLSTATE where the server says why: whole classes where every member means
# "the database, not the request" (08 connection exception, 53 insufficient resources, 57 operator
# intervention: admin/crash shutdown, cannot connect now, database dropped, idle-session timeout), single
# codes elsewhere. 57014 (statement timeout) is class 57 too, but gets its own message below.
_UNAVAILABLE_CLASSES = frozenset({"08", "53", "57"})
_UNAVAILABLE_STATES = frozenset(
    {
        "25006",  # read_only_sql_transaction: a standby, or a primary held read-only during failover
        "25P03",  # idle_in_transaction_session_timeout: the server closed the connection
        "58000",  # system_error
        "58030",  # io_error: the server's storage failed
    }
)
# Failures with no SQLSTATE: the socket (OSError covers refused, reset, unreachable), the driver's view
# of a closed connection (InterfaceError), and InternalClientError, whose subclasses and messages all
# mean the client's protocol state no longer matches the server's: a connection broken mid-operation
# ("cannot switch to state 15; another operation (2) is in progress"), TargetServerAttributeNotMatched
# (every host of the DSN is up but none is writable), ProtocolError, an outdated type cache. The pool
# discards such a connection (it is closed, or its reset fails), so a retry gets a fresh one.
_UNAVAILABLE_TYPES = (
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,
    asyncio.TimeoutError,
)


def is_unavailable_state(sqlstate: str | None) -> bool:
    """Whether a SQLSTATE (five characters, e.g. ``57P01``) means the database rather than the request failed."""
    return sqlstate is not None and (sqlstate[:2] in _UNAVAILABLE_CLASSES or sqlstate in _UNAVAILABLE_STATES)


def translate(exc: BaseException) -> errors.EscalationError | None:
    """The domain error an exception from the database layer means, or None if it is a bug.

    Never sees ``asyncio.CancelledError`` from its callers (they catch ``Exception``): a call the
    client cancelled stays cancelled. Rules: SPEC §3 (errors), AIP-193.
    """
    if isinstance(exc, errors.EscalationError):
        return exc
    if isinstance(exc, asyncpg.PostgresError) and exc.sqlstate == REFUSAL_STATE:
        refusal = _REFUSALS.get(getattr(exc, "hint", None) or "")
        return refusal(getattr(exc, "detail", None) or "") if refusal else None
    if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
        name = getattr(exc, "constraint_name", None)
        factory = _CONSTRAINTS.get(name or "")
        return factory() if factory else None
    if isinstance(exc, asyncpg.SerializationError | asyncpg.DeadlockDetectedError):
        return errors.ConcurrentUpdate()
    if isinstance(exc, asyncpg.QueryCanceledError):
        return errors.DatabaseUnavailable("the database query timed out; retry with backoff")
    if isinstance(exc, asyncpg.PostgresError):
        return errors.DatabaseUnavailable() if is_unavailable_state(exc.sqlstate) else None
    if isinstance(exc, asyncpg.exceptions._base.DataError):
        # A query argument the driver cannot encode (it subclasses InterfaceError): validation let a
        # value through that it should have refused. A bug to fix, not an outage to retry.
        return None
    if isinstance(exc, _UNAVAILABLE_TYPES):
        return errors.DatabaseUnavailable()
    return None


def is_read_only(conn: asyncpg.Connection) -> bool:
    """Whether the server last reported this connection as unable to write, with no round trip.

    PostgreSQL 14+ reports ``default_transaction_read_only`` and ``in_hot_standby`` to the client
    (ParameterStatus) at connect and whenever they change, e.g. on a configuration reload or a
    promotion; older servers report neither, and this is False.
    """
    settings = conn.get_settings()
    return any(getattr(settings, name, "off") == "on" for name in ("default_transaction_read_only", "in_hot_standby"))


async def _release(conn: asyncpg.Connection) -> None:
    """Cheaper than asyncpg's default reset, a round trip on every release (UNLISTEN, RESET ALL, …).

    Pool connections never LISTEN, SET or take session advisory locks here (those use their own
    connections), so the only state worth undoing is a transaction left open by a cancelled task.

    A connection to a read-only server is dropped instead of being pooled (issue 9 §2): it is alive
    but every write on it fails with 25006, and it would stay read-only after the failover that made
    another node (or, after a reload, this one) writable. The next acquire connects afresh, so writes
    resume as soon as the DSN leads to a writable server; while none is, each call pays one connect.
    Connections broken by the server (terminated, shut down, restarted) are already closed, and the
    pool replaces them on acquire.
    """
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")
    if is_read_only(conn):
        # terminate() hands the holder back to the pool as closed, as asyncpg's own idle timeout does;
        # raising here instead would replace the caller's outcome with this error.
        conn.terminate()


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
