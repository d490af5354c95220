"""SPEC R2, the saturation assignment rule, as a pure function over the candidates' inputs, and why a
session moves to another agent (SPEC R13).

The service runs it inside a transaction that holds the merchant row's lock and then increments the
winner's open count, so pick + increment is one atomic step across any number of replicas. A
re-assignment of many sessions at once applies the same rule once per session (:func:`choose_in_turn`).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from fractions import Fraction

RULE_VERSION = "saturation-v1"


@dataclass(frozen=True)
class Candidate:
    agent_id: str
    open_sessions: int
    capacity: int
    last_assign_time: datetime | None

    @property
    def saturation(self) -> Fraction:
        # Exact, so 2/4 and 1/2 tie as the rule says instead of by float rounding.
        return Fraction(self.open_sessions, self.capacity)


def _key(c: Candidate) -> tuple[Fraction, int, float, str]:
    never_assigned = 0 if c.last_assign_time is None else 1
    last = c.last_assign_time.timestamp() if c.last_assign_time is not None else 0.0
    return (c.saturation, never_assigned, last, c.agent_id)


def choose(candidates: Sequence[Candidate]) -> Candidate:
    """Lowest saturation; ties: least recently assigned (never assigned first), then agent id.

    Capacity never blocks: when everyone is full the least saturated still gets the session.
    """
    if not candidates:
        raise ValueError("no candidates")
    return min(candidates, key=_key)


class MoveReason(enum.StrEnum):
    """Why a session left its agent (SPEC R13); stored as session_assignments.reason."""

    TRANSFERRED = "TRANSFERRED"
    AGENT_DISABLED = "AGENT_DISABLED"
    IM_PERMISSION_REMOVED = "IM_PERMISSION_REMOVED"
    # Designation removed, or no longer the main account that receives while nobody is designated.
    NOT_RECEPTION_AGENT = "NOT_RECEPTION_AGENT"


def why_ineligible(*, disabled: bool, im_permission: bool) -> MoveReason:
    """The reason a re-assignment records for an agent that is no longer eligible (SPEC R1, R13):
    the first of disabled, no IM permission, not a reception agent."""
    if disabled:
        return MoveReason.AGENT_DISABLED
    if not im_permission:
        return MoveReason.IM_PERMISSION_REMOVED
    return MoveReason.NOT_RECEPTION_AGENT


# The instants choose_in_turn gives successive picks: apart, so the least recently assigned is exact.
_TICK = timedelta(microseconds=1)


@dataclass(frozen=True)
class Pick:
    """One pick of :func:`choose_in_turn`: the winner and every candidate as the rule saw them."""

    winner: Candidate
    seen: tuple[Candidate, ...]


def choose_in_turn(candidates: Sequence[Candidate], n: int, now: datetime) -> tuple[list[Pick], list[Candidate]]:
    """:func:`choose` applied to ``n`` sessions one after the other (SPEC R2, R13 re-assignment).

    After each pick the winner counts one more open session and becomes the most recently assigned
    (at ``now``, ``now`` + 1 µs, ...), exactly as ``n`` separate OpenSession calls would leave it.
    Returns the picks in order and the candidates as they stand afterwards. Raises ValueError when
    ``n`` > 0 and there are no candidates.
    """
    current = {c.agent_id: c for c in candidates}
    picks: list[Pick] = []
    for i in range(n):
        seen = tuple(sorted(current.values(), key=lambda c: c.agent_id))
        winner = choose(seen)
        picks.append(Pick(winner, seen))
        current[winner.agent_id] = replace(
            winner, open_sessions=winner.open_sessions + 1, last_assign_time=now + i * _TICK
        )
    return picks, sorted(current.values(), key=lambda c: c.agent_id)
