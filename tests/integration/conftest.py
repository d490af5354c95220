"""Fixtures shared by the integration tests that publish to the broker."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from escalation.bus import kafka
from workers.outbox import OutboxConfig, OutboxRelay


@pytest.fixture
def kafka_settings(kafka_bootstrap: str, kafka_topic: str) -> kafka.KafkaSettings:
    """Settings for the test broker, with this test's own topics (a unique prefix)."""
    return kafka.KafkaSettings(
        bootstrap=kafka_bootstrap, idempotence=False, partitions=2, replication_factor=1, topic_prefix=f"{kafka_topic}."
    )


@pytest.fixture
async def relay(pool: asyncpg.Pool, kafka_settings: kafka.KafkaSettings) -> AsyncIterator[OutboxRelay]:
    r = OutboxRelay(pool, kafka_settings, OutboxConfig(ack_timeout=10))
    try:
        yield r
    finally:
        await r.close()
