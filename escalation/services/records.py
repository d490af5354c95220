"""Database rows → API messages: sessions, messages, the directory and templates.

One module for every row-to-protobuf conversion, shared by the servicers, the ticket builder and the
workers (issue #12: records.py and api/convert.py were two halves of one job).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg
from google.protobuf import duration_pb2, timestamp_pb2

from escalation.v1 import admin_pb2, common_pb2, merchant_pb2, ops_pb2, platform_pb2


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A timezone-aware ``datetime`` as a protobuf Timestamp; None (field unset) for NULL."""
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def message(row: asyncpg.Record) -> common_pb2.Message:
    """A ``messages`` row (content stored as serialized MessageContent) as a Message (SPEC R4)."""
    return common_pb2.Message(
        session_id=str(row["session_id"]),
        seq=row["seq"],
        sender=common_pb2.Sender.Value(f"SENDER_{row['sender']}"),
        sender_id=row["sender_id"],
        client_msg_id=row["client_msg_id"] or "",
        send_time=timestamp(row["send_time"]),
        content=common_pb2.MessageContent.FromString(row["content"]),
        template_id=row["template_id"] or "",
    )


def sent_message(row: asyncpg.Record) -> common_pb2.Message:
    """The message a write function returned ready (``message_pb``, store/session_writes.py): parsed
    once, not rebuilt field by field (issue 13 item 3). The same fields as :func:`message`."""
    return common_pb2.Message.FromString(row["message_pb"])


def closed_session(row: asyncpg.Record) -> common_pb2.Session:
    """The session an ending function returned ready (``session_pb``); the same fields as :func:`session`."""
    return common_pb2.Session.FromString(row["session_pb"])


def opened(session_pb: bytes, message_pbs: Sequence[bytes]) -> platform_pb2.OpenSessionResponse:
    """The OpenSession response from what the open_session function returned ready, parsed in place;
    the same fields as :func:`session` and :func:`message` of the rows."""
    response = platform_pb2.OpenSessionResponse()
    response.session.ParseFromString(session_pb)
    for pb in message_pbs:
        response.messages.add().ParseFromString(pb)
    return response


def session(row: asyncpg.Record) -> common_pb2.Session:
    """A row of the ``get_session`` shape (session, deadline, ticket id, decision) as a Session."""
    return common_pb2.Session(
        session_id=str(row["session_id"]),
        merchant_id=row["merchant_id"],
        assigned_agent_id=row["assigned_agent_id"],
        platform_agent_id=row["platform_agent_id"],
        order_id=row["order_id"] or "",
        category=common_pb2.Category.Value(f"CATEGORY_{row['category']}"),
        state=common_pb2.SessionState.Value(f"SESSION_STATE_{row['state']}"),
        close_reason=(
            common_pb2.CloseReason.Value(f"CLOSE_REASON_{row['close_reason']}")
            if row["close_reason"]
            else common_pb2.CLOSE_REASON_UNSPECIFIED
        ),
        open_time=timestamp(row["open_time"]),
        close_time=timestamp(row["close_time"]),
        reply_deadline=timestamp(row["reply_deadline"]),
        last_seq=row["last_seq"],
        ticket_id=str(row["ticket_id"]) if row["ticket_id"] else "",
        assignment=common_pb2.AssignmentDecision.FromString(row["assignment"]),
    )


def read_receipt(session_id: str, seq: int, reader_id: str) -> common_pb2.ReadReceipt:
    """What the platform sees of the merchant's read mark."""
    return common_pb2.ReadReceipt(
        session_id=session_id, seq=seq, reader=common_pb2.SENDER_MERCHANT, reader_id=reader_id
    )


def merchant(row: asyncpg.Record) -> ops_pb2.Merchant:
    """A ``merchants`` row as the ops Merchant message."""
    return ops_pb2.Merchant(
        merchant_id=row["merchant_id"],
        display_name=row["display_name"],
        main_account_id=row["main_account_id"],
        disabled=row["disabled"],
        create_time=timestamp(row["create_time"]),
        update_time=timestamp(row["update_time"]),
    )


def agent(row: asyncpg.Record) -> admin_pb2.Agent:
    """An agent row with its derived ``eligible`` (SPEC R1) and ``open_sessions`` (R2) columns."""
    return admin_pb2.Agent(
        agent_id=row["agent_id"],
        merchant_id=row["merchant_id"],
        display_name=row["display_name"],
        im_permission=row["im_permission"],
        disabled=row["disabled"],
        capacity=row["capacity"],
        main_account=row["main_account"],
        reception_agent=row["reception_agent"],
        eligible=row["eligible"],
        open_sessions=row["open_sessions"],
        update_time=timestamp(row["update_time"]),
    )


def reception_settings(row: asyncpg.Record) -> admin_pb2.ReceptionSettings:
    """A ``get_reception_settings`` row (designated and eligible agent ids, timeouts) as the message."""
    return admin_pb2.ReceptionSettings(
        merchant_id=row["merchant_id"],
        reception_agent_ids=list(row["reception_agent_ids"]),
        eligible_agent_ids=list(row["eligible_agent_ids"]),
        reply_timeout=duration_pb2.Duration(seconds=row["reply_timeout_seconds"]),
        idle_timeout=duration_pb2.Duration(seconds=row["idle_timeout_seconds"]),
        update_time=timestamp(row["update_time"]),
    )


def reply_template(row: asyncpg.Record) -> merchant_pb2.ReplyTemplate:
    """A ``reply_templates`` row as a ReplyTemplate (SPEC R11; the column ``body`` is the field ``text``)."""
    return merchant_pb2.ReplyTemplate(
        template_id=row["template_id"],
        title=row["title"],
        text=row["body"],
        create_time=timestamp(row["create_time"]),
    )
