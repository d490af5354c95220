"""The workbench's pure parts: urgency thresholds, quick-reply shortcuts, the session state model and
the order card, without a server or a screen (the screens are tested against the service in
tests/workbench)."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console

from escalation.v1 import common_pb2, merchant_pb2
from escalation.workbench import cards, quick_replies
from escalation.workbench.state import WorkbenchState
from escalation.workbench.urgency import Urgency, countdown, urgency

T0 = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)


def ts(at: datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(at)
    return t


@pytest.mark.parametrize(
    ("window", "waited", "level"),
    [
        # R5's default 180 s: Feige's 1, 2, 3 minutes.
        (180, 0, Urgency.FRESH),
        (180, 59, Urgency.FRESH),
        (180, 60, Urgency.WAITING),
        (180, 119, Urgency.WAITING),
        (180, 120, Urgency.URGENT),
        (180, 179.5, Urgency.URGENT),
        (180, 180, Urgency.OVERDUE),
        (180, 400, Urgency.OVERDUE),
        # Thirds of whatever the window is: 120 s, and a 15 s development override.
        (120, 39, Urgency.FRESH),
        (120, 40, Urgency.WAITING),
        (120, 80, Urgency.URGENT),
        (15, 4, Urgency.FRESH),
        (15, 6, Urgency.WAITING),
        (15, 11, Urgency.URGENT),
        # A local clock behind the server's: more left than the window is still fresh.
        (180, -30, Urgency.FRESH),
    ],
)
def test_urgency_is_thirds_of_the_reply_window(window: float, waited: float, level: Urgency) -> None:
    assert urgency(window - waited, window) is level


def test_no_deadline_is_answered_and_countdown_text() -> None:
    assert urgency(None, 180) is Urgency.ANSWERED
    assert [countdown(x) for x in (None, 0, -3, 0.2, 59.01, 125, 180)] == [
        "—",
        "due",
        "due",
        "0:01",
        "1:00",
        "2:05",
        "3:00",
    ]


def template(template_id: str, title: str, text: str = "…") -> merchant_pb2.ReplyTemplate:
    return merchant_pb2.ReplyTemplate(template_id=template_id, title=title, text=text)


TEMPLATES = [
    template("t1", "Ships today!"),
    template("t2", "Shipping delayed"),
    template("t3", "已发货"),
    template("t4", "Ships today"),
    template("t5", "***"),
]


def test_shortcuts_are_unique_words_of_the_titles() -> None:
    assert [w for w, _ in quick_replies.shortcuts(TEMPLATES)] == [
        "ships-today",
        "shipping-delayed",
        "已发货",
        "ships-today-2",
        "t5",
    ]


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("/ships-today", "t1"),
        ("/SHIPS-TODAY-2", "t4"),
        ("/shipping", "t2"),
        ("/已", "t3"),
        ("/2", "t2"),
        ("/5", "t5"),
        (" /ships-today", None),  # not a shortcut: a text starting with a space
    ],
)
def test_slash_shortcuts_pick_a_template(typed: str, expected: str | None) -> None:
    got = quick_replies.resolve(typed, TEMPLATES)
    if expected is None:
        assert got == quick_replies.TextReply(typed)
    else:
        assert isinstance(got, quick_replies.TemplateReply)
        assert got.template.template_id == expected


def test_slash_alone_opens_the_picker_doubled_is_text_and_misses_say_why() -> None:
    assert quick_replies.resolve("/", TEMPLATES) == quick_replies.OpenPicker()
    assert quick_replies.resolve("//etc", TEMPLATES) == quick_replies.TextReply("/etc")
    assert quick_replies.resolve("hello", TEMPLATES) == quick_replies.TextReply("hello")
    ambiguous = quick_replies.resolve("/ship", TEMPLATES)
    assert isinstance(ambiguous, quick_replies.Unknown)
    assert "/ships-today" in ambiguous.message
    assert "/shipping-delayed" in ambiguous.message
    assert isinstance(quick_replies.resolve("/9", TEMPLATES), quick_replies.Unknown)
    assert isinstance(quick_replies.resolve("/refund", TEMPLATES), quick_replies.Unknown)


def session(
    sid: str = "s1", *, deadline: datetime | None = T0 + timedelta(seconds=30), last_seq: int = 1
) -> common_pb2.Session:
    s = common_pb2.Session(
        session_id=sid,
        merchant_id="shop",
        assigned_agent_id="a1",
        state=common_pb2.SESSION_STATE_OPEN,
        open_time=ts(T0),
        last_seq=last_seq,
        category=common_pb2.CATEGORY_REFUND,
        order_id="o-1",
    )
    s.assignment.decide_time.CopyFrom(ts(T0))
    if deadline is not None:
        s.reply_deadline.CopyFrom(ts(deadline))
    return s


def event(cursor: int, **kind: object) -> merchant_pb2.MerchantEvent:
    return merchant_pb2.MerchantEvent(cursor=cursor, **kind)  # type: ignore[arg-type]


def message(seq: int, sender: int, at: datetime, sid: str = "s1") -> common_pb2.Message:
    return common_pb2.Message(
        session_id=sid,
        seq=seq,
        sender=sender,  # type: ignore[arg-type]
        sender_id="a1" if sender == common_pb2.SENDER_MERCHANT else "pa-1",
        send_time=ts(at),
        content=common_pb2.MessageContent(text=common_pb2.Text(body=f"m{seq}")),
    )


def test_events_build_the_sessions_and_learn_the_reply_window() -> None:
    state = WorkbenchState(agent_id="a1", merchant_id="shop")
    notices = state.apply(event(1, session_id="s1", session_assigned=merchant_pb2.SessionAssigned(session=session())))
    assert [n.bell for n in notices] == [True]
    view = state.sessions["s1"]
    # The deadline counts from the open (R5): a 30 s window, so thirds of 30 s colour it.
    assert view.window_seconds == 30
    assert state.urgency(view, T0 + timedelta(seconds=9)) is Urgency.FRESH
    assert state.urgency(view, T0 + timedelta(seconds=11)) is Urgency.WAITING
    assert state.urgency(view, T0 + timedelta(seconds=21)) is Urgency.URGENT
    # The opening message itself is history: the deadline stays.
    state.apply(
        event(
            2,
            session_id="s1",
            message_added=merchant_pb2.MessageAdded(message=message(1, common_pb2.SENDER_PLATFORM, T0)),
        )
    )
    assert view.deadline == T0 + timedelta(seconds=30)
    # A merchant reply clears it; applied twice (the reply's answer, then its event) changes nothing more.
    reply = message(2, common_pb2.SENDER_MERCHANT, T0 + timedelta(seconds=5))
    state.add_message(reply)
    state.apply(event(3, session_id="s1", message_added=merchant_pb2.MessageAdded(message=reply)))
    assert view.deadline is None
    assert state.urgency(view, T0) is Urgency.ANSWERED
    assert sorted(view.messages) == [1, 2]
    # The next platform message starts a new deadline one window later.
    state.apply(
        event(
            4,
            session_id="s1",
            message_added=merchant_pb2.MessageAdded(
                message=message(3, common_pb2.SENDER_PLATFORM, T0 + timedelta(seconds=40))
            ),
        )
    )
    assert view.deadline == T0 + timedelta(seconds=70)
    assert view.unread == 2
    assert state.cursor == 4
    # The agent read it on another of its workbenches: the unread count follows its read mark.
    receipt = common_pb2.ReadReceipt(session_id="s1", seq=3, reader=common_pb2.SENDER_MERCHANT, reader_id="a1")
    state.apply(event(5, session_id="s1", read_receipt=receipt))
    assert view.unread == 0


def test_a_closed_session_never_reopens_and_keeps_its_ticket() -> None:
    state = WorkbenchState(agent_id="a1")
    state.upsert_session(session())
    ended = session(deadline=None)
    ended.state = common_pb2.SESSION_STATE_ENDED
    ended.close_reason = common_pb2.CLOSE_REASON_MERCHANT_TIMEOUT
    notices = state.apply(event(5, session_id="s1", session_closed=merchant_pb2.SessionClosed(session=ended)))
    assert notices[0].bell is False
    state.apply(event(6, session_id="s1", ticket_created=merchant_pb2.TicketCreated(session_id="s1", ticket_id="tk-1")))
    state.upsert_session(session())  # a stale answer of an earlier GetSession
    view = state.sessions["s1"]
    assert not view.is_open
    assert view.session.ticket_id == "tk-1"
    assert state.urgency(view, T0) is Urgency.ANSWERED


def test_reminders_ring_and_open_sessions_sort_by_deadline() -> None:
    state = WorkbenchState(agent_id="a1")
    state.upsert_session(session("late", deadline=T0 + timedelta(seconds=90)))
    state.upsert_session(session("soon", deadline=T0 + timedelta(seconds=10)))
    state.upsert_session(session("none", deadline=None))
    reminder = merchant_pb2.ReplyReminder(session_id="late", reply_deadline=ts(T0 + timedelta(seconds=60)))
    notices = state.apply(event(7, session_id="late", reply_reminder=reminder))
    assert [n.bell for n in notices] == [True]
    assert [v.session_id for v in state.ordered(T0)] == ["soon", "late", "none"]
    # After CURSOR_EXPIRED the open sessions are what ListSessions says.
    state.replace_open([session("soon")])
    assert set(state.sessions) == {"soon"}


def test_replayed_events_that_are_no_longer_news_ring_no_bell() -> None:
    """A workbench resuming from its cursor after a night away gets the night's events again."""
    state = WorkbenchState(agent_id="a1")
    later = T0 + timedelta(hours=8)
    assigned = merchant_pb2.SessionAssigned(session=session("old"))
    assert [n.bell for n in state.apply(event(1, session_id="old", session_assigned=assigned), later)] == [False]
    reminder = merchant_pb2.ReplyReminder(session_id="old", reply_deadline=ts(T0 + timedelta(seconds=30)))
    assert [n.bell for n in state.apply(event(2, session_id="old", reply_reminder=reminder), later)] == [False]
    # The same events live still ring.
    fresh = WorkbenchState(agent_id="a1")
    assert [n.bell for n in fresh.apply(event(1, session_id="old", session_assigned=assigned), T0)] == [True]
    assert [n.bell for n in fresh.apply(event(2, session_id="old", reply_reminder=reminder), T0)] == [True]


def render(renderable: object) -> str:
    console = Console(width=80, record=True, color_system=None, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def test_the_order_card_shows_items_amount_logistics_and_link_escaped() -> None:
    card = common_pb2.OrderCard(
        order_id="order-42",
        status="SHIPPED",
        create_time=ts(T0),
        pay_time=ts(T0 + timedelta(minutes=1)),
        paid_amount=common_pb2.Money(amount_minor=1200, currency="JPY"),
        items=[
            common_pb2.OrderItem(product_id="p-1", name="Linen shirt", spec="white, L", quantity=2),
            common_pb2.OrderItem(product_id="p-2", name="[red]Socks[/]\n\x1b[2J\u202e", quantity=1),
        ],
        logistics=common_pb2.Logistics(courier="SF Express", tracking_number="SF123"),
        detail_url="https://shop.example/orders/42",
    )
    text = render(cards.order_card(card, UTC))
    assert "Order order-42" in text
    assert "2 × Linen shirt (white, L) [p-1]" in text
    assert "1 × [red]Socks[/]\\n\\x1b[2J\\u202e [p-2]" in text
    assert "JPY 1,200 on 2026-12-01 06:01" in text
    assert "SF Express SF123" in text
    assert "https://shop.example/orders/42" in text
    assert "Created   2026-12-01 06:00" in text
    card.ClearField("pay_time")
    assert "JPY 1,200 (not paid yet)" in render(cards.order_card(card, UTC))
