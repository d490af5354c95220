"""The session state machine (SPEC R5, R6, R12) as pure functions. docs/sessions.md draws it.

The SQL in store/sql/sessions.sql applies the same rule atomically with the database clock; the
integration tests check that both agree.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from escalation import errors


class State(enum.StrEnum):
    OPEN = "OPEN"
    ENDED = "ENDED"


class Sender(enum.StrEnum):
    PLATFORM = "PLATFORM"
    MERCHANT = "MERCHANT"


class CloseReason(enum.StrEnum):
    RESOLVED = "RESOLVED"
    PLATFORM_ESCALATED = "PLATFORM_ESCALATED"
    MERCHANT_TIMEOUT = "MERCHANT_TIMEOUT"
    # SPEC R12: answered, then nobody wrote for the merchant's idle_timeout; resolved, no ticket.
    IDLE = "IDLE"

    @property
    def makes_ticket(self) -> bool:
        """SPEC R6, R7: only an escalation and a missed reply deadline become tickets."""
        return self in (CloseReason.PLATFORM_ESCALATED, CloseReason.MERCHANT_TIMEOUT)


class Kind(enum.StrEnum):
    TEXT = "TEXT"
    ORDER_CARD = "ORDER_CARD"
    IMAGE = "IMAGE"
    EMOJI = "EMOJI"


# SPEC R4: who may send what.
ALLOWED_KINDS: dict[Sender, frozenset[Kind]] = {
    Sender.PLATFORM: frozenset({Kind.TEXT, Kind.ORDER_CARD}),
    Sender.MERCHANT: frozenset({Kind.TEXT, Kind.IMAGE, Kind.EMOJI}),
}


@dataclass(frozen=True)
class SessionClock:
    """The parts of a session that decide what happens next."""

    state: State
    last_seq: int
    reply_deadline: datetime | None
    remind_time: datetime | None
    close_reason: CloseReason | None = None
    # SPEC R12: when the answered session closes as IDLE; at most one of it and reply_deadline is set.
    idle_deadline: datetime | None = None


def after_message(
    s: SessionClock,
    sender: Sender,
    at: datetime,
    *,
    reply_timeout: timedelta,
    remind_before: timedelta,
    idle_timeout: timedelta,
) -> SessionClock:
    """R5, R12: the clock after a message sent ``at``.

    A platform message starts the reply deadline unless one is already running, and cancels the idle
    deadline (a question waits again). A merchant message clears the reply deadline and (re)starts the
    idle deadline at ``at + idle_timeout``. The reminder is due ``remind_before`` the reply deadline (at
    once if the timeout is shorter). Raises SessionClosed on an ended session.
    """
    if s.state is State.ENDED:
        raise errors.SessionClosed()
    if sender is Sender.MERCHANT:
        return replace(
            s, last_seq=s.last_seq + 1, reply_deadline=None, remind_time=None, idle_deadline=at + idle_timeout
        )
    if s.reply_deadline is not None:
        return replace(s, last_seq=s.last_seq + 1, idle_deadline=None)
    deadline = at + reply_timeout
    return replace(
        s,
        last_seq=s.last_seq + 1,
        reply_deadline=deadline,
        remind_time=max(at, deadline - remind_before),
        idle_deadline=None,
    )


def end(s: SessionClock, reason: CloseReason) -> SessionClock:
    """R6: a session ends exactly once; every later write is SESSION_CLOSED."""
    if s.state is State.ENDED:
        raise errors.SessionClosed()
    return replace(s, state=State.ENDED, reply_deadline=None, remind_time=None, idle_deadline=None, close_reason=reason)


def is_due(s: SessionClock, now: datetime) -> bool:
    """Whether the deadline worker may end the session now as MERCHANT_TIMEOUT (R5; never early)."""
    return s.state is State.OPEN and s.reply_deadline is not None and s.reply_deadline <= now


def is_idle(s: SessionClock, now: datetime) -> bool:
    """Whether the deadline worker may close the session now as IDLE (R12; never early, never while a
    reply deadline is pending)."""
    return s.state is State.OPEN and s.reply_deadline is None and s.idle_deadline is not None and s.idle_deadline <= now


def due_reason(s: SessionClock, now: datetime) -> CloseReason | None:
    """How the deadline worker ends the session at ``now``: MERCHANT_TIMEOUT, IDLE, or None (not due)."""
    if is_due(s, now):
        return CloseReason.MERCHANT_TIMEOUT
    if is_idle(s, now):
        return CloseReason.IDLE
    return None
