"""What the workbench needs from the service, as one small interface over ``escalation.client``.

The app talks to a ``Backend`` only; ``SdkBackend`` implements it with the SDK's ``MerchantClient``
(the public API: no database access, issue 15). Keeping the interface this narrow is what lets the app
be driven headless in tests against the real service with the same code path as on a desk.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from escalation.v1 import common_pb2, merchant_pb2


@dataclass(frozen=True)
class CursorGap:
    """The stream could not resume (SPEC R8 ``CURSOR_EXPIRED``): ``sessions`` are every open session,
    listed after the new stream started, to rebuild from (None: list them)."""

    sessions: tuple[common_pb2.Session, ...] | None = None


class Backend(Protocol):
    def events(self) -> AsyncIterator[merchant_pb2.MerchantEvent | CursorGap]:
        """Every event of the merchant's log once, in cursor order, reconnecting by itself."""
        ...

    async def open_sessions(self) -> list[common_pb2.Session]:
        """The caller's open sessions (the main account: the whole shop's, SPEC R9)."""
        ...

    async def session(self, session_id: str) -> common_pb2.Session: ...

    async def messages(self, session_id: str) -> list[common_pb2.Message]:
        """Every message of the session, ascending seq."""
        ...

    async def templates(self) -> list[merchant_pb2.ReplyTemplate]:
        """The shop's quick-reply templates (SPEC R11)."""
        ...

    async def reply_text(self, session_id: str, text: str) -> common_pb2.Message: ...

    async def reply_template(self, session_id: str, template_id: str) -> common_pb2.Message: ...

    async def mark_read(self, session_id: str, seq: int) -> None:
        """A read receipt: every message up to ``seq`` was seen."""
        ...
