"""Kafka wiring: producer and consumer settings, topic creation. Works with any Kafka-protocol broker."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

log = structlog.get_logger(__name__)

TICKETS_TOPIC = "escalation.service-tickets.v1"
WARNINGS_TOPIC = "escalation.merchant-warnings.v1"


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

    def topic(self, name: str) -> str:
        """The physical topic for a logical one (outbox rows store the logical name)."""
        return self.topic_prefix + name


def producer(settings: KafkaSettings) -> AIOKafkaProducer:
    """acks=all: a row is marked published only once every in-sync replica has it."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap,
        acks="all",
        enable_idempotence=settings.idempotence,
        linger_ms=5,
        request_timeout_ms=settings.request_timeout_ms,
        client_id="escalation-outbox",
    )


def consumer(settings: KafkaSettings, topic: str, group_id: str, *, from_beginning: bool) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        settings.topic(topic),
        bootstrap_servers=settings.bootstrap,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
        client_id="escalation-consumer",
    )


async def ensure_topics(settings: KafkaSettings, topics: Sequence[str]) -> None:
    """Creates the topics if missing (partitions and replication from settings); existing ones stay."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap, request_timeout_ms=settings.request_timeout_ms)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [settings.topic(t) for t in topics if settings.topic(t) not in existing]
        if missing:
            response = await admin.create_topics(
                [
                    NewTopic(t, num_partitions=settings.partitions, replication_factor=settings.replication_factor)
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
