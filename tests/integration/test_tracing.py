"""OpenTelemetry (docs/tracing.md): a ticket's Kafka record continues the trace of the close that made it.

Real PostgreSQL, the real broker and the real gRPC server; spans go to the SDK's in-memory exporter.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, cast

import asyncpg
import grpc
import pytest
from aiokafka import AIOKafkaConsumer
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from escalation.bus import kafka
from escalation.observability import tracing
from escalation.store import queries
from escalation.v1 import merchant_pb2, merchant_pb2_grpc, platform_pb2, platform_pb2_grpc
from tests.integration.grpc_harness import bearer, running_server
from tests.integration.sessions_harness import PLATFORM, make_shop, open_request
from workers.deadlines import CLOSE_SPAN, DeadlineWorker
from workers.outbox import OutboxRelay

pytestmark = pytest.mark.integration

PLATFORM_SERVICE = "/escalation.v1.PlatformService"
ESCALATED = platform_pb2.CloseSessionRequest.OUTCOME_ESCALATED
# The stubs type neither the read/write API of a call without a request iterator nor EOF.
Call = Any
EOF: object = getattr(grpc.aio, "EOF")  # noqa: B009


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for this test (what OTEL_EXPORTER_OTLP_ENDPOINT does in production), into memory."""
    exporter = InMemorySpanExporter()
    tracing.configure(tracing.build_provider("escalation-test", [SimpleSpanProcessor(exporter)]))
    try:
        yield exporter
    finally:
        tracing.disable()


def traceparent(span: SpanContext) -> str:
    """W3C trace-context level 2: version 00, trace id, span id, flags (sampled, random trace id)."""
    return f"00-{span.trace_id:032x}-{span.span_id:016x}-{span.trace_flags:02x}"


def one(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, f"{len(found)} spans named {name!r} among {[s.name for s in spans]}"
    return found[0]


async def _tickets(settings: kafka.KafkaSettings, count: int) -> list[dict[str, str]]:
    """The headers of the first ``count`` records on the tickets topic."""
    consumer = AIOKafkaConsumer(
        settings.topic(kafka.TICKETS_TOPIC),
        bootstrap_servers=settings.bootstrap,
        group_id=f"g-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    got: list[dict[str, str]] = []
    try:
        async with asyncio.timeout(20):
            while len(got) < count:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    got += [{k: v.decode() for k, v in r.headers} for r in records]
    finally:
        await consumer.stop()
    return got


async def _open_and_escalate(channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]) -> str:
    platform = platform_pb2_grpc.PlatformServiceStub(channel)
    opened = await platform.OpenSession(open_request(), metadata=metadata)
    sid = opened.session.session_id
    await platform.CloseSession(platform_pb2.CloseSessionRequest(session_id=sid, outcome=ESCALATED), metadata=metadata)
    return sid


async def test_open_close_and_publish_are_one_trace_and_the_ticket_header_continues_the_close(
    pool: asyncpg.Pool, relay: OutboxRelay, kafka_settings: kafka.KafkaSettings, spans: InMemorySpanExporter
) -> None:
    # The platform agent's tool traces its handling of the case and propagates it (W3C) on both calls.
    client = tracing.build_provider("platform-tool", []).get_tracer("test")
    with client.start_as_current_span("handle consumer question") as case:
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier)
    case_context = case.get_span_context()
    async with running_server(pool) as channel:
        await make_shop(channel)
        sid = await _open_and_escalate(channel, (*PLATFORM, ("traceparent", carrier["traceparent"])))
    assert await relay.run_once() == 1
    [headers] = await _tickets(kafka_settings, 1)

    finished = spans.get_finished_spans()
    open_span = one(finished, f"{PLATFORM_SERVICE}/OpenSession")
    close_span = one(finished, f"{PLATFORM_SERVICE}/CloseSession")
    publish = one(finished, f"{kafka_settings.topic(kafka.TICKETS_TOPIC)} send")
    for server_span in (open_span, close_span):
        assert server_span.kind == SpanKind.SERVER
        assert server_span.context.trace_id == case_context.trace_id, "the caller's trace continues"
        assert server_span.parent is not None
        assert server_span.parent.span_id == case_context.span_id
        assert server_span.attributes is not None
        assert server_span.attributes["rpc.grpc.status_code"] == 0
    assert publish.kind == SpanKind.PRODUCER
    assert publish.context.trace_id == case_context.trace_id
    assert publish.parent is not None
    assert publish.parent.span_id == close_span.context.span_id, "the send continues the close that wrote the row"
    stored = await pool.fetchval("SELECT traceparent FROM outbox o JOIN tickets t ON t.ticket_id::text = o.event_id")
    assert stored == traceparent(close_span.context)
    assert headers["traceparent"] == traceparent(publish.context)
    ticket_id = await pool.fetchval("SELECT ticket_id::text FROM tickets WHERE session_id = $1::uuid", sid)
    assert headers["event_id"] == ticket_id

    # The close's SQL is in its trace, each statement named after its query in store/sql: one round trip,
    # close_session, writes the ticket and its outbox row (migrations/0010).
    under_close = [s for s in finished if s.parent is not None and s.parent.span_id == close_span.context.span_id]
    close_queries = {s.name for s in under_close if s.attributes is not None and "db.system" in s.attributes}
    assert {"close_session"} <= close_queries <= {*queries.named(), "BEGIN;", "COMMIT;", "SELECT"}


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("unknown session", grpc.StatusCode.NOT_FOUND),
        ("no token", grpc.StatusCode.UNAUTHENTICATED),
        ("bytes that do not decode", grpc.StatusCode.INVALID_ARGUMENT),
        ("missing outcome", grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_a_refused_rpc_span_names_the_method_and_carries_the_status_the_client_got(
    pool: asyncpg.Pool, spans: InMemorySpanExporter, case: str, code: grpc.StatusCode
) -> None:
    method = f"{PLATFORM_SERVICE}/CloseSession"
    request = platform_pb2.CloseSessionRequest(session_id=str(uuid.uuid4()), outcome=ESCALATED).SerializeToString()
    metadata: tuple[tuple[str, str], ...] = PLATFORM
    if case == "no token":
        metadata = ()
    elif case == "bytes that do not decode":
        request = b"\x0a\xff"  # field 1, a length running past the end
    elif case == "missing outcome":
        request = platform_pb2.CloseSessionRequest(session_id=str(uuid.uuid4())).SerializeToString()
    async with running_server(pool) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call(request, metadata=metadata)
    assert raised.value.code() == code
    span = one(spans.get_finished_spans(), method)
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == code.value[0]
    # OTel semantic conventions (gRPC server spans): a client's mistake is not the server's error.
    assert span.status.status_code == StatusCode.UNSET


async def test_streams_written_with_context_write_work_traced_and_are_one_span_each(
    pool: asyncpg.Pool, spans: InMemorySpanExporter
) -> None:
    """Connect and WatchSession are coroutines that call context.write, not async generators."""
    async with running_server(pool) as channel:
        await make_shop(channel, agents={"shop-a-sub-1": 10})
        platform = platform_pb2_grpc.PlatformServiceStub(channel)
        sid = (await platform.OpenSession(open_request(), metadata=PLATFORM)).session.session_id
        watch: Call = platform.WatchSession(platform_pb2.WatchSessionRequest(session_id=sid), metadata=PLATFORM)
        connect: Call = cast(Any, merchant_pb2_grpc.MerchantServiceStub(channel)).Connect(
            metadata=bearer("merchant", "shop-a-sub-1", "shop-a")
        )
        await connect.write(merchant_pb2.ConnectRequest(hello=merchant_pb2.Hello(last_cursor=0)))
        async with asyncio.timeout(10):
            assert (await watch.read()).HasField("message_added")
            assert (await connect.read()).event.HasField("session_assigned")
        await platform.CloseSession(
            platform_pb2.CloseSessionRequest(session_id=sid, outcome=platform_pb2.CloseSessionRequest.OUTCOME_RESOLVED),
            metadata=PLATFORM,
        )
        async with asyncio.timeout(10):
            while (frame := await watch.read()) is not EOF:
                assert isinstance(frame, platform_pb2.WatchSessionResponse)
                last = frame
        assert last.HasField("session_ended")
        connect.cancel()
    finished = spans.get_finished_spans()
    watched = one(finished, f"{PLATFORM_SERVICE}/WatchSession")
    assert watched.attributes is not None
    assert watched.attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]
    one(finished, "/escalation.v1.MerchantService/Connect")


async def test_a_deadline_close_is_traced_by_the_worker_and_its_ticket_header_continues_that_span(
    pool: asyncpg.Pool, relay: OutboxRelay, kafka_settings: kafka.KafkaSettings, spans: InMemorySpanExporter
) -> None:
    worker = DeadlineWorker(pool)
    assert (await worker.run_once()).ended == 0
    assert spans.get_finished_spans() == (), "a round that finds nothing due leaves no span, not even its SQL"
    async with running_server(pool) as channel:
        await make_shop(channel)
        platform = platform_pb2_grpc.PlatformServiceStub(channel)
        sids = [(await platform.OpenSession(open_request(), metadata=PLATFORM)).session.session_id for _ in range(3)]
    # Due now by the database clock, without waiting out the 120 s minimum.
    await pool.execute(
        "UPDATE sessions SET reply_deadline = clock_timestamp() - interval '1 s' WHERE session_id = ANY($1::uuid[])",
        sids,
    )
    spans.clear()
    assert (await worker.run_once()).ended == 3
    closes = spans.get_finished_spans()
    close = one(closes, CLOSE_SPAN)
    assert close.parent is None
    assert close.attributes is not None
    assert close.attributes["escalation.sessions_ended"] == 3
    assert [s.name for s in closes if s.parent is None] == [CLOSE_SPAN], "the worker's SQL is inside its span"
    stored = {r["traceparent"] for r in await pool.fetch("SELECT traceparent FROM outbox")}
    assert stored == {traceparent(close.context)}

    assert await relay.run_once() == 3
    records = await _tickets(kafka_settings, 3)
    sends = [s for s in spans.get_finished_spans() if s.kind == SpanKind.PRODUCER]
    assert len(sends) == 3
    for send in sends:
        assert send.context.trace_id == close.context.trace_id
        assert send.parent is not None
        assert send.parent.span_id == close.context.span_id
    assert {r["traceparent"] for r in records} == {traceparent(s.context) for s in sends}


async def test_with_tracing_off_nothing_is_exported_and_tickets_carry_no_traceparent(
    pool: asyncpg.Pool, relay: OutboxRelay, kafka_settings: kafka.KafkaSettings
) -> None:
    exporter = InMemorySpanExporter()
    provider = tracing.build_provider("escalation-test", [SimpleSpanProcessor(exporter)])
    # Even as the global provider (another library may set one), nothing of ours reaches it while off.
    trace.set_tracer_provider(provider)
    assert not tracing.enabled()
    # A traced caller: while off we neither adopt nor store its context.
    caller = ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    async with running_server(pool) as channel:
        await make_shop(channel)
        await _open_and_escalate(channel, (*PLATFORM, caller))
        await _open_and_escalate(channel, PLATFORM)
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE traceparent IS NOT NULL") == 0
    assert await relay.run_once() == 2
    records = await _tickets(kafka_settings, 2)
    assert [sorted(r) for r in records] == [["content-type", "event_id"]] * 2, "no traceparent header at all"
    provider.force_flush()
    assert exporter.get_finished_spans() == ()


async def test_a_relay_that_does_not_trace_still_sends_the_stored_traceparent_as_it_is(
    pool: asyncpg.Pool, relay: OutboxRelay, kafka_settings: kafka.KafkaSettings, spans: InMemorySpanExporter
) -> None:
    async with running_server(pool) as channel:
        await make_shop(channel)
        await _open_and_escalate(channel, PLATFORM)
    close = one(spans.get_finished_spans(), f"{PLATFORM_SERVICE}/CloseSession")
    tracing.disable()  # the serve process traces, the relay process does not
    assert await relay.run_once() == 1
    [headers] = await _tickets(kafka_settings, 1)
    assert headers["traceparent"] == traceparent(close.context)
