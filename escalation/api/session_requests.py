"""Request validation and the read RPCs that PlatformService and MerchantService share."""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
from google.protobuf import message as pb_message
from google.protobuf import timestamp_pb2

from escalation.api.interceptors import current_identity
from escalation.domain import messages as message_rules
from escalation.domain import paging
from escalation.domain.session import Sender
from escalation.domain.validation import IDENTIFIER, Violations, canonical_uuid
from escalation.services import records, sessions, transfers
from escalation.services.sessions import NewMessage
from escalation.v1 import common_pb2, platform_pb2

DEFAULT_SESSION_PAGE, DEFAULT_MESSAGE_PAGE = 50, 100
_CLIENT_MSG_ID = re.compile(r"[\x21-\x7e]{1,64}")  # fullmatch: no trailing newline (SPEC §3)


def session_id(check: Violations, value: str, field: str = "session_id") -> uuid.UUID:
    """Parses a session id; a malformed one is INVALID_ARGUMENT, a well-formed unknown one NOT_FOUND."""
    if not value:
        check.add(field, "is required")
        return uuid.UUID(int=0)
    parsed = canonical_uuid(value)
    if parsed is None:
        check.add(field, "must be a session id (a UUID in canonical lower-case form)")
        return uuid.UUID(int=0)
    return parsed


def client_msg_id(check: Violations, value: str) -> str | None:
    if not value:
        return None
    if not _CLIENT_MSG_ID.fullmatch(value):
        check.add("client_msg_id", "must be 1–64 printable ASCII characters without spaces")
    return value


def enum_value(check: Violations, field: str, enum: Any, value: int, *, required: bool) -> str | None:
    """The value's name without the enum's prefix (CATEGORY_REFUND → REFUND); None when unset."""
    try:
        name: str = enum.Name(value)
    except ValueError:
        check.add(field, f"{value} is not a known value")
        return None
    if value == 0:
        if required:
            check.add(field, "is required")
        return None
    prefix = enum.Name(0).removesuffix("UNSPECIFIED")
    return name.removeprefix(prefix)


def new_message(
    check: Violations, field: str, content: common_pb2.MessageContent, sender: Sender, msg_id: str | None
) -> NewMessage | None:
    kind = message_rules.content(check, field, content, sender)
    if kind is None:
        return None
    return NewMessage(kind, content.SerializeToString(deterministic=True), msg_id)


def request_hash(request: pb_message.Message) -> bytes:
    """Fingerprint of a (validated, normalised) request for AIP-155 replay checks."""
    return hashlib.sha256(request.SerializeToString(deterministic=True)).digest()


def _time(check: Violations, field: str, ts: timestamp_pb2.Timestamp, present: bool) -> datetime | None:
    return check.timestamp(field, ts.seconds, ts.nanos) if present else None


_MAX_SEQ = 2**63 - 1


def time_and_id_key(check: Violations, key: list[Any] | None) -> tuple[datetime, str] | None:
    """A (time, id) page key, e.g. a template's (create_time, template_id); a forged one is noted in check.

    Both parts match as whole strings (SPEC §3): the time exactly as ``isoformat()`` wrote it, with
    its offset, and the id by the identifier rule.
    """
    if key is None:
        return None
    at: datetime | None = None
    if len(key) == 2 and isinstance(key[0], str) and isinstance(key[1], str) and IDENTIFIER.fullmatch(key[1]):
        try:
            at = datetime.fromisoformat(key[0])
        except (ValueError, OverflowError):
            at = None
    if at is None or at.tzinfo is None or at.isoformat() != key[0]:
        check.add("page_token", paging.NOT_OURS)
        return None
    return at.astimezone(UTC), key[1]


def time_and_uuid_key(check: Violations, key: list[Any] | None) -> tuple[datetime, uuid.UUID] | None:
    """A (time, UUID) page key, e.g. a session's (open_time, session_id) or a warning's; the UUID in
    canonical lower-case form only (uuid.UUID also reads braces, "urn:uuid:" and surrounding blanks)."""
    parsed = time_and_id_key(check, key)
    if parsed is None:
        return None
    try:
        value = uuid.UUID(parsed[1])
    except ValueError:
        value = None
    if value is None or str(value) != parsed[1]:
        check.add("page_token", paging.NOT_OURS)
        return None
    return parsed[0], value


def _seq_key(check: Violations, key: list[Any] | None) -> int | None:
    if key is None:
        return None
    if len(key) != 1 or not isinstance(key[0], int) or isinstance(key[0], bool) or not 0 <= key[0] <= _MAX_SEQ:
        check.add("page_token", paging.NOT_OURS)
        return None
    return key[0]


async def get_session(pool: asyncpg.Pool, request: platform_pb2.GetSessionRequest) -> common_pb2.Session:
    check = Violations()
    sid = session_id(check, request.session_id)
    check.raise_if_any()
    view = await transfers.get_session(pool, current_identity(), sid)
    return with_history(view)


def with_history(view: transfers.SessionView) -> common_pb2.Session:
    """The session with its assignment history (SPEC R13), as GetSession and TransferSession return it."""
    session = records.session(view.session)
    session.assignment_history.extend(records.assignment_history(view.session, view.moves))
    return session


async def list_sessions(
    pool: asyncpg.Pool, request: platform_pb2.ListSessionsRequest
) -> platform_pb2.ListSessionsResponse:
    check = Violations()
    if request.merchant_id:
        check.identifier("merchant_id", request.merchant_id)
    state = enum_value(check, "state", common_pb2.SessionState, request.state, required=False)
    size = check.page_size("page_size", request.page_size, default=DEFAULT_SESSION_PAGE)
    start = _time(check, "open_time_start", request.open_time_start, request.HasField("open_time_start"))
    end = _time(check, "open_time_end", request.open_time_end, request.HasField("open_time_end"))
    if start and end and start >= end:
        check.add("open_time_end", "must be after open_time_start")
    filters = ["sessions", request.merchant_id, state, str(start), str(end)]
    after = time_and_uuid_key(check, paging.decode(request.page_token, filters, check))
    check.raise_if_any()
    where = sessions.SessionFilter(request.merchant_id or None, state, start, end)
    rows = await sessions.list_sessions(pool, current_identity(), where, after=after, limit=size + 1)
    items, token = paging.bounded_page(
        rows, size, records.session, lambda r: [r["open_time"].isoformat(), str(r["session_id"])], filters
    )
    return platform_pb2.ListSessionsResponse(sessions=items, next_page_token=token)


async def list_messages(
    pool: asyncpg.Pool, request: platform_pb2.ListMessagesRequest
) -> platform_pb2.ListMessagesResponse:
    check = Violations()
    sid = session_id(check, request.session_id)
    if request.after_seq < 0:
        check.add("after_seq", "must not be negative")
    size = check.page_size("page_size", request.page_size, default=DEFAULT_MESSAGE_PAGE)
    filters = ["messages", request.session_id, request.after_seq]
    after_seq = _seq_key(check, paging.decode(request.page_token, filters, check))
    check.raise_if_any()
    rows = await sessions.list_messages(
        pool, current_identity(), sid, after_seq=request.after_seq if after_seq is None else after_seq, limit=size + 1
    )
    items, token = paging.bounded_page(rows, size, records.message, lambda r: [r["seq"]], filters)
    return platform_pb2.ListMessagesResponse(messages=items, next_page_token=token)
