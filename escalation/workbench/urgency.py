"""How urgent a waiting session is, from the time left before its reply deadline (SPEC R5).

Feige's workbench colours a waiting session by how long it has waited: 1, 2, 3 minutes against its
3-minute reply rule. The merchant's reply timeout here is 120–180 s (R5) or a development override, so
the thresholds are thirds of the *window* (the reply timeout that set the deadline) rather than fixed
minutes; with the default 180 s they are exactly Feige's 1 and 2 minutes, and the third is the ticket:

    waited < 1/3 of the window      FRESH    green
    1/3 ≤ waited < 2/3              WAITING  yellow
    2/3 ≤ waited, deadline ahead    URGENT   red
    deadline passed, still open     OVERDUE  red, reversed (the deadline worker is about to close it)
    no deadline (answered)          ANSWERED dim
"""

from __future__ import annotations

import enum
import math

# R5's default reply timeout, used until the workbench has seen one deadline set (see state.py).
DEFAULT_REPLY_WINDOW_SECONDS = 180.0


class Urgency(enum.Enum):
    ANSWERED = "answered"
    FRESH = "fresh"
    WAITING = "waiting"
    URGENT = "urgent"
    OVERDUE = "overdue"


# Rich styles; the thresholds above are the contract, the colours are the usual traffic light.
STYLES: dict[Urgency, str] = {
    Urgency.ANSWERED: "dim",
    Urgency.FRESH: "green",
    Urgency.WAITING: "yellow",
    Urgency.URGENT: "bold red",
    Urgency.OVERDUE: "bold reverse red",
}


def urgency(remaining_seconds: float | None, window_seconds: float) -> Urgency:
    """The level of a session with ``remaining_seconds`` until its deadline (None: no deadline) out of
    a ``window_seconds`` reply timeout (> 0). Pure, total: a remaining time above the window (a clock
    ahead of the server's) counts as FRESH."""
    if remaining_seconds is None:
        return Urgency.ANSWERED
    if remaining_seconds <= 0:
        return Urgency.OVERDUE
    waited = window_seconds - remaining_seconds
    if waited < window_seconds / 3:
        return Urgency.FRESH
    if waited < 2 * window_seconds / 3:
        return Urgency.WAITING
    return Urgency.URGENT


def countdown(remaining_seconds: float | None) -> str:
    """``"2:05"`` left (minutes:seconds, rounded up so 0:00 means due), ``"due"`` once passed, ``"—"``
    without a deadline."""
    if remaining_seconds is None:
        return "—"
    if remaining_seconds <= 0:
        return "due"
    whole = math.ceil(remaining_seconds)
    return f"{whole // 60}:{whole % 60:02d}"
