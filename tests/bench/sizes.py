"""How big each measurement is: the full run (about 5 minutes) and ``--quick`` (about 1 minute)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sizes:
    name: str
    concurrency: int = 64  # in-flight calls of the closed-loop client
    warmup: float = 2.0  # seconds not counted at the start of each throughput run
    duration: float = 8.0  # measured seconds of each throughput run
    single_merchant_duration: float = 5.0
    merchants: int = 50
    agents_per_merchant: int = 3
    send_sessions: int = 200
    sql_clients: int = 20  # pgbench clients of the SQL ceiling (SPEC §5)
    sql_send_sessions: int = 1_000  # sessions send_message.sql writes to (each stays far below 500 messages)
    open_loop_rate: float = 100.0  # OpenSession per second on a fixed schedule (SPEC §5)
    open_loop_seconds: float = 10.0  # measured, after warmup seconds at the same rate
    deadline_sessions: int = 100_000  # spread uniformly over deadline_window seconds
    deadline_window: float = 60.0
    burst_sessions: int = 10_000  # all due within one second
    burst_offset: float = 20.0  # seconds into the window where the burst second starts
    deadline_lead: float = 15.0  # seconds between the insert and the first deadline
    deadline_workers: int = 2  # `escalation worker deadlines` processes
    fanout_rate: float = 100.0  # OpenSession per second through replica B while streams listen on A
    fanout_seconds: float = 5.0
    memory_streams: int = 10_000  # Connect streams held open on one server process
    memory_channels: int = 20  # client connections they are spread over
    close_rate: float = 200.0  # CloseSession(ESCALATED) per second, open loop
    close_seconds: float = 10.0
    produce_messages: int = 50_000  # raw produce and outbox relay drain, ~1 KB each
    value_bytes: int = 1024
    stale_relay_seconds: float = 20.0  # how long the relay may drain with statistics from before the backlog
    isolation_streams: int = 2_000  # Connect streams of one shop while another shop's GetSession is timed
    isolation_sessions: int = 5  # the loud shop's sessions its burst messages go to
    isolation_burst: int = 10  # SendMessage calls per burst (one event each, to every loud stream)
    isolation_burst_every: float = 1.0  # seconds between bursts
    isolation_seconds: float = 8.0  # measured seconds, quiet and loaded each


FULL = Sizes(name="full")
QUICK = Sizes(
    name="quick",
    warmup=1.0,
    duration=3.0,
    single_merchant_duration=2.0,
    sql_send_sessions=300,
    open_loop_seconds=3.0,
    deadline_sessions=10_000,
    deadline_window=15.0,
    burst_sessions=1_000,
    burst_offset=5.0,
    deadline_lead=5.0,
    fanout_seconds=2.0,
    memory_streams=1_000,
    memory_channels=4,
    close_rate=100.0,
    close_seconds=3.0,
    produce_messages=5_000,
    stale_relay_seconds=5.0,
    isolation_streams=500,
    isolation_seconds=3.0,
)
