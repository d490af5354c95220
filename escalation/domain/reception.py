"""SPEC R1, the reception-agent rule, as a pure function (the SQL view agent_eligibility agrees)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_CAPACITY = 10
MIN_CAPACITY, MAX_CAPACITY = 1, 50
MIN_REPLY_TIMEOUT_SECONDS, MAX_REPLY_TIMEOUT_SECONDS = 120, 180
DEFAULT_REPLY_TIMEOUT_SECONDS = 180
# SPEC R12: an answered session closes after this long without a message (5–120 min, default 30 min).
MIN_IDLE_TIMEOUT_SECONDS, MAX_IDLE_TIMEOUT_SECONDS = 5 * 60, 120 * 60
DEFAULT_IDLE_TIMEOUT_SECONDS = 30 * 60
MAX_RECEPTION_AGENTS = 100


@dataclass(frozen=True)
class AgentFlags:
    agent_id: str
    main_account: bool
    reception_agent: bool
    im_permission: bool
    disabled: bool


def eligible(agents: Iterable[AgentFlags]) -> set[str]:
    """Ids of the agents that may receive the next platform session.

    Eligible iff designated (or the main account while nobody is designated), with IM permission,
    not disabled. Online status is deliberately not considered (seed rule).
    """
    agents = list(agents)
    anyone_designated = any(a.reception_agent for a in agents)
    return {
        a.agent_id
        for a in agents
        if a.im_permission and not a.disabled and (a.reception_agent or (a.main_account and not anyone_designated))
    }
