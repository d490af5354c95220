"""The workbench driven headless by Textual's pilot against the real service (issue 15 "Done when"):
a session arrives with a countdown and a bell, its colour turns as the deadline nears, a quick reply
lands in the session, and a timeout turns it read-only with its ticket id.

The workbench's clock is the test's (``Clock``) and the deadline worker runs one round with a given
``now``: nothing waits for wall time, so nothing depends on how loaded the machine is.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from rich.color_triplet import ColorTriplet
from rich.console import Console
from textual.widgets import Input

from escalation.client import FileCursorStore
from escalation.devenv import seed
from escalation.v1 import common_pb2, platform_pb2, platform_pb2_grpc
from escalation.workbench.app import Workbench, screen_renderable, screen_text
from escalation.workbench.state import SessionView
from tests.workbench.harness import PLATFORM, REPLY_TIMEOUT_SECONDS, SIZE, Clock, Service, running_workbench, until
from tests.workbench.snapshots import assert_matches_snapshot

EMPTY = SessionView(common_pb2.Session())


def opened_at(session: common_pb2.Session) -> datetime:
    """Half a second after the open: the deadline counts from the opening message, committed a few
    milliseconds after open_time, so the countdown (rounded up) reads the whole timeout, 0:30."""
    return session.open_time.ToDatetime(tzinfo=UTC) + timedelta(seconds=0.5)


def countdown_colour(app: Workbench, countdown: str) -> ColorTriplet:
    """The colour the session list draws ``countdown`` in, as the terminal would get it."""
    console = Console(width=SIZE[0], file=io.StringIO(), color_system="truecolor", force_terminal=True)
    for segment in console.render(screen_renderable(app)):
        if segment.text.strip() == countdown and segment.style and segment.style.color:
            return segment.style.color.get_truecolor()
    raise AssertionError(f"{countdown!r} is not on the screen:\n{screen_text(app)}")


def hue(colour: ColorTriplet) -> str:
    """green, yellow or red, whatever shade the theme gives them."""
    r, g, b = colour
    if g > r and g > b:
        return "green"
    if r > 128 and g > 128 and b < r:
        return "yellow"
    if r > g and r > b:
        return "red"
    return f"other {colour.hex}"


async def test_an_assigned_session_appears_with_a_countdown_a_bell_and_its_order_card(service: Service) -> None:
    clock = Clock()
    async with running_workbench(service, clock) as (app, pilot):
        session = await service.open_session()
        clock.now = opened_at(session)
        await until(pilot, lambda: session.session_id in app.state.sessions, "the session to appear")
        await until(pilot, lambda: len(app.state.sessions[session.session_id].messages) == 2, "its messages")
        app.redraw()
        await pilot.pause()
        assert app.bells == 1
        assert [n.bell for n in app.notices] == [True]
        assert app.notices[0].text.startswith(f"New session {session.session_id[:8]}")
        text = screen_text(app)
        assert f"0:{REPLY_TIMEOUT_SECONDS:02.0f} {session.session_id[:8]}" in text
        assert "CNY 258.00" in text
        assert_matches_snapshot("assigned", text, [session])
        # Viewing it sent a read receipt up to its newest message (the opening text and card).
        assert (await service.merchant_read_seq(session.session_id)) == 2


async def test_the_countdown_turns_yellow_then_red_as_the_deadline_nears(service: Service) -> None:
    clock = Clock()
    async with running_workbench(service, clock) as (app, pilot):
        session = await service.open_session()
        await until(pilot, lambda: session.session_id in app.state.sessions, "the session to appear")
        seen = []
        # Thirds of the 30 s window (the dev override): fresh, waiting, urgent, then due.
        for waited, countdown in ((1, "0:29"), (12, "0:18"), (22, "0:08"), (31, "due")):
            clock.now = opened_at(session) + timedelta(seconds=waited)
            app.redraw()
            await pilot.pause()
            seen.append(hue(countdown_colour(app, countdown)))
        assert seen == ["green", "yellow", "red", "red"]


async def test_a_quick_reply_lands_in_the_session_once(service: Service) -> None:
    clock = Clock()
    async with running_workbench(service, clock) as (app, pilot):
        session = await service.open_session()
        clock.now = opened_at(session)
        await until(pilot, lambda: session.session_id in app.state.sessions, "the session to appear")
        await until(pilot, lambda: app.focused is app.query_one("#reply", Input), "the reply box")
        await pilot.press(*"/ships", "enter")  # a shortcut: the unambiguous start of /ships-today
        await until(pilot, lambda: len(app.state.sessions[session.session_id].messages) == 3, "the reply")
        await pilot.press("ctrl+t", "down", "enter")  # the picker: the second template
        await until(pilot, lambda: len(app.state.sessions[session.session_id].messages) == 4, "the second")
        stored = await service.messages(session.session_id)
        templates = {t.title: t.template_id for t in await service.templates()}
        assert len(templates) == len(seed.DEMO_TEMPLATES)  # seeded twice, kept once
        texts = dict(seed.DEMO_TEMPLATES)
        assert [(m.sender, m.template_id, m.content.text.body) for m in stored[2:]] == [
            (common_pb2.SENDER_MERCHANT, templates["Ships today"], texts["Ships today"]),
            (common_pb2.SENDER_MERCHANT, templates["Refund approved"], texts["Refund approved"]),
        ]
        # The MessageAdded events of both replies arrived too; each shows once, and no deadline is due.
        await until(pilot, lambda: (app.state.cursor or 0) >= 5, "the reply events")
        app.redraw()
        await pilot.pause()
        text = screen_text(app)
        assert text.count("Yes, it ships today.") == 1
        assert [m.seq for m in app.state.sessions[session.session_id].messages.values()] == [1, 2, 3, 4]
        assert "answered; no reply due" in text
        assert_matches_snapshot("answered", text, [session])


async def test_a_timeout_turns_the_session_read_only_with_its_ticket_id(service: Service) -> None:
    clock = Clock()
    async with running_workbench(service, clock) as (app, pilot):
        session = await service.open_session()
        await until(pilot, lambda: session.session_id in app.state.sessions, "the session to appear")
        deadline = session.reply_deadline.ToDatetime(tzinfo=UTC)
        # The reminder (due at once: it comes 60 s before a 30 s deadline) rings the bell again.
        clock.now = deadline - timedelta(seconds=5)
        await service.run_deadlines(clock.now)
        await until(pilot, lambda: app.bells == 2, "the reminder's bell")
        assert app.notices[-1].text.startswith("Reply due by")
        clock.now = deadline + timedelta(seconds=1)
        await service.run_deadlines(clock.now)
        await until(pilot, lambda: app.state.sessions[session.session_id].session.ticket_id != "", "the ticket")
        ticket_id = (await service.session(session.session_id)).ticket_id
        assert app.state.sessions[session.session_id].session.ticket_id == ticket_id
        assert not app.state.sessions[session.session_id].is_open
        app.redraw()
        await pilot.pause()
        text = screen_text(app)
        assert "│Closed: timed out: no reply before the deadline. Read-only." in text
        assert f"│Ticket {ticket_id}" in text
        assert app.query_one("#reply", Input).disabled
        assert_matches_snapshot("timed-out", text, [session], ticket_id=ticket_id)


async def test_the_main_account_sees_the_whole_shop(service: Service) -> None:
    clock = Clock()
    async with running_workbench(service, clock, seed.DEMO_MAIN_ACCOUNT) as (app, pilot):
        timed_out = await service.open_session()
        await service.run_deadlines(timed_out.reply_deadline.ToDatetime(tzinfo=UTC) + timedelta(seconds=1))
        answered = await service.open_session(
            "Is the tea set dishwasher safe?", order_id="order-43", category=common_pb2.CATEGORY_PRODUCT
        )
        waiting = await service.open_session(
            "Tracking has not moved for three days. Can you check?",
            order_id="order-44",
            category=common_pb2.CATEGORY_LOGISTICS,
        )
        # R2: each went to the least saturated demo agent, so the three agents have one each.
        assert [s.assigned_agent_id for s in (timed_out, answered, waiting)] == list(seed.DEMO_AGENTS)
        await service.reply(answered, "Yes, it is dishwasher safe.")
        await until(pilot, lambda: len(app.state.sessions) == 3, "the shop's three sessions")
        await until(pilot, lambda: app.state.sessions[answered.session_id].deadline is None, "the answer")
        await until(pilot, lambda: app.state.sessions[timed_out.session_id].session.ticket_id != "", "the ticket")
        clock.now = opened_at(waiting)
        app.redraw()
        await pilot.pause()
        ticket_id = (await service.session(timed_out.session_id)).ticket_id
        text = screen_text(app)
        for agent in seed.DEMO_AGENTS:
            assert f"→ {agent}" in text
        assert_matches_snapshot("main-account", text, [timed_out, answered, waiting], ticket_id=ticket_id)
        # A click on the second row (two lines each) opens the answered session.
        await pilot.click("#sessions", offset=(3, 2))
        await until(pilot, lambda: app.selected == answered.session_id, "the clicked session")
        assert "Yes, it is dishwasher safe." in screen_text(app)


async def test_a_server_restart_loses_and_repeats_nothing(service: Service, tmp_path: Path) -> None:
    cursor_file = tmp_path / "demo-agent-1.cursor"
    clock = Clock()
    async with running_workbench(service, clock, cursor_store=FileCursorStore(cursor_file)) as (app, pilot):
        session = await service.open_session()
        await until(pilot, lambda: len(app.state.sessions.get(session.session_id, EMPTY).messages) == 2, "it")
        view = app.state.sessions[session.session_id]

        async def follow_ups(other_replica: grpc.aio.Channel) -> None:
            await until(pilot, lambda: app.connection == "reconnecting", "the workbench to notice")
            platform = platform_pb2_grpc.PlatformServiceStub(other_replica)
            for n in (1, 2, 3):
                await platform.SendMessage(
                    platform_pb2.SendMessageRequest(
                        session_id=session.session_id,
                        client_msg_id=f"follow-up-{n}",
                        content=common_pb2.MessageContent(text=common_pb2.Text(body=f"Follow-up {n}?")),
                    ),
                    metadata=PLATFORM,
                )

        await service.restart(follow_ups)
        await until(pilot, lambda: len(view.messages) == 5, "the follow-ups sent while it was down")
        await pilot.press(*"/checking", "enter")
        await until(pilot, lambda: len(view.messages) == 6, "the reply after the restart")
        stored = await service.messages(session.session_id)
        assert [m.seq for m in stored] == sorted(view.messages) == [1, 2, 3, 4, 5, 6]
        app.redraw()
        await pilot.pause()
        text = screen_text(app)
        for n in (1, 2, 3):
            assert text.count(f"Follow-up {n}?") == 1
        assert app.bells == 1  # the SessionAssigned was not delivered again after the reconnect
        assert app.connection == "connected"
