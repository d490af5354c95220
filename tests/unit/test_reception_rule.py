"""SPEC R1 as a pure rule, checked with generated shops."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from escalation.domain.reception import AgentFlags, eligible

flags = st.builds(
    AgentFlags,
    agent_id=st.text("abcdef", min_size=1, max_size=4),
    main_account=st.just(False),
    reception_agent=st.booleans(),
    im_permission=st.booleans(),
    disabled=st.booleans(),
)


@st.composite
def shops(draw: st.DrawFn) -> list[AgentFlags]:
    subs = draw(st.lists(flags, max_size=8, unique_by=lambda a: a.agent_id))
    main = AgentFlags("MAIN", True, draw(st.booleans()), True, draw(st.booleans()))
    return [main, *subs]


@given(shops())
def test_eligible_agents_have_im_and_are_enabled(shop: list[AgentFlags]) -> None:
    by_id = {a.agent_id: a for a in shop}
    for agent_id in eligible(shop):
        assert by_id[agent_id].im_permission
        assert not by_id[agent_id].disabled


@given(shops())
def test_when_anyone_is_designated_only_designated_agents_receive(shop: list[AgentFlags]) -> None:
    if any(a.reception_agent for a in shop):
        assert all(next(a for a in shop if a.agent_id == x).reception_agent for x in eligible(shop))


@given(shops())
def test_nobody_designated_means_the_main_account_alone(shop: list[AgentFlags]) -> None:
    if not any(a.reception_agent for a in shop):
        main = shop[0]
        assert eligible(shop) == (set() if main.disabled else {"MAIN"})


def test_seed_style_example() -> None:
    shop = [
        AgentFlags("main", True, False, True, False),
        AgentFlags("a", False, True, True, False),
        AgentFlags("b", False, True, False, False),  # IM removed: stops being eligible at once
        AgentFlags("c", False, False, True, False),
    ]
    assert eligible(shop) == {"a"}
