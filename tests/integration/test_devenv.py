from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from escalation.devenv import EmbeddedBroker, EmbeddedPostgres, free_port, make_data_dir

pytestmark = pytest.mark.integration


def _pid_gone(pid: int) -> bool:
    """Gone or a zombie: an orphan reparented to a non-reaping init lingers as a zombie."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def _processes_in(directory: Path) -> list[int]:
    """Backends chdir into the data directory, so any survivor of stop() shows up here."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "cwd")) == directory.resolve():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.fixture
def data_base() -> Iterator[Path]:
    base = make_data_dir()
    yield base
    shutil.rmtree(base, ignore_errors=True)


async def _select_one(pg: EmbeddedPostgres) -> int:
    conn = await asyncpg.connect(pg.dsn())
    try:
        value: int = await conn.fetchval("SELECT 1")
    finally:
        await conn.close()
    return value


async def test_postgres_starts_serves_stops_and_restarts(data_base: Path) -> None:
    data_dir = data_base / "data"
    pg = EmbeddedPostgres(data_dir, free_port(), log_path=data_base / "pg.log", fast=True)
    with pg:
        assert pg.is_running
        pid = pg.pid
        assert pid is not None
        assert await _select_one(pg) == 1
    assert not pg.is_running
    assert _pid_gone(pid)
    assert _processes_in(data_dir) == []

    pg.start()
    try:
        assert pg.pid != pid
        assert await _select_one(pg) == 1
    finally:
        pg.stop()
    assert _processes_in(data_dir) == []


async def test_broker_round_trips_a_message() -> None:
    topic = f"devenv-{uuid.uuid4().hex[:8]}"
    with EmbeddedBroker(free_port()) as broker:
        pid = broker.pid
        assert pid is not None
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=False)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"hello", key=b"k")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=broker.bootstrap,
            group_id="devenv-test",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            # Tansu holds JoinGroup for about session_timeout/2 (5 s with the 10 s default).
            session_timeout_ms=2000,
            heartbeat_interval_ms=500,
        )
        await consumer.start()
        try:
            record = await consumer.getone()
            await consumer.commit()
        finally:
            await consumer.stop()
        assert (record.key, record.value) == (b"k", b"hello")
    assert not broker.is_running
    assert _pid_gone(pid)


def test_broker_dies_with_a_sigkilled_parent(tmp_path: Path) -> None:
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from escalation.devenv import EmbeddedBroker, free_port\n"
        "b = EmbeddedBroker(free_port(), log_path=Path(sys.argv[1]))\n"
        "b.start()\n"
        "print(b.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    argv = [sys.executable, "-c", script, str(tmp_path / "tansu.log")]
    parent = subprocess.Popen(argv, stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None
        broker_pid = int(parent.stdout.readline())
        assert not _pid_gone(broker_pid)
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
    deadline = time.monotonic() + 5
    while not _pid_gone(broker_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _pid_gone(broker_pid)
