"""SPEC R2, the saturation assignment rule, as a pure function over the candidates' inputs.

The service runs it inside a transaction that holds the merchant row's lock and then increments the
winner's open count, so pick + increment is one atomic step across any number of replicas.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
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
