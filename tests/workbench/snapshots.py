"""Text captures of the workbench's screens compared with the files in tests/workbench/snapshots/.

A capture is the screen as plain text (``escalation.workbench.app.screen_text``: no colours, which the
colour test checks separately). What differs between runs is replaced first: the session and ticket
ids and the clock times of messages. A missing file is written and the test fails, asking for a look
at it: delete a file to re-record it after an intended change of the screen.
"""

from __future__ import annotations

import re
from pathlib import Path

from escalation.v1 import common_pb2

DIRECTORY = Path(__file__).with_name("snapshots")


def normalise(text: str, sessions: list[common_pb2.Session], ticket_id: str | None = None) -> str:
    """The ids become ``<session-id-1>`` and, shortened, ``SSSSSSS1`` (as wide as the real ones)."""
    for n, session in enumerate(sessions, start=1):
        text = text.replace(session.session_id, f"<session-id-{n}>").replace(session.session_id[:8], f"SSSSSSS{n}")
    if ticket_id:
        text = text.replace(ticket_id, "<ticket-id>")
    return re.sub(r"\b\d\d:\d\d:\d\d\b", "hh:mm:ss", text)


def assert_matches_snapshot(
    name: str, text: str, sessions: list[common_pb2.Session], *, ticket_id: str | None = None
) -> None:
    path = DIRECTORY / f"{name}.txt"
    shown = normalise(text, sessions, ticket_id) + "\n"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        path.write_text(shown)
        raise AssertionError(f"wrote a new snapshot {path}: check it and run again")
    assert shown == path.read_text(), f"the screen differs from {path}:\n{shown}"
