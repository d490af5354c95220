"""SPEC R10 definitions (escalation.domain.timeliness, docs/stats.md) as examples and properties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from escalation.domain.session import CloseReason, Sender
from escalation.domain.timeliness import (
    REPLY_LIMIT,
    Figures,
    Message,
    Outcome,
    Timeline,
    WarningKind,
    WarningRule,
    figures,
    outcome,
    runs,
    total,
    warning_kinds,
    warning_period,
    warning_window,
)

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
P, M = Sender.PLATFORM, Sender.MERCHANT
LATER = T0 + timedelta(days=1)


def timeline(
    *messages: tuple[Sender, float], close: tuple[CloseReason, float] | None = None, ticket: bool = False
) -> Timeline:
    return Timeline(
        [Message(seq, s, T0 + timedelta(seconds=at)) for seq, (s, at) in enumerate(messages, start=1)],
        close_reason=close[0] if close else None,
        close_time=T0 + timedelta(seconds=close[1]) if close else None,
        has_ticket=ticket,
    )


def outcomes(t: Timeline, as_of: datetime = LATER) -> list[Outcome]:
    return [outcome(r, t, as_of) for r in runs(t.messages)]


# --- examples ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply_after", "expected"),
    [
        (179, Outcome.IN_3M),
        (180, Outcome.IN_3M),
        (180.000001, Outcome.LATE),
        (181, Outcome.LATE),
    ],
)
def test_a_reply_within_three_minutes_inclusive_counts(reply_after: float, expected: Outcome) -> None:
    assert outcomes(timeline((P, 0), (M, reply_after))) == [expected]


def test_one_reply_answers_every_platform_message_before_it_measured_from_the_first() -> None:
    t = timeline((P, 0), (P, 30), (P, 60), (M, 90), (P, 100), (M, 120))
    [first, second] = runs(t.messages)
    assert (first.messages, first.response_time) == (3, timedelta(seconds=90))
    assert (second.messages, second.response_time) == (1, timedelta(seconds=20))
    f = figures(t, LATER)
    assert (f.platform_messages, f.platform_messages_answered, f.platform_messages_answered_in_3m) == (4, 4, 4)
    assert f.average_response == timedelta(seconds=(3 * 90 + 20) / 4)
    assert f.average_first_response == timedelta(seconds=90)


def test_a_follow_up_does_not_restart_the_clock() -> None:
    """Nagging cannot improve a merchant's figures: the platform has waited since its first message."""
    t = timeline((P, 0), (P, 170), (M, 200))
    assert outcomes(t) == [Outcome.LATE]
    assert figures(t, LATER).average_response == timedelta(seconds=200)


def test_a_timed_out_session_is_missed_and_fails_even_before_three_minutes() -> None:
    # A merchant reply timeout of 120 s ends the session before the 3-minute limit.
    t = timeline((P, 0), (M, 10), (P, 20), close=(CloseReason.MERCHANT_TIMEOUT, 140), ticket=True)
    assert outcomes(t) == [Outcome.IN_3M, Outcome.MISSED]
    f = figures(t, LATER)
    assert (f.sessions, f.sessions_rated, f.sessions_answered_in_3m) == (1, 1, 0)
    assert (f.timeouts, f.tickets) == (1, 1)


def test_unanswered_in_an_open_session_is_pending_until_three_minutes_pass_then_missed() -> None:
    t = timeline((P, 0))
    assert outcomes(t, T0 + REPLY_LIMIT) == [Outcome.PENDING]
    assert outcomes(t, T0 + REPLY_LIMIT + timedelta(microseconds=1)) == [Outcome.MISSED]
    assert figures(t, T0 + timedelta(seconds=60)).sessions_rated == 0


def test_a_session_the_platform_closed_before_three_minutes_is_not_rated() -> None:
    cut = timeline((P, 0), close=(CloseReason.RESOLVED, 60))
    assert outcomes(cut) == [Outcome.CUT_OFF]
    f = figures(cut, LATER)
    assert (f.sessions, f.sessions_rated, f.platform_messages, f.platform_messages_rated) == (1, 0, 1, 0)
    # A closing remark after answered questions does not hurt the session.
    thanks = timeline((P, 0), (M, 30), (P, 40), close=(CloseReason.RESOLVED, 45))
    assert (figures(thanks, LATER).sessions_rated, figures(thanks, LATER).sessions_answered_in_3m) == (1, 1)
    # Closed by the platform after the limit without an answer: missed.
    slow = timeline((P, 0), close=(CloseReason.PLATFORM_ESCALATED, 181), ticket=True)
    assert outcomes(slow) == [Outcome.MISSED]


def test_a_session_with_a_pending_run_is_not_rated_unless_it_already_failed() -> None:
    as_of = T0 + timedelta(seconds=250)
    pending = timeline((P, 0), (M, 20), (P, 200))
    assert (figures(pending, as_of).sessions_rated, figures(pending, as_of).platform_messages_rated) == (0, 1)
    failed = timeline((P, 0), (M, 190), (P, 200))
    assert (figures(failed, as_of).sessions_rated, figures(failed, as_of).sessions_answered_in_3m) == (1, 0)


def test_no_answer_means_no_average_rather_than_zero() -> None:
    f = figures(timeline((P, 0), close=(CloseReason.MERCHANT_TIMEOUT, 180)), LATER)
    assert f.average_response is None
    assert f.average_first_response is None
    assert (Figures().session_reply_rate, Figures().message_reply_rate) == (0.0, 0.0)


def test_means_are_exact_to_the_microsecond() -> None:
    f = total([timeline((P, 0), (M, s)) for s in (179, 181, 200)], LATER)
    assert f.average_first_response == timedelta(microseconds=186_666_667)


# --- warnings ------------------------------------------------------------------------------------

RULE = WarningRule()


def _judged(rated: int, in_3m: int, average_s: float = 30.0) -> Figures:
    return Figures(
        sessions=rated,
        sessions_rated=rated,
        sessions_answered_in_3m=in_3m,
        platform_messages_answered=rated,
        response_us=round(average_s * 1_000_000) * rated,
    )


@pytest.mark.parametrize(
    ("figures_", "kinds"),
    [
        (_judged(5, 3), [WarningKind.LOW_REPLY_RATE]),
        (_judged(5, 4), []),  # exactly 80 % is not below it
        (_judged(10, 7), [WarningKind.LOW_REPLY_RATE]),
        (_judged(4, 0), []),  # too few rated sessions to judge
        (_judged(5, 5, average_s=90), []),  # exactly 90 s is not above it
        (_judged(5, 5, average_s=90.000001), [WarningKind.SLOW_AVERAGE_RESPONSE]),
        (_judged(4, 4, average_s=300), []),  # too few sessions for either rule
        (_judged(6, 1, average_s=120), [WarningKind.LOW_REPLY_RATE, WarningKind.SLOW_AVERAGE_RESPONSE]),
        (Figures(sessions=9, sessions_rated=5), [WarningKind.LOW_REPLY_RATE]),  # nothing answered: no average
    ],
)
def test_warning_rule(figures_: Figures, kinds: list[WarningKind]) -> None:
    assert warning_kinds(figures_, RULE) == kinds


def test_warning_thresholds_are_configurable() -> None:
    strict = WarningRule(reply_rate_threshold=0.95, min_sessions=2, average_response=timedelta(seconds=20))
    assert warning_kinds(_judged(3, 2), strict) == [WarningKind.LOW_REPLY_RATE, WarningKind.SLOW_AVERAGE_RESPONSE]


def test_the_period_is_the_utc_day_of_the_check_and_the_window_the_24_hours_before_it() -> None:
    at = datetime(2026, 3, 1, 0, 30, tzinfo=timezone(timedelta(hours=8)))  # 2026-02-28 16:30 UTC
    assert warning_period(at) == (datetime(2026, 2, 28, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC))
    assert warning_period(datetime(2026, 3, 1, tzinfo=UTC))[0] == datetime(2026, 3, 1, tzinfo=UTC)
    assert warning_window(at) == (at - timedelta(hours=24), at)


# --- properties ----------------------------------------------------------------------------------

gaps = st.sampled_from([0.0, 0.5, 30.0, 179.0, 180.0, 181.0, 400.0]) | st.floats(0, 600)
conversations = st.lists(st.tuples(st.sampled_from([P, M]), gaps), max_size=12)
closes = st.none() | st.tuples(st.sampled_from(list(CloseReason)), gaps)


@st.composite
def timelines(draw: st.DrawFn) -> Timeline:
    at, steps = 0.0, [(P, 0.0)]
    for sender, gap in draw(conversations):
        at += gap
        steps.append((sender, at))
    close = draw(closes)
    return timeline(*steps, close=None if close is None else (close[0], at + close[1]))


@given(st.lists(timelines(), max_size=8), st.floats(0, 10_000))
def test_figures_are_consistent(ts: list[Timeline], as_of_s: float) -> None:
    f = total(ts, T0 + timedelta(seconds=as_of_s))
    assert 0 <= f.sessions_answered_in_3m <= f.sessions_rated <= f.sessions == len(ts)
    assert 0 <= f.platform_messages_answered_in_3m <= f.platform_messages_rated <= f.platform_messages
    assert f.platform_messages_answered_in_3m <= f.platform_messages_answered <= f.platform_messages
    assert f.sessions_answered <= f.sessions
    assert 0.0 <= f.session_reply_rate <= 1.0
    assert 0.0 <= f.message_reply_rate <= 1.0
    assert f.timeouts <= f.sessions


@given(timelines(), st.floats(0, 10_000), st.floats(0, 10_000))
def test_a_rated_outcome_never_changes_later(t: Timeline, first_s: float, extra_s: float) -> None:
    """Figures for a past window only change while a run is pending: rated outcomes are final."""
    before = outcomes(t, T0 + timedelta(seconds=first_s))
    after = outcomes(t, T0 + timedelta(seconds=first_s + extra_s))
    for b, a in zip(before, after, strict=True):
        if b.rated:
            assert a == b
        elif b is Outcome.CUT_OFF:
            assert a is Outcome.CUT_OFF


@given(timelines())
def test_a_session_is_answered_in_3m_iff_rated_and_no_run_failed(t: Timeline) -> None:
    f = figures(t, LATER)
    got = outcomes(t)
    assert f.sessions_answered_in_3m == int(
        bool(f.sessions_rated) and not any(o.failed for o in got) and Outcome.IN_3M in got
    )
    # Long after everything, nothing in an ended session is pending.
    if t.close_reason is not None:
        assert Outcome.PENDING not in got


@given(st.lists(timelines(), min_size=1, max_size=6), st.floats(0, 10_000))
def test_figures_add_up_over_sessions(ts: list[Timeline], as_of_s: float) -> None:
    as_of = T0 + timedelta(seconds=as_of_s)
    split = len(ts) // 2
    assert total(ts, as_of) == total(ts[:split], as_of) + total(ts[split:], as_of)
