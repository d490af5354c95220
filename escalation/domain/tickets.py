"""SPEC R7: the ticket's deadline (SLA by category) and its transcript digest, as pure functions."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

from escalation.v1 import common_pb2

DIGEST_ALGORITHM = "sha256-chain-v1"

# Defaults from the spec; ESCALATION_TICKET_SLA overrides any of them.
DEFAULT_SLA: Mapping[str, timedelta] = {
    "REFUND": timedelta(hours=2),
    "ORDER_OPERATION": timedelta(hours=2),
    "EXCHANGE": timedelta(hours=12),
    "PRODUCT": timedelta(hours=12),
    "NEGOTIATED_REFUND": timedelta(hours=12),
    "LOGISTICS": timedelta(hours=24),
}


def handle_by(close_time: datetime, category: str, sla: Mapping[str, timedelta]) -> datetime:
    return close_time + sla[category]


def _field(value: bytes) -> bytes:
    # Length-prefixed, so no choice of content can make two different transcripts collide.
    return len(value).to_bytes(8, "big") + value


def canonical(message: common_pb2.Message) -> bytes:
    """The bytes of one message that the digest chain covers (docs/tickets.md)."""
    return b"".join(
        _field(part)
        for part in (
            str(message.seq).encode(),
            common_pb2.Sender.Name(message.sender).encode(),
            message.sender_id.encode(),
            message.send_time.ToJsonString().encode(),
            message.template_id.encode(),
            message.content.SerializeToString(deterministic=True),
        )
    )


def transcript_digest(messages: Iterable[common_pb2.Message]) -> str:
    """d0 = 32 zero bytes; d_i = SHA-256(d_{i-1} || canonical(message_i)); lower-case hex of d_n."""
    digest = bytes(32)
    for message in messages:
        digest = hashlib.sha256(digest + canonical(message)).digest()
    return digest.hex()
