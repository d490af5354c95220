"""What the workbench knows: the sessions it shows, keyed by id, updated by merchant events.

Pure and synchronous (no gRPC, no Textual): the app feeds it ``MerchantEvent``s from the SDK and
answers of unary calls, and draws what it holds. Every update is idempotent (a session by id, a message
by seq), so an event and the unary answer describing the same change never show twice; the SDK already
delivers each event once (docs/clients.md), the workbench adds no duplicates of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from escalation.domain.display import one_line
from escalation.v1 import common_pb2, merchant_pb2
from escalation.workbench.urgency import DEFAULT_REPLY_WINDOW_SECONDS, Urgency, urgency

OPEN = common_pb2.SESSION_STATE_OPEN
ENDED = common_pb2.SESSION_STATE_ENDED
# A learned window outside this is not a reply timeout (R5: 120–180 s; the dev override 0.1–3600 s).
_MAX_WINDOW_SECONDS = 3600.0

CLOSE_REASONS: dict[int, str] = {
    common_pb2.CLOSE_REASON_RESOLVED: "resolved by the platform",
    common_pb2.CLOSE_REASON_PLATFORM_ESCALATED: "escalated by the platform",
    common_pb2.CLOSE_REASON_MERCHANT_TIMEOUT: "timed out: no reply before the deadline",
}


def close_reason_text(reason: int) -> str:
    """A person's words for a CloseReason; a reason newer than this client shows its enum name."""
    return CLOSE_REASONS.get(reason) or enum_words(common_pb2.CloseReason.Name, reason, "CLOSE_REASON_")


def enum_words(name_of: Callable[[Any], str], value: int, prefix: str) -> str:
    """``CATEGORY_ORDER_OPERATION`` → ``"order operation"``; a value newer than this client → ``"#7"``."""
    try:
        return name_of(value).removeprefix(prefix).lower().replace("_", " ")
    except ValueError:
        return f"#{value}"


@dataclass(frozen=True)
class Notice:
    """Something the agent must notice now: shown as a toast, with the terminal bell when ``bell``."""

    session_id: str
    text: str
    bell: bool
    # A ReplyReminder's "Reply due by …": stale once a merchant reply to the session lands.
    reply_due: bool = False


@dataclass
class SessionView:
    """One session as the workbench shows it."""

    session: common_pb2.Session
    messages: dict[int, common_pb2.Message] = field(default_factory=dict)  # by seq
    # The highest seq this agent sent a read receipt for.
    read_seq: int = 0
    # When the platform message the pending deadline counts from was sent (R5); None: unknown or none.
    waiting_since: datetime | None = None
    # Seconds between waiting_since and the deadline, once both were seen.
    window_seconds: float | None = None

    @property
    def session_id(self) -> str:
        return self.session.session_id

    @property
    def is_open(self) -> bool:
        return self.session.state != ENDED

    @property
    def deadline(self) -> datetime | None:
        s = self.session
        return s.reply_deadline.ToDatetime(tzinfo=UTC) if s.HasField("reply_deadline") and self.is_open else None

    @property
    def unread(self) -> int:
        """Platform messages after the last read receipt."""
        return sum(
            1 for seq, m in self.messages.items() if seq > self.read_seq and m.sender == common_pb2.SENDER_PLATFORM
        )


class WorkbenchState:
    """The sessions of one merchant agent (the main account: of the whole shop, SPEC R9)."""

    def __init__(self, *, agent_id: str = "", merchant_id: str = "") -> None:
        self.agent_id = agent_id
        self.merchant_id = merchant_id
        self.sessions: dict[str, SessionView] = {}
        # The cursor of the last event applied (shown in the status line); None before the first.
        self.cursor: int | None = None
        # The merchant's reply timeout as last observed (R5: per merchant); R5's default until then.
        self.reply_window_seconds = DEFAULT_REPLY_WINDOW_SECONDS
        # (session id, step) of every move told already (see _first_word_on_move).
        self._moves_told: set[tuple[str, int]] = set()

    # -- updates ---------------------------------------------------------------------------------

    def upsert_session(self, session: common_pb2.Session) -> SessionView:
        """Takes a session from an event or a unary answer, unless it is older than what is known: an
        ended session never reopens, and a session with fewer messages than known is stale."""
        view = self.sessions.get(session.session_id)
        if view is None:
            view = self.sessions[session.session_id] = SessionView(session=_copy(session))
        else:
            known = view.session
            stale = (known.state == ENDED and session.state != ENDED) or session.last_seq < known.last_seq
            if not stale:
                if not session.ticket_id and known.ticket_id:
                    session = _copy(session)
                    session.ticket_id = known.ticket_id
                view.session = _copy(session)
        self._learn_window(view)
        return view

    def add_message(self, message: common_pb2.Message) -> SessionView | None:
        """Records a message (from MessageAdded, ListMessages or a reply's answer); the deadline moves
        by R5: a merchant message clears it, a platform message with none pending starts one."""
        view = self.sessions.get(message.session_id)
        if view is None:
            return None  # the app fetches the session, then its messages
        if message.seq in view.messages:
            return view  # known already: the same message twice must not move the deadline twice
        view.messages[message.seq] = _copy(message)
        s = view.session
        newest = message.seq > s.last_seq
        s.last_seq = max(s.last_seq, message.seq)
        if not newest:
            return view  # history (ListMessages): the session already reflects it
        if not view.is_open:
            return view
        if message.sender == common_pb2.SENDER_MERCHANT:
            s.ClearField("reply_deadline")
            view.waiting_since = None
        elif message.sender == common_pb2.SENDER_PLATFORM and not s.HasField("reply_deadline"):
            sent = message.send_time.ToDatetime(tzinfo=UTC)
            view.waiting_since = sent
            window = view.window_seconds or self.reply_window_seconds
            s.reply_deadline.FromNanoseconds(message.send_time.ToNanoseconds() + int(window * 1e9))
        return view

    def apply(self, event: merchant_pb2.MerchantEvent, now: datetime | None = None) -> list[Notice]:
        """Applies one event of the merchant's log (SPEC R8) and returns what to tell the agent:
        SessionAssigned and ReplyReminder ring the bell; a closed session or a ticket is a quiet notice.
        A move (R13: SessionAssigned with a step, SessionUnassigned) rings only for the agent receiving
        it; the agent it left drops it, the main account is told where it went (docs/clients.md).

        With ``now``, an event that is news no more rings no bell: a session whose deadline passed, a
        reminder of one, or of a session known to be closed (a workbench resuming after a night away
        replays the night's events from its cursor; SPEC R8 delivers each, the bell need not)."""
        self.cursor = event.cursor
        kind = event.WhichOneof("kind")
        notices: list[Notice] = []
        if kind == "session_assigned":
            assigned = event.session_assigned
            if _is_move(assigned.step):
                notices.extend(self._moved_in(assigned.session, assigned.step, now))
            else:
                known = assigned.session.session_id in self.sessions
                view = self.upsert_session(assigned.session)
                if not known and view.deadline is not None:
                    # Opened with platform messages: the deadline counts from the open (R5).
                    view.waiting_since = assigned.session.open_time.ToDatetime(tzinfo=UTC)
                    self._learn_window(view)
                if view.is_open:
                    live = now is None or view.deadline is None or view.deadline > now
                    notices.append(Notice(view.session_id, f"New session {describe(view.session)}", bell=live))
        elif kind == "session_unassigned":
            notices.extend(self._moved_out(event.session_unassigned.session, event.session_unassigned.step))
        elif kind == "message_added":
            self.add_message(event.message_added.message)
        elif kind == "reply_reminder":
            view_or_none = self.sessions.get(event.reply_reminder.session_id)
            if view_or_none is not None and view_or_none.is_open:
                view_or_none.session.reply_deadline.CopyFrom(event.reply_reminder.reply_deadline)
                self._learn_window(view_or_none)
            deadline = event.reply_reminder.reply_deadline.ToDatetime(tzinfo=UTC)
            live = (view_or_none is None or view_or_none.is_open) and (now is None or deadline > now)
            notices.append(
                Notice(
                    event.reply_reminder.session_id,
                    f"Reply due by {deadline:%H:%M:%S} UTC: session {short_id(event.reply_reminder.session_id)}",
                    bell=live,
                    reply_due=True,
                )
            )
        elif kind == "session_closed":
            view = self.upsert_session(event.session_closed.session)
            notices.append(Notice(view.session_id, f"Session closed: {closed_line(view.session)}", bell=False))
        elif kind == "ticket_created":
            view_or_none = self.sessions.get(event.ticket_created.session_id)
            if view_or_none is not None:
                view_or_none.session.ticket_id = event.ticket_created.ticket_id
            notices.append(
                Notice(
                    event.ticket_created.session_id,
                    f"Ticket {event.ticket_created.ticket_id} for session {short_id(event.ticket_created.session_id)}",
                    bell=False,
                )
            )
        elif kind == "read_receipt":
            receipt = event.read_receipt
            view_or_none = self.sessions.get(receipt.session_id)
            if view_or_none is not None and receipt.reader_id == self.agent_id:
                # This agent's read mark, maybe from another of its workbenches: unread counts agree.
                view_or_none.read_seq = max(view_or_none.read_seq, receipt.seq)
        return notices

    def _moved_in(
        self, session: common_pb2.Session, step: common_pb2.AssignmentStep, now: datetime | None
    ) -> list[Notice]:
        """A SessionAssigned of a move (R13). The receiving agent gets new work (bell, unless no longer
        news); the main account, which saw the session already, only learns where it went."""
        first_word = self._first_word_on_move(session.session_id, step)
        view = self.upsert_session(session)
        if not first_word or not view.is_open:
            return []
        if step.to_agent_id == self.agent_id:
            live = now is None or view.deadline is None or view.deadline > now
            text = f"Transferred to you from {one_line(step.from_agent_id)}: {describe(view.session)}"
            return [Notice(view.session_id, text, bell=live)]
        return [Notice(view.session_id, moved_line(session.session_id, step.to_agent_id), bell=False)]

    def _moved_out(self, session: common_pb2.Session, step: common_pb2.AssignmentStep) -> list[Notice]:
        """A SessionUnassigned (R13): the agent it left drops it from its list (the session is no longer
        its own to answer); the main account keeps it, now with its new agent."""
        first_word = self._first_word_on_move(session.session_id, step)
        if step.from_agent_id == self.agent_id and step.to_agent_id != self.agent_id:
            self.sessions.pop(session.session_id, None)
        else:
            self.upsert_session(session)
        if not first_word:
            return []
        return [Notice(session.session_id, moved_line(session.session_id, step.to_agent_id), bell=False)]

    def _first_word_on_move(self, session_id: str, step: common_pb2.AssignmentStep) -> bool:
        """True the first time this move is seen: the main account gets both a SessionUnassigned and a
        SessionAssigned for it, and one notice is enough."""
        key = (session_id, step.step)
        if key in self._moves_told:
            return False
        self._moves_told.add(key)
        return True

    def replace_open(self, sessions: list[common_pb2.Session]) -> None:
        """After CURSOR_EXPIRED (docs/clients.md): the open sessions are exactly ``sessions`` now; a
        session shown as open but absent ended meanwhile and is dropped (its ending was in the gap)."""
        listed = {s.session_id for s in sessions}
        for session_id in [k for k, v in self.sessions.items() if v.is_open and k not in listed]:
            del self.sessions[session_id]
        for session in sessions:
            self.upsert_session(session)

    # -- reading ---------------------------------------------------------------------------------

    def remaining(self, view: SessionView, now: datetime) -> float | None:
        """Seconds until the session's reply deadline (negative once passed); None without one."""
        deadline = view.deadline
        return None if deadline is None else (deadline - now).total_seconds()

    def urgency(self, view: SessionView, now: datetime) -> Urgency:
        """The session's colour level (escalation.workbench.urgency)."""
        return urgency(self.remaining(view, now), view.window_seconds or self.reply_window_seconds)

    def ordered(self, now: datetime) -> list[SessionView]:
        """Open sessions first, nearest deadline first (none: last, oldest first); then ended ones,
        the latest ending first."""

        def key(view: SessionView) -> tuple[int, float, float]:
            s = view.session
            if not view.is_open:
                return (2, -s.close_time.ToNanoseconds() / 1e9, 0.0)
            remaining = self.remaining(view, now)
            opened = s.open_time.ToNanoseconds() / 1e9
            return (0, remaining, opened) if remaining is not None else (1, opened, 0.0)

        return sorted(self.sessions.values(), key=key)

    def _learn_window(self, view: SessionView) -> None:
        deadline = view.deadline
        if deadline is None or view.waiting_since is None:
            return
        window = (deadline - view.waiting_since).total_seconds()
        if 0 < window <= _MAX_WINDOW_SECONDS:
            view.window_seconds = window
            self.reply_window_seconds = window


def _is_move(step: common_pb2.AssignmentStep) -> bool:
    """Whether a SessionAssigned is a transfer or re-assignment (SPEC R13: step 1, 2, …), not the
    assignment made when the session opened (the step is unset then; Session.assignment is always the
    decision at open, whatever moved later, so it cannot tell)."""
    return step.step > 0


_M = TypeVar("_M", common_pb2.Session, common_pb2.Message)


def _copy(message: _M) -> _M:
    copy = type(message)()
    copy.CopyFrom(message)
    return copy


def short_id(session_id: str) -> str:
    """The first 8 characters of a session UUID: enough to tell an agent's sessions apart."""
    return session_id[:8]


def describe(session: common_pb2.Session) -> str:
    """``"3f2a9c1e · order operation · order-42"``: the id, the category and the order (escaped)."""
    category = enum_words(common_pb2.Category.Name, session.category, "CATEGORY_")
    parts = [short_id(session.session_id), category]
    if session.order_id:
        parts.append(one_line(session.order_id))
    return " · ".join(parts)


def moved_line(session_id: str, agent_id: str) -> str:
    """``"3f2a9c1e moved to agent-2"``: where a transferred or re-assigned session went (R13)."""
    return f"{short_id(session_id)} moved to {one_line(agent_id)}"


def closed_line(session: common_pb2.Session) -> str:
    """``"timed out: no reply before the deadline · ticket 7d…"``: why it ended, and its ticket."""
    line = close_reason_text(session.close_reason)
    return f"{line} · ticket {session.ticket_id}" if session.ticket_id else line
