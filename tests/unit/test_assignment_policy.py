"""SPEC R2's saturation rule, as properties of the pure policy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from escalation.domain.assignment import Candidate, MoveReason, choose, choose_in_turn, why_ineligible

T0 = datetime(2026, 1, 1, tzinfo=UTC)

candidates = st.lists(
    st.builds(
        Candidate,
        agent_id=st.text("abcdefgh", min_size=1, max_size=3),
        open_sessions=st.integers(0, 60),
        capacity=st.integers(1, 50),
        last_assign_time=st.one_of(st.none(), st.integers(0, 1000).map(lambda s: T0 + timedelta(seconds=s))),
    ),
    min_size=1,
    max_size=8,
    unique_by=lambda c: c.agent_id,
)


def test_seed_example() -> None:
    agents = [Candidate("a", 1, 10, None), Candidate("b", 2, 10, None), Candidate("c", 3, 10, None)]
    assert choose(agents).agent_id == "a"


@given(candidates)
def test_winner_has_minimal_saturation(agents: list[Candidate]) -> None:
    assert choose(agents).saturation == min(c.saturation for c in agents)


@given(candidates)
def test_ties_go_to_least_recently_assigned_then_id(agents: list[Candidate]) -> None:
    winner = choose(agents)
    tied = [c for c in agents if c.saturation == winner.saturation]
    never = [c for c in tied if c.last_assign_time is None]
    if never:
        assert winner.agent_id == min(c.agent_id for c in never)
    else:
        oldest = min(c.last_assign_time for c in tied if c.last_assign_time is not None)
        assert winner.agent_id == min(c.agent_id for c in tied if c.last_assign_time == oldest)


@given(candidates)
def test_choice_does_not_depend_on_order(agents: list[Candidate]) -> None:
    assert choose(agents) == choose(list(reversed(agents)))


@given(
    st.lists(st.integers(1, 20), min_size=1, max_size=6),
    st.integers(1, 300),
)
def test_repeated_assignment_keeps_saturations_within_one_session(capacities: list[int], sessions: int) -> None:
    """Assigning one by one (as the locked transaction does) keeps max − min saturation ≤ 1/capacity."""
    agents = [Candidate(f"a{i}", 0, cap, None) for i, cap in enumerate(capacities)]
    for step in range(sessions):
        w = choose(agents)
        agents = [
            Candidate(c.agent_id, c.open_sessions + 1, c.capacity, T0 + timedelta(seconds=step)) if c is w else c
            for c in agents
        ]
    top = max(agents, key=lambda c: c.saturation)
    bottom = min(c.saturation for c in agents)
    assert top.saturation - bottom <= Fraction(1, top.capacity)
    if len(set(capacities)) == 1:
        counts = [c.open_sessions for c in agents]
        assert max(counts) - min(counts) <= 1


# --- SPEC R13: re-assignment applies the same rule once per session --------------------------------


@given(candidates, st.integers(0, 40))
def test_choose_in_turn_is_choose_applied_once_per_session(agents: list[Candidate], sessions: int) -> None:
    """Each pick is what choose() says for the agents as the previous picks left them: one more open
    session and the latest assignment for each winner, as separate OpenSession calls would leave them."""
    now = T0 + timedelta(days=1)  # later than every generated assignment time, as the database clock is
    picks, after = choose_in_turn(agents, sessions, now)
    current = {c.agent_id: c for c in agents}
    for i, pick in enumerate(picks):
        assert pick.seen == tuple(sorted(current.values(), key=lambda c: c.agent_id))
        assert pick.winner == choose(list(current.values()))
        w = pick.winner
        current[w.agent_id] = Candidate(w.agent_id, w.open_sessions + 1, w.capacity, now + timedelta(microseconds=i))
    assert after == sorted(current.values(), key=lambda c: c.agent_id)
    assert sum(c.open_sessions for c in after) == sum(c.open_sessions for c in agents) + sessions


@given(st.lists(st.integers(0, 30), min_size=1, max_size=6), st.integers(0, 100))
def test_reassigning_onto_a_balanced_shop_keeps_it_balanced(counts: list[int], sessions: int) -> None:
    """Equal capacities: whatever the counts before, the moved sessions never widen max − min past
    max(1, what it was), and they fill the least loaded first."""
    agents = [Candidate(f"a{i}", n, 10, None) for i, n in enumerate(counts)]
    _, after = choose_in_turn(agents, sessions, T0)
    before_spread = max(counts) - min(counts)
    spread = max(c.open_sessions for c in after) - min(c.open_sessions for c in after)
    assert spread <= max(1, before_spread)


def test_choose_in_turn_without_candidates_refuses_only_real_work() -> None:
    assert choose_in_turn([], 0, T0) == ([], [])
    with pytest.raises(ValueError, match="no candidates"):
        choose_in_turn([], 1, T0)


@pytest.mark.parametrize(
    ("disabled", "im_permission", "reason"),
    [
        (True, True, MoveReason.AGENT_DISABLED),
        (True, False, MoveReason.AGENT_DISABLED),
        (False, False, MoveReason.IM_PERMISSION_REMOVED),
        (False, True, MoveReason.NOT_RECEPTION_AGENT),
    ],
)
def test_a_reassignment_says_why_the_agent_stopped_being_eligible(
    disabled: bool, im_permission: bool, reason: MoveReason
) -> None:
    assert why_ineligible(disabled=disabled, im_permission=im_permission) is reason
