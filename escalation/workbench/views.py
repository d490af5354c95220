"""The workbench's panes as Rich renderables computed from the state (no Textual, no I/O)."""

from __future__ import annotations

from datetime import datetime, tzinfo

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from escalation.domain.display import one_line
from escalation.workbench import cards
from escalation.workbench.state import SessionView, WorkbenchState, close_reason_text, describe
from escalation.workbench.urgency import STYLES, Urgency, countdown


def session_list(
    state: WorkbenchState, now: datetime, selected: str | None
) -> tuple[RenderableType, list[tuple[str, int]]]:
    """One row per session: the countdown coloured by urgency (escalation.workbench.urgency), the
    session, unread platform messages, and the assigned agent when it is not this one (main account).
    Also returns each row's session id and height in lines, top to bottom (what a click hits)."""
    views = state.ordered(now)
    if not views:
        return Text("No open sessions. New ones appear here with a bell.", style="dim"), []
    table = Table.grid(padding=(0, 1))
    table.add_column(width=1)
    table.add_column(width=6, justify="right")
    table.add_column(no_wrap=True, overflow="ellipsis")
    rows = []
    for view in views:
        marker = Text("▶" if view.session_id == selected else " ", style="bold")
        label = _label(state, view)
        table.add_row(marker, _clock(state, view, now), label)
        rows.append((view.session_id, len(label.split("\n"))))
    return table, rows


def _clock(state: WorkbenchState, view: SessionView, now: datetime) -> Text:
    if not view.is_open:
        return Text("ticket" if view.session.ticket_id else "closed", style="dim")
    level = state.urgency(view, now)
    return Text(countdown(state.remaining(view, now)), style=STYLES[level])


def _label(state: WorkbenchState, view: SessionView) -> Text:
    """Two lines: the session, then what is new in it and whose it is (when not this agent's)."""
    text = Text(describe(view.session), style="" if view.is_open else "dim", no_wrap=True, overflow="ellipsis")
    details = Text()
    if view.unread:
        details.append(f"{view.unread} new  ", style="bold")
    agent = view.session.assigned_agent_id
    if agent and agent != state.agent_id:
        details.append(f"→ {one_line(agent)}", style="dim")
    if details:
        text.append("\n")
        text.append_text(details)
    return text


def conversation(
    state: WorkbenchState,
    view: SessionView,
    now: datetime,
    tz: tzinfo | None,
    template_titles: dict[str, str] | None = None,
) -> RenderableType:
    """The session's header (countdown or how it ended) and its messages in seq order."""
    s = view.session
    head = Text(describe(s), style="bold")
    if view.is_open:
        level = state.urgency(view, now)
        remaining = state.remaining(view, now)
        if level is Urgency.ANSWERED:
            head.append("   answered; no reply due", style=STYLES[level])
        else:
            head.append(f"   reply within {countdown(remaining)}", style=STYLES[level])
    parts: list[RenderableType] = [head, Text(f"platform agent {one_line(s.platform_agent_id)}", style="dim")]
    for seq in sorted(view.messages):
        parts.append(Text(""))
        parts.append(
            cards.message(
                view.messages[seq],
                tz,
                me=state.agent_id,
                template_titles=template_titles,
            )
        )
    return Group(*parts)


def closed_banner(view: SessionView) -> Text:
    """Why a closed session ended, then its ticket; the session is read-only (SPEC R6)."""
    s = view.session
    text = Text(f"Closed: {close_reason_text(s.close_reason)}. Read-only.", style="bold")
    if s.ticket_id:
        text.append(f"\nTicket {s.ticket_id}")
    return text


def status_line(state: WorkbenchState, connection: str, target: str) -> Text:
    """``● connected · cursor 42 · 3 open · demo-agent-1@demo-shop · localhost:50051``."""
    connected = connection == "connected"
    line = Text("● " if connected else "○ ", style="green" if connected else "yellow")
    line.append(connection)
    line.append(f" · cursor {state.cursor if state.cursor is not None else '—'}")
    line.append(f" · {sum(1 for v in state.sessions.values() if v.is_open)} open")
    line.append(f" · {one_line(state.agent_id)}@{one_line(state.merchant_id)} · {one_line(target)}", style="dim")
    return line
