"""SPEC R7 / issue 9 §5: the largest ticket the API can produce fits MAX_TICKET_BYTES.

The worst case: a full session (MAX_SESSION_MESSAGES messages, MAX_SESSION_CONTENT_BYTES of stored
content) whose every id has the maximum length (64 characters, validation.IDENTIFIER), the largest
seq numbers and timestamps with nanoseconds, built by the same function the session end uses.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import asyncpg
import pytest

from escalation.domain import limits
from escalation.domain.session import CloseReason
from escalation.domain.tickets import DEFAULT_SLA
from escalation.services import tickets
from escalation.v1 import common_pb2

MAX_ID = 64


def _id(prefix: str) -> str:
    return (prefix + "-" + "x" * MAX_ID)[:MAX_ID]


def _text_of_size(size: int) -> bytes:
    """The serialized MessageContent (a text of ASCII) of exactly ``size`` bytes, or just under."""
    body = "a" * size
    while len(encoded := common_pb2.MessageContent(text=common_pb2.Text(body=body)).SerializeToString()) > size:
        body = body[: -(len(encoded) - size)]
    return encoded


def _even() -> list[bytes]:
    """Every message the same size: the most envelopes around the whole content budget."""
    per = limits.MAX_SESSION_CONTENT_BYTES // limits.MAX_SESSION_MESSAGES
    return [_text_of_size(per)] * limits.MAX_SESSION_MESSAGES


def _largest_first() -> list[bytes]:
    """Messages of the largest text the API accepts (2,000 four-byte emoji) until the byte budget is
    spent, then the smallest messages up to the message budget."""
    big = common_pb2.MessageContent(text=common_pb2.Text(body="😀" * 2000)).SerializeToString()
    small = common_pb2.MessageContent(text=common_pb2.Text(body="a")).SerializeToString()
    contents: list[bytes] = []
    left = limits.MAX_SESSION_CONTENT_BYTES
    while len(contents) < limits.MAX_SESSION_MESSAGES:
        reserve = (limits.MAX_SESSION_MESSAGES - len(contents) - 1) * len(small)
        piece = big if left - len(big) >= reserve else _text_of_size(max(len(small), left - reserve))
        contents.append(piece)
        left -= len(piece)
    return contents


@pytest.mark.parametrize("contents", [_even, _largest_first], ids=["even", "largest-first"])
def test_the_largest_ticket_fits_max_ticket_bytes(contents: Callable[[], list[bytes]]) -> None:
    payloads = contents()
    assert len(payloads) == limits.MAX_SESSION_MESSAGES
    assert sum(map(len, payloads)) <= limits.MAX_SESSION_CONTENT_BYTES
    session_id = uuid.uuid4()
    t = datetime(2099, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    ended: dict[str, Any] = {
        "session_id": session_id,
        "merchant_id": _id("merchant"),
        "assigned_agent_id": _id("agent"),
        "platform_agent_id": _id("platform"),
        "order_id": _id("order"),
        "category": "NEGOTIATED_REFUND",
        "open_time": t - timedelta(days=1),
        "close_time": t,
    }
    transcript: list[dict[str, Any]] = [
        {
            "session_id": session_id,
            "seq": seq,
            "sender": "MERCHANT",
            "sender_id": _id(f"sender{seq}"),
            "client_msg_id": _id(f"c{seq}"),
            "template_id": _id(f"tpl{seq}"),
            "send_time": t - timedelta(microseconds=seq * 7 + 1),
            "content": content,
        }
        for seq, content in enumerate(payloads, start=1)
    ]
    ticket = tickets.build(
        cast(asyncpg.Record, ended),
        cast(list[asyncpg.Record], transcript),
        CloseReason.PLATFORM_ESCALATED,
        DEFAULT_SLA,
    )
    # Measured: 785,856 bytes (even) and 785,798 (largest first), with 500 messages and 640 KiB.
    print(f"\nworst-case ticket ({contents.__name__}): {len(ticket.payload)} bytes")
    assert len(ticket.payload) <= limits.MAX_TICKET_BYTES < limits.KAFKA_MAX_REQUEST_BYTES
