"""What `escalation platform` prints: one line per thing for a person, or one JSON object per line.

JSON is the protobuf JSON mapping with the proto field names (``session_id``, not ``sessionId``), so a
script reads the same names as the API reference (proto/escalation/v1).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from escalation.v1 import common_pb2, platform_pb2

# ISO 4217 currencies whose minor unit is not a hundredth; every other one has two decimals.
_EXPONENTS = {"JPY": 0, "KRW": 0, "VND": 0, "CLP": 0, "ISK": 0, "BHD": 3, "KWD": 3, "OMR": 3, "JOD": 3, "TND": 3}


def as_json(message: Message) -> str:
    """One line of JSON with proto field names; enums by name, unset fields omitted."""
    return json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True), ensure_ascii=False)


def money(amount: common_pb2.Money) -> str:
    """``12900 CNY`` minor units as ``129.00 CNY`` (the currency's ISO 4217 exponent)."""
    exponent = _EXPONENTS.get(amount.currency, 2)
    whole, part = divmod(amount.amount_minor, 10**exponent)
    return f"{whole}.{part:0{exponent}d} {amount.currency}" if exponent else f"{whole} {amount.currency}"


def _time(stamp: Timestamp) -> str:
    return stamp.ToDatetime(tzinfo=UTC).strftime("%H:%M:%S") if stamp.seconds or stamp.nanos else "-"


def _enum(value: int, enum: object, prefix: str) -> str:
    name: str = enum.Name(value)  # type: ignore[attr-defined]
    return name.removeprefix(prefix)


def content(item: common_pb2.MessageContent) -> str:
    """The content of a message on one line (an order card: its summary)."""
    kind = item.WhichOneof("kind")
    if kind == "text":
        return item.text.body.replace("\n", " ⏎ ")
    if kind == "image":
        return f"[image {item.image.width}×{item.image.height}] {item.image.url}"
    if kind == "emoji":
        return f"[emoji] {item.emoji.code}"
    if kind == "order_card":
        card = item.order_card
        items = ", ".join(f"{i.quantity}× {i.name}{f' ({i.spec})' if i.spec else ''}" for i in card.items)
        ship = f"; {card.logistics.courier} {card.logistics.tracking_number}" if card.HasField("logistics") else ""
        return f"[order {card.order_id} {card.status}, {money(card.paid_amount)}: {items}{ship}] {card.detail_url}"
    return "[empty]"


def message(msg: common_pb2.Message) -> str:
    """``07:21:05 #3 merchant shop-a-sub-1: Yes, today.``"""
    sender = _enum(msg.sender, common_pb2.Sender, "SENDER_").lower()
    return f"{_time(msg.send_time)} #{msg.seq} {sender} {msg.sender_id}: {content(msg.content)}"


def deadline(session: common_pb2.Session, now: datetime | None = None) -> str:
    """``reply due 07:24:05 (in 2m41s)``, or ``no reply due``."""
    if not session.HasField("reply_deadline"):
        return "no reply due"
    due = session.reply_deadline.ToDatetime(tzinfo=UTC)
    left = int((due - (now or datetime.now(UTC))).total_seconds())
    when = f"in {left // 60}m{left % 60:02d}s" if left >= 0 else f"{-left}s ago"
    return f"reply due {due:%H:%M:%S} ({when})"


def session(s: common_pb2.Session) -> str:
    """One line: id, shop, agent, state (with reason and ticket once ended), deadline, last seq."""
    category = _enum(s.category, common_pb2.Category, "CATEGORY_").lower().replace("_", "-")
    head = f"{s.session_id}  {s.merchant_id} → {s.assigned_agent_id}  {category}"
    if s.order_id:
        head += f"  order {s.order_id}"
    if s.state == common_pb2.SESSION_STATE_ENDED:
        reason = _enum(s.close_reason, common_pb2.CloseReason, "CLOSE_REASON_")
        ticket = f", ticket {s.ticket_id}" if s.ticket_id else ""
        return f"{head}  ENDED {reason}{ticket}  ({count(s.last_seq, 'message')})"
    return f"{head}  OPEN, {deadline(s)}  ({count(s.last_seq, 'message')})"


def count(n: int, noun: str) -> str:
    """``"1 message"``, ``"0 messages"``, ``"2 messages"``: English plural for a regular noun."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def watched(frame: platform_pb2.WatchSessionResponse) -> str:
    """A WatchSession frame: a message, a read receipt or the end."""
    kind = frame.WhichOneof("event")
    if kind == "message_added":
        return message(frame.message_added)
    if kind == "read_receipt":
        receipt = frame.read_receipt
        return f"{_time(receipt.read_time)} read up to #{receipt.seq} by {receipt.reader_id}"
    if kind == "session_ended":
        return f"ended: {session(frame.session_ended.session)}"
    return ""
