"""SPEC R5/R6 as properties of the pure session state machine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from escalation import errors
from escalation.domain.session import CloseReason, Sender, SessionClock, State, after_message, end, is_due

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TIMEOUT, REMIND = timedelta(seconds=180), timedelta(seconds=60)
FRESH = SessionClock(State.OPEN, 0, None, None)

steps = st.lists(st.tuples(st.sampled_from(list(Sender)), st.integers(0, 400)), max_size=30)


def _run(events: list[tuple[Sender, int]]) -> tuple[SessionClock, list[datetime]]:
    s, at, times = FRESH, T0, []
    for sender, gap in events:
        at = at + timedelta(seconds=gap)
        times.append(at)
        s = after_message(s, sender, at, reply_timeout=TIMEOUT, remind_before=REMIND)
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
    assert (ended.state, ended.close_reason, ended.reply_deadline) == (State.ENDED, reason, None)
    for second in CloseReason:
        with pytest.raises(errors.SessionClosed):
            end(ended, second)
    for sender in Sender:
        with pytest.raises(errors.SessionClosed):
            after_message(ended, sender, T0, reply_timeout=TIMEOUT, remind_before=REMIND)
    assert not is_due(ended, T0 + timedelta(days=1))


@given(st.integers(0, 1000))
def test_never_due_before_the_deadline(offset: int) -> None:
    s = after_message(FRESH, Sender.PLATFORM, T0, reply_timeout=TIMEOUT, remind_before=REMIND)
    now = T0 + timedelta(seconds=offset)
    assert is_due(s, now) == (now >= T0 + TIMEOUT)


def test_only_resolved_makes_no_ticket() -> None:
    assert [r for r in CloseReason if not r.makes_ticket] == [CloseReason.RESOLVED]


def test_reminder_is_due_at_once_when_timeout_is_shorter_than_remind_before() -> None:
    s = after_message(FRESH, Sender.PLATFORM, T0, reply_timeout=timedelta(seconds=30), remind_before=REMIND)
    assert s.remind_time == T0
