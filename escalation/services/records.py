"""Database rows → API messages, shared by the servicers and the ticket builder."""

from __future__ import annotations

from datetime import datetime

import asyncpg
from google.protobuf import timestamp_pb2

from escalation.v1 import common_pb2


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def message(row: asyncpg.Record) -> common_pb2.Message:
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


def session(row: asyncpg.Record) -> common_pb2.Session:
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
