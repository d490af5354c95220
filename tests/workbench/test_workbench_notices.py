"""The notice line says what is still true: a "Reply due by …" leaves it once the reply lands."""

from __future__ import annotations

from datetime import UTC, timedelta

import pytest
from textual.widgets import Static

from tests.workbench.harness import Clock, Service, running_workbench, until


@pytest.mark.parametrize("replied_from", ["this workbench", "another workbench of the agent"])
async def test_a_reply_due_notice_leaves_when_the_reply_lands(service: Service, replied_from: str) -> None:
    clock = Clock()
    async with running_workbench(service, clock) as (app, pilot):
        session = await service.open_session()
        await until(pilot, lambda: session.session_id in app.state.sessions, "the session to appear")
        clock.now = session.reply_deadline.ToDatetime(tzinfo=UTC) - timedelta(seconds=5)
        await service.run_deadlines(clock.now)
        await until(pilot, lambda: app.notice_line is not None and app.notice_line.reply_due, "the reminder")
        notice = app.query_one("#notice", Static)
        assert str(notice.render()).startswith("Reply due by")
        if replied_from == "this workbench":
            await until(pilot, lambda: app.selected == session.session_id, "the session selected")
            await pilot.press(*"On it.", "enter")
        else:
            await service.reply(session, "On it.")
        await until(pilot, lambda: app.notice_line is None, "the reminder to leave the notice line")
        await pilot.pause()
        assert str(notice.render()) == ""
