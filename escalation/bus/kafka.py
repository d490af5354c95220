"""Kafka wiring: producer and consumer settings, topic creation. Works with any Kafka-protocol broker."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CorruptRecordException,
    InvalidTimestampError,
    InvalidTopicError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAlreadyExistsError,
    UnsupportedForMessageFormatError,
)

from escalation.domain.limits import KAFKA_MAX_REQUEST_BYTES, KAFKA_TOPIC_MAX_MESSAGE_BYTES
from escalation.transport_security import KafkaSecurity

log = structlog.get_logger(__name__)

TICKETS_TOPIC = "escalation.service-tickets.v1"
WARNINGS_TOPIC = "escalation.merchant-warnings.v1"

# gzip: built into aiokafka (Python's zlib), so no native extra to install and every Kafka-protocol
# broker and client reads it. Tickets are protobuf with repetitive transcripts, which gzip shrinks
# several-fold; lz4/zstd would be faster but need python-lz4/cramjam, for a few tickets a second.
DEFAULT_COMPRESSION = "gzip"

# Errors about the record itself (its size, format, timestamp or topic name): sending it again fails
# the same way, so the relay parks the row at once. Anything else may pass (docs/delivery.md).
_RECORD_ERRORS = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    CorruptRecordException,
    InvalidTimestampError,
    InvalidTopicError,
    UnsupportedForMessageFormatError,
)


def is_record_error(exc: BaseException) -> bool:
    """True when a send failed because of the record, not the broker's state (never worth a retry)."""
    return isinstance(exc, _RECORD_ERRORS)


class TopicCreationError(RuntimeError):
    """The broker refused to create a topic (e.g. replication factor above the broker count)."""


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap: str
    # Idempotent producer: on for Apache Kafka; off only for brokers without InitProducerId.
    idempotence: bool = True
    partitions: int = 6
    replication_factor: int = 3
    request_timeout_ms: int = 30_000
    # Prepended to every topic name (e.g. "staging." or one per test); empty in production.
    topic_prefix: str = ""
    # Bytes: the producer refuses a larger record before sending (MessageSizeTooLargeError); the topics
    # the relay creates accept slightly more, so a record the producer lets through fits the topic.
    max_request_bytes: int = KAFKA_MAX_REQUEST_BYTES
    topic_max_message_bytes: int = KAFKA_TOPIC_MAX_MESSAGE_BYTES
    compression: str | None = DEFAULT_COMPRESSION
    # TLS and SASL (ESCALATION_KAFKA_SECURITY_PROTOCOL and friends); PLAINTEXT by default.
    security: KafkaSecurity = field(default_factory=KafkaSecurity)

    def topic(self, name: str) -> str:
        """The physical topic for a logical one (outbox rows store the logical name)."""
        return self.topic_prefix + name


def connection_kwargs(settings: KafkaSettings) -> dict[str, Any]:
    """aiokafka's connection keywords (bootstrap, TLS, SASL): the one place every client gets them from.

    Producer, consumer and admin client take the same names. With SSL/SASL_SSL the context verifies the
    broker's certificate and host name against ``ca_file`` (else the system store); raises OSError or
    ssl.SSLError when a file went bad after start.
    """
    security = settings.security
    kwargs: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap,
        "security_protocol": security.protocol,
        "ssl_context": security.ssl_context(),
    }
    if security.uses_sasl:
        kwargs |= {
            "sasl_mechanism": security.sasl_mechanism,
            "sasl_plain_username": security.sasl_username,
            "sasl_plain_password": security.sasl_password,
        }
    return kwargs


def producer(settings: KafkaSettings) -> AIOKafkaProducer:
    """acks=all: a row is marked published only once every in-sync replica has it.

    ``max_request_size`` is checked on the uncompressed record, so compression only saves bytes on the
    wire and on disk; what fits is decided by ``max_request_bytes`` (SPEC R7, domain/limits.py).
    """
    return AIOKafkaProducer(
        **connection_kwargs(settings),
        acks="all",
        max_request_size=settings.max_request_bytes,
        compression_type=settings.compression,
        enable_idempotence=settings.idempotence,
        linger_ms=5,
        request_timeout_ms=settings.request_timeout_ms,
        client_id="escalation-outbox",
    )


def consumer(settings: KafkaSettings, topic: str, group_id: str, *, from_beginning: bool) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        settings.topic(topic),
        **connection_kwargs(settings),
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
        client_id="escalation-consumer",
    )


async def ensure_topics(settings: KafkaSettings, topics: Sequence[str]) -> None:
    """Creates the topics if missing (partitions, replication, ``max.message.bytes`` from settings).

    Existing topics keep their configuration (an operator's change is not undone); docs/delivery.md says
    how to align ``max.message.bytes`` on topics created before.
    """
    admin = AIOKafkaAdminClient(**connection_kwargs(settings), request_timeout_ms=settings.request_timeout_ms)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [settings.topic(t) for t in topics if settings.topic(t) not in existing]
        if missing:
            response = await admin.create_topics(
                [
                    NewTopic(
                        t,
                        num_partitions=settings.partitions,
                        replication_factor=settings.replication_factor,
                        topic_configs={"max.message.bytes": str(settings.topic_max_message_bytes)},
                    )
                    for t in missing
                ]
            )
            for error in getattr(response, "topic_errors", ()):
                name, code = error[0], error[1]
                # Another relay may have created it between our list and create.
                if code not in (0, TopicAlreadyExistsError.errno):
                    raise TopicCreationError(f"cannot create Kafka topic {name}: error code {code} ({error[2:]})")
            log.info("kafka.topics_created", topics=missing, partitions=settings.partitions)
    finally:
        await admin.close()
