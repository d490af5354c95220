"""A ticket from a newer producer (fields and content kinds added within v1) still works for a v1 consumer.

The newer producer is simulated by appending what its added fields put on the wire, as fields numbered
above every number in use (docs/tickets.md, "Compatibility rules"): the consumer built from today's
protos keeps them, and its recomputed transcript digest matches the producer's.
"""

from __future__ import annotations

import hashlib

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from escalation.domain.tickets import DIGEST_ALGORITHM, transcript_digest
from escalation.v1 import common_pb2, events_pb2


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(value: bytes) -> bytes:
    """F(x) of docs/tickets.md: 8-byte big-endian length, then x."""
    return len(value).to_bytes(8, "big") + value


def _bytes_field(number: int, payload: bytes) -> bytes:
    """A length-delimited field as protobuf encodes it (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _message(seq: int, content: bytes, extra: bytes) -> tuple[bytes, bytes]:
    """(wire bytes of a newer producer's Message, the canonical bytes it computed its digest over)."""
    known = common_pb2.Message(
        session_id="s-1",
        seq=seq,
        sender=common_pb2.SENDER_MERCHANT,
        sender_id="agent-1",
        send_time=Timestamp(seconds=1_800_000_000 + seq),
    )
    wire = known.SerializeToString(deterministic=True) + _bytes_field(7, content) + extra
    parts = (str(seq), "SENDER_MERCHANT", "agent-1", known.send_time.ToJsonString(), "")
    canonical = b"".join(_field(p.encode()) for p in parts) + _field(content)
    return wire, canonical


NEW_KIND = _bytes_field(5, _bytes_field(1, b"https://cdn.example/voice.ogg"))  # a 5th MessageContent kind
TEXT = _bytes_field(1, _bytes_field(1, "可以今天发货".encode()))
TEXT_WITH_NEW_FIELD = TEXT + _bytes_field(6, b"zh-CN")  # a field added to MessageContent beside the oneof


@pytest.mark.parametrize(
    ("content", "message_extra"),
    [
        (NEW_KIND, b""),
        (TEXT_WITH_NEW_FIELD, b""),
        (TEXT, _bytes_field(9, b"translated")),  # a field added to Message
        (NEW_KIND, _bytes_field(9, b"translated")),
    ],
    ids=["new-content-kind", "new-content-field", "new-message-field", "all-of-them"],
)
def test_a_v1_consumer_reads_a_newer_ticket_and_verifies_its_digest(content: bytes, message_extra: bytes) -> None:
    first_wire, first_canonical = _message(1, TEXT, b"")
    second_wire, second_canonical = _message(2, content, message_extra)
    digest = hashlib.sha256(hashlib.sha256(bytes(32) + first_canonical).digest() + second_canonical).hexdigest()
    header = events_pb2.ServiceTicket(
        ticket_id="t-1",
        merchant_id="shop-a",
        category=common_pb2.CATEGORY_LOGISTICS,
        transcript_digest=digest,
        digest_algorithm=DIGEST_ALGORITHM,
    ).SerializeToString()
    wire = (
        header
        + _bytes_field(9, first_wire)
        + _bytes_field(9, second_wire)
        + _bytes_field(1000, b"a field added to ServiceTicket")
        # category again (the last value wins): a value added to Category after this consumer was built
        + _varint(7 << 3)
        + _varint(99)
    )

    ticket = events_pb2.ServiceTicket.FromString(wire)

    assert ticket.ticket_id == "t-1"
    assert ticket.category == 99, "proto3 enums are open: an unknown value arrives intact"
    assert [m.seq for m in ticket.transcript] == [1, 2]
    assert transcript_digest(ticket.transcript) == ticket.transcript_digest
    # Passing it on (e.g. to an archive) keeps what this consumer does not understand.
    assert events_pb2.ServiceTicket.FromString(ticket.SerializeToString()) == ticket
