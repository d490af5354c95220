"""The session state machine (SPEC R5, R6) as pure functions. docs/sessions.md draws it.

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

    @property
    def makes_ticket(self) -> bool:
        return self is not CloseReason.RESOLVED


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


def after_message(
    s: SessionClock, sender: Sender, at: datetime, *, reply_timeout: timedelta, remind_before: timedelta
) -> SessionClock:
    """R5: a platform message starts a deadline unless one is already running; a merchant one clears it.

    The reminder is due ``remind_before`` the deadline (at once if the timeout is shorter).
    """
    if s.state is State.ENDED:
        raise errors.SessionClosed()
    if sender is Sender.MERCHANT:
        return replace(s, last_seq=s.last_seq + 1, reply_deadline=None, remind_time=None)
    if s.reply_deadline is not None:
        return replace(s, last_seq=s.last_seq + 1)
    deadline = at + reply_timeout
    return replace(s, last_seq=s.last_seq + 1, reply_deadline=deadline, remind_time=max(at, deadline - remind_before))


def end(s: SessionClock, reason: CloseReason) -> SessionClock:
    """R6: a session ends exactly once; every later write is SESSION_CLOSED."""
    if s.state is State.ENDED:
        raise errors.SessionClosed()
    return replace(s, state=State.ENDED, reply_deadline=None, remind_time=None, close_reason=reason)


def is_due(s: SessionClock, now: datetime) -> bool:
    """Whether the deadline worker may end the session now (never early)."""
    return s.state is State.OPEN and s.reply_deadline is not None and s.reply_deadline <= now
