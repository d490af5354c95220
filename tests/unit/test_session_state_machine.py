"""SPEC R5/R6/R12 as properties of the pure session state machine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from escalation import errors
from escalation.domain.session import (
    CloseReason,
    Sender,
    SessionClock,
    State,
    after_message,
    due_reason,
    end,
    is_due,
    is_idle,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TIMEOUT, REMIND, IDLE = timedelta(seconds=180), timedelta(seconds=60), timedelta(minutes=30)
FRESH = SessionClock(State.OPEN, 0, None, None)

steps = st.lists(st.tuples(st.sampled_from(list(Sender)), st.integers(0, 400)), max_size=30)


def _run(events: list[tuple[Sender, int]]) -> tuple[SessionClock, list[datetime]]:
    s, at, times = FRESH, T0, []
    for sender, gap in events:
        at = at + timedelta(seconds=gap)
        times.append(at)
        s = after_message(s, sender, at, reply_timeout=TIMEOUT, remind_before=REMIND, idle_timeout=IDLE)
    return s, times


@given(steps)
def test_deadline_is_oldest_unanswered_platform_message_plus_timeout(events: list[tuple[Sender, int]]) -> None:
    s, times = _run(events)
    assert s.last_seq == len(events)
    waiting_since = None
    for (sender, _), at in zip(events, times, strict=True):
        if sender is Sender.MERCHANT:
            waiting_since = None
        elif waiting_since is None:
            waiting_since = at
    expected = None if waiting_since is None else waiting_since + TIMEOUT
    assert s.reply_deadline == expected
    if expected is not None:
        assert s.remind_time == expected - REMIND
    else:
        assert s.remind_time is None


@given(steps, st.sampled_from(list(CloseReason)))
def test_a_session_ends_exactly_once(events: list[tuple[Sender, int]], reason: CloseReason) -> None:
    s, _ = _run(events)
    ended = end(s, reason)
    assert (ended.state, ended.close_reason, ended.reply_deadline, ended.idle_deadline) == (
        State.ENDED,
        reason,
        None,
        None,
    )
    for second in CloseReason:
        with pytest.raises(errors.SessionClosed):
            end(ended, second)
    for sender in Sender:
        with pytest.raises(errors.SessionClosed):
            after_message(ended, sender, T0, reply_timeout=TIMEOUT, remind_before=REMIND, idle_timeout=IDLE)
    assert not is_due(ended, T0 + timedelta(days=1))
    assert due_reason(ended, T0 + timedelta(days=1)) is None


@given(st.integers(0, 1000))
def test_never_due_before_the_deadline(offset: int) -> None:
    s = after_message(FRESH, Sender.PLATFORM, T0, reply_timeout=TIMEOUT, remind_before=REMIND, idle_timeout=IDLE)
    now = T0 + timedelta(seconds=offset)
    assert is_due(s, now) == (now >= T0 + TIMEOUT)


def test_only_escalation_and_timeout_make_tickets() -> None:
    assert [r for r in CloseReason if r.makes_ticket] == [CloseReason.PLATFORM_ESCALATED, CloseReason.MERCHANT_TIMEOUT]
    assert not CloseReason.IDLE.makes_ticket, "SPEC R12: an idle close is resolved, no ticket"


def test_reminder_is_due_at_once_when_timeout_is_shorter_than_remind_before() -> None:
    s = after_message(
        FRESH, Sender.PLATFORM, T0, reply_timeout=timedelta(seconds=30), remind_before=REMIND, idle_timeout=IDLE
    )
    assert s.remind_time == T0


# --- R12 idle close ------------------------------------------------------------------------------


@given(steps)
def test_idle_deadline_is_last_message_plus_idle_timeout_once_everything_is_answered(
    events: list[tuple[Sender, int]],
) -> None:
    """Set iff the last message is the merchant's (every platform message answered), from that message;
    never together with a reply deadline."""
    s, times = _run(events)
    if events and events[-1][0] is Sender.MERCHANT:
        assert (s.idle_deadline, s.reply_deadline, s.remind_time) == (times[-1] + IDLE, None, None)
    else:
        assert s.idle_deadline is None
    assert s.reply_deadline is None or s.idle_deadline is None


@given(steps, st.integers(-3600, 7200))
def test_the_worker_ends_a_session_for_at_most_one_reason_and_never_early(
    events: list[tuple[Sender, int]], offset: int
) -> None:
    """At any instant a session is due for its reply deadline, or idle, or neither — never both; and
    neither before its instant."""
    s, times = _run(events)
    now = (times[-1] if times else T0) + timedelta(seconds=offset)
    reason = due_reason(s, now)
    assert not (is_due(s, now) and is_idle(s, now))
    if reason is CloseReason.IDLE:
        assert s.idle_deadline is not None
        assert now >= s.idle_deadline
    elif reason is CloseReason.MERCHANT_TIMEOUT:
        assert s.reply_deadline is not None
        assert now >= s.reply_deadline
    else:
        assert all(d is None or now < d for d in (s.reply_deadline, s.idle_deadline))


@given(st.integers(0, 4000))
def test_never_idle_before_the_idle_deadline(offset: int) -> None:
    asked = after_message(FRESH, Sender.PLATFORM, T0, reply_timeout=TIMEOUT, remind_before=REMIND, idle_timeout=IDLE)
    answered = after_message(
        asked,
        Sender.MERCHANT,
        T0 + timedelta(seconds=10),
        reply_timeout=TIMEOUT,
        remind_before=REMIND,
        idle_timeout=IDLE,
    )
    now = T0 + timedelta(seconds=10 + offset)
    assert is_idle(answered, now) == (now >= T0 + timedelta(seconds=10) + IDLE)
    assert not is_due(answered, now)


def test_a_platform_message_during_idle_turns_it_back_into_a_reply_deadline() -> None:
    kw = {"reply_timeout": TIMEOUT, "remind_before": REMIND, "idle_timeout": IDLE}
    answered = after_message(after_message(FRESH, Sender.PLATFORM, T0, **kw), Sender.MERCHANT, T0, **kw)
    later = T0 + timedelta(minutes=10)
    asked = after_message(answered, Sender.PLATFORM, later, **kw)
    assert (asked.idle_deadline, asked.reply_deadline) == (None, later + TIMEOUT)
    assert not is_idle(asked, T0 + timedelta(days=1)), "a pending question is never closed as idle"
    restarted = after_message(answered, Sender.MERCHANT, later, **kw)
    assert restarted.idle_deadline == later + IDLE, "a merchant message restarts the idle deadline"
