"""A transfer or re-assignment (SPEC R13) as each workbench shows it: the main account is told where
the session went (no bell), the receiving agent gets it as new work, the agent it left drops it."""

from __future__ import annotations

from datetime import timedelta

import pytest

from escalation.v1 import common_pb2, merchant_pb2
from escalation.workbench.state import WorkbenchState
from tests.unit.test_workbench_views import T0, event, session

MAIN = "main"
REASONS = [common_pb2.ASSIGNMENT_REASON_TRANSFERRED, common_pb2.ASSIGNMENT_REASON_AGENT_DISABLED]


def step(n: int, from_agent: str, to_agent: str, reason: int) -> common_pb2.AssignmentStep:
    return common_pb2.AssignmentStep(
        step=n,
        reason=reason,  # type: ignore[arg-type]
        from_agent_id=from_agent,
        to_agent_id=to_agent,
        actor_id=MAIN,
        actor_role="merchant",
    )


def moved(sid: str, to_agent: str) -> common_pb2.Session:
    s = session(sid)
    s.assigned_agent_id = to_agent
    return s


def assigned(cursor: int, sid: str, s: common_pb2.AssignmentStep) -> merchant_pb2.MerchantEvent:
    the_session = moved(sid, s.to_agent_id)
    return event(cursor, session_id=sid, session_assigned=merchant_pb2.SessionAssigned(session=the_session, step=s))


def unassigned(cursor: int, sid: str, s: common_pb2.AssignmentStep) -> merchant_pb2.MerchantEvent:
    the_session = moved(sid, s.to_agent_id)
    return event(cursor, session_id=sid, session_unassigned=merchant_pb2.SessionUnassigned(session=the_session, step=s))


def opened(sid: str) -> merchant_pb2.MerchantEvent:
    return event(1, session_id=sid, session_assigned=merchant_pb2.SessionAssigned(session=session(sid)))


@pytest.mark.parametrize("reason", REASONS)
@pytest.mark.parametrize("unassigned_first", [True, False])
def test_the_main_account_is_told_where_the_session_went_once_without_a_bell(
    reason: int, unassigned_first: bool
) -> None:
    state = WorkbenchState(agent_id=MAIN, merchant_id="shop")
    state.apply(opened("s1"), T0)
    move = step(1, "a1", "a2", reason)
    events = [unassigned(2, "s1", move), assigned(3, "s1", move)]
    notices = [n for e in (events if unassigned_first else events[::-1]) for n in state.apply(e, T0)]
    assert [(n.text, n.bell) for n in notices] == [("s1 moved to a2", False)]
    assert state.sessions["s1"].session.assigned_agent_id == "a2"
    # A second move of the same session is news again.
    again = state.apply(unassigned(4, "s1", step(2, "a2", "a3", reason)), T0)
    assert [(n.text, n.bell) for n in again] == [("s1 moved to a3", False)]


@pytest.mark.parametrize("reason", REASONS)
def test_the_receiving_agent_gets_it_as_new_work_from_its_previous_agent(reason: int) -> None:
    state = WorkbenchState(agent_id="a2", merchant_id="shop")
    notices = state.apply(assigned(5, "s1", step(1, "a1", "a2", reason)), T0)
    assert [(n.text, n.bell) for n in notices] == [("Transferred to you from a1: s1 · refund · o-1", True)]
    assert "s1" in state.sessions
    # Replayed after its deadline passed: no longer news, no bell.
    late = WorkbenchState(agent_id="a2", merchant_id="shop")
    notices = late.apply(assigned(5, "s1", step(1, "a1", "a2", reason)), T0 + timedelta(hours=1))
    assert [n.bell for n in notices] == [False]


@pytest.mark.parametrize("reason", REASONS)
def test_the_agent_it_left_drops_it_with_a_notice(reason: int) -> None:
    state = WorkbenchState(agent_id="a1", merchant_id="shop")
    state.apply(opened("s1"), T0)
    state.apply(opened("s2"), T0)
    notices = state.apply(unassigned(2, "s1", step(1, "a1", "a2", reason)), T0)
    assert [(n.text, n.bell) for n in notices] == [("s1 moved to a2", False)]
    assert set(state.sessions) == {"s2"}


def test_a_main_account_that_held_the_session_keeps_it_in_the_shop_view() -> None:
    state = WorkbenchState(agent_id=MAIN, merchant_id="shop")
    state.apply(opened("s1"), T0)
    move = step(1, MAIN, "a2", common_pb2.ASSIGNMENT_REASON_NOT_RECEPTION_AGENT)
    notices = [n for e in (unassigned(2, "s1", move), assigned(3, "s1", move)) for n in state.apply(e, T0)]
    assert [(n.text, n.bell) for n in notices] == [("s1 moved to a2", False)]
    assert state.sessions["s1"].session.assigned_agent_id == "a2"
