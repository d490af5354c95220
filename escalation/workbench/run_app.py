"""Wires the app to the SDK: a ``MerchantClient`` with a file cursor store, behind ``SdkBackend``."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from escalation.client import ConnectionState, CursorExpired, FileCursorStore, MerchantClient, TlsOptions
from escalation.v1 import common_pb2, merchant_pb2
from escalation.workbench.app import EXIT_REFUSED, Workbench
from escalation.workbench.backend import CursorGap
from escalation.workbench.state import WorkbenchState


class SdkBackend:
    """The workbench's ``Backend`` on ``escalation.client.MerchantClient`` (public API only)."""

    def __init__(self, client: MerchantClient) -> None:
        self.client = client

    async def events(self) -> AsyncIterator[merchant_pb2.MerchantEvent | CursorGap]:
        async for item in self.client.events():
            yield CursorGap(item.sessions) if isinstance(item, CursorExpired) else item

    async def open_sessions(self) -> list[common_pb2.Session]:
        sessions: list[common_pb2.Session] = []
        page_token = ""
        while True:
            page = await self.client.list_sessions(state=common_pb2.SESSION_STATE_OPEN, page_token=page_token)
            sessions.extend(page.sessions)
            if not (page_token := page.next_page_token):
                return sessions

    async def session(self, session_id: str) -> common_pb2.Session:
        return await self.client.get_session(session_id)

    async def messages(self, session_id: str) -> list[common_pb2.Message]:
        messages: list[common_pb2.Message] = []
        page_token = ""
        while True:
            page = await self.client.list_messages(session_id, page_token=page_token)
            messages.extend(page.messages)
            if not (page_token := page.next_page_token):
                return messages

    async def templates(self) -> list[merchant_pb2.ReplyTemplate]:
        templates: list[merchant_pb2.ReplyTemplate] = []
        page_token = ""
        while True:
            page = await self.client.list_reply_templates(page_token=page_token)
            templates.extend(page.templates)
            if not (page_token := page.next_page_token):
                return templates

    async def reply_text(self, session_id: str, text: str) -> common_pb2.Message:
        return await self.client.reply(session_id, text=text)

    async def reply_template(self, session_id: str, template_id: str) -> common_pb2.Message:
        return await self.client.reply(session_id, template_id=template_id)

    async def mark_read(self, session_id: str, seq: int) -> None:
        # Sent over the Connect stream; the SDK re-sends it after a reconnect until confirmed.
        await self.client.mark_read(session_id, seq)


def run(
    *,
    target: str,
    token: str,
    agent_id: str,
    merchant_id: str,
    cursor_file: Path,
    tls: bool = False,
    ca_file: Path | None = None,
) -> int:
    """Runs the workbench until the agent quits; returns 0, or EXIT_REFUSED (2) after printing why when
    the service refused the token (UNAUTHENTICATED, PERMISSION_DENIED: retrying would not help)."""
    state = WorkbenchState(agent_id=agent_id, merchant_id=merchant_id)
    cursor_file.parent.mkdir(parents=True, exist_ok=True)
    options = TlsOptions.from_files(ca=ca_file) if tls or ca_file else None

    async def go() -> int:
        shown: list[Workbench] = []

        def on_state(connection: ConnectionState, cursor: int | None) -> None:
            if shown:
                shown[0].connection_changed(connection.value, cursor)

        client = MerchantClient(
            target, token=token, cursor_store=FileCursorStore(cursor_file), tls=options, on_state=on_state
        )
        async with client:
            app = Workbench(SdkBackend(client), state, target=target)
            shown.append(app)
            await app.run_async()
        if app.stopped is not None:
            print(f"escalation workbench: stopped: {app.stopped}", file=sys.stderr)
            return EXIT_REFUSED
        return 0

    return asyncio.run(go())
