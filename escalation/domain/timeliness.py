"""Reply timeliness (SPEC R10) as pure functions: the definitions docs/stats.md writes down.

``store/sql/stats.sql`` computes the same figures in one statement for speed; an integration test
replays random timelines through both and requires them to agree. The warning rule and its period
live here too, so the worker only fetches figures and stores what this module decides.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any, Self

from escalation.domain.session import CloseReason, Sender

# "Answered within 3 minutes" means a response time of at most this (inclusive).
REPLY_LIMIT = timedelta(minutes=3)
MAX_WINDOW = timedelta(days=31)
WARNING_WINDOW = timedelta(hours=24)


class Outcome(enum.StrEnum):
    """What became of a run of platform messages (every message of the run shares it)."""

    IN_3M = "IN_3M"  # answered, response time <= REPLY_LIMIT
    LATE = "LATE"  # answered, response time > REPLY_LIMIT
    MISSED = "MISSED"  # no answer: timed out, or REPLY_LIMIT passed while the session could take one
    PENDING = "PENDING"  # no answer yet, session open, REPLY_LIMIT not yet passed: not rated
    CUT_OFF = "CUT_OFF"  # the platform closed the session before REPLY_LIMIT passed: not rated

    @property
    def rated(self) -> bool:
        return self in (Outcome.IN_3M, Outcome.LATE, Outcome.MISSED)

    @property
    def failed(self) -> bool:
        return self in (Outcome.LATE, Outcome.MISSED)


@dataclass(frozen=True)
class Message:
    seq: int
    sender: Sender
    send_time: datetime


@dataclass(frozen=True)
class Timeline:
    """One session as far as timeliness is concerned."""

    messages: Sequence[Message]
    close_reason: CloseReason | None = None  # None while open
    close_time: datetime | None = None
    has_ticket: bool = False


@dataclass(frozen=True)
class Run:
    """Consecutive platform messages and the merchant message that answers them all (if any)."""

    messages: int
    first_send_time: datetime
    reply_time: datetime | None

    @property
    def response_time(self) -> timedelta | None:
        """Measured from the run's first message: the platform has waited since then (as R5's deadline)."""
        return None if self.reply_time is None else self.reply_time - self.first_send_time


def _us(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _mean(total_us: int, count: int) -> timedelta | None:
    return timedelta(microseconds=round(Fraction(total_us, count))) if count else None


def _rate(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


@dataclass(frozen=True)
class Figures:
    """Counts and sums over a set of sessions; ``+`` combines two sets. Durations are in microseconds."""

    sessions: int = 0
    sessions_rated: int = 0
    sessions_answered_in_3m: int = 0
    sessions_answered: int = 0  # sessions with a first response (the first-response mean's count)
    first_response_us: int = 0
    platform_messages: int = 0
    platform_messages_rated: int = 0
    platform_messages_answered_in_3m: int = 0
    platform_messages_answered: int = 0
    response_us: int = 0
    timeouts: int = 0
    tickets: int = 0

    def __add__(self, other: Figures) -> Figures:
        return Figures(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> Self:
        """From a mapping with one entry per field (e.g. a database row)."""
        return cls(**{f.name: int(values[f.name]) for f in fields(cls)})

    @property
    def session_reply_rate(self) -> float:
        return _rate(self.sessions_answered_in_3m, self.sessions_rated)

    @property
    def message_reply_rate(self) -> float:
        return _rate(self.platform_messages_answered_in_3m, self.platform_messages_rated)

    @property
    def average_first_response(self) -> timedelta | None:
        return _mean(self.first_response_us, self.sessions_answered)

    @property
    def average_response(self) -> timedelta | None:
        return _mean(self.response_us, self.platform_messages_answered)


def runs(messages: Sequence[Message]) -> list[Run]:
    """Splits a session (in seq order) into runs of platform messages, each with its answer."""
    found: list[Run] = []
    count, first = 0, None
    for m in sorted(messages, key=lambda m: m.seq):
        if m.sender is Sender.PLATFORM:
            if first is None:
                first = m.send_time
            count += 1
        elif first is not None:
            found.append(Run(count, first, m.send_time))
            count, first = 0, None
    if first is not None:
        found.append(Run(count, first, None))
    return found


def outcome(run: Run, timeline: Timeline, as_of: datetime) -> Outcome:
    """The fate of a run, as known at ``as_of`` (the database clock when the figures are computed)."""
    response = run.response_time
    if response is not None:
        return Outcome.IN_3M if response <= REPLY_LIMIT else Outcome.LATE
    if timeline.close_reason is CloseReason.MERCHANT_TIMEOUT:
        return Outcome.MISSED
    # Until when the merchant could still have answered it.
    until = timeline.close_time if timeline.close_reason is not None else as_of
    assert until is not None
    if until - run.first_send_time > REPLY_LIMIT:
        return Outcome.MISSED
    return Outcome.PENDING if timeline.close_reason is None else Outcome.CUT_OFF


def figures(timeline: Timeline, as_of: datetime) -> Figures:
    """One session's contribution to the figures."""
    session_runs = runs(timeline.messages)
    outcomes = [outcome(r, timeline, as_of) for r in session_runs]
    failed = any(o.failed for o in outcomes)
    settled = not failed and Outcome.PENDING not in outcomes and Outcome.IN_3M in outcomes
    answered = [(r, o) for r, o in zip(session_runs, outcomes, strict=True) if r.response_time is not None]
    first = session_runs[0].response_time if session_runs else None
    return Figures(
        sessions=1,
        sessions_rated=int(failed or settled),
        sessions_answered_in_3m=int(settled),
        sessions_answered=int(first is not None),
        first_response_us=_us(first) if first is not None else 0,
        platform_messages=sum(r.messages for r in session_runs),
        platform_messages_rated=sum(r.messages for r, o in zip(session_runs, outcomes, strict=True) if o.rated),
        platform_messages_answered_in_3m=sum(r.messages for r, o in answered if o is Outcome.IN_3M),
        platform_messages_answered=sum(r.messages for r, _ in answered),
        response_us=sum(r.messages * _us(r.response_time) for r, _ in answered if r.response_time is not None),
        timeouts=int(timeline.close_reason is CloseReason.MERCHANT_TIMEOUT),
        tickets=int(timeline.has_ticket),
    )


def total(timelines: Sequence[Timeline], as_of: datetime) -> Figures:
    """The figures over several sessions."""
    result = Figures()
    for t in timelines:
        result += figures(t, as_of)
    return result


# --- warnings ------------------------------------------------------------------------------------


class WarningKind(enum.StrEnum):
    LOW_REPLY_RATE = "LOW_REPLY_RATE"
    SLOW_AVERAGE_RESPONSE = "SLOW_AVERAGE_RESPONSE"


@dataclass(frozen=True)
class WarningRule:
    """When a merchant is warned (SPEC R10); configurable, these are the spec's defaults."""

    reply_rate_threshold: float = 0.8  # warn when the session 3-minute rate is strictly below this
    min_sessions: int = 5  # rated sessions needed before either rule applies
    average_response: timedelta = timedelta(seconds=90)  # warn when the average is strictly above this


def warning_kinds(f: Figures, rule: WarningRule) -> list[WarningKind]:
    """Which rules a merchant's trailing-24-hour figures break (empty: no warning)."""
    if f.sessions_rated < rule.min_sessions:
        return []
    kinds = []
    if f.session_reply_rate < rule.reply_rate_threshold:
        kinds.append(WarningKind.LOW_REPLY_RATE)
    average = f.average_response
    if average is not None and average > rule.average_response:
        kinds.append(WarningKind.SLOW_AVERAGE_RESPONSE)
    return kinds


def warning_period(check_time: datetime) -> tuple[datetime, datetime]:
    """The UTC day the check runs in: a merchant gets at most one warning per such period."""
    utc = check_time.astimezone(UTC)
    start = datetime(utc.year, utc.month, utc.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def warning_window(check_time: datetime) -> tuple[datetime, datetime]:
    """The sessions a check judges: those opened in the 24 hours before it."""
    return check_time - WARNING_WINDOW, check_time
