"""SPEC R2's saturation rule, as properties of the pure policy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from escalation.domain.assignment import Candidate, choose

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
