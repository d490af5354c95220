"""Tracing as production runs it (docs/tracing.md): `escalation serve` and `escalation worker outbox`
turned on by OTEL_EXPORTER_OTLP_ENDPOINT alone, exporting OTLP/HTTP to a receiver on loopback.

Proves the wiring the in-process tests cannot: the CLI reads the standard environment, each process
names itself, spans are flushed when SIGTERM stops it, and the ticket's trace crosses two processes.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from escalation.v1 import platform_pb2, platform_pb2_grpc
from tests.e2e.harness import escalation, service_env
from tests.e2e.workers_harness import (
    KafkaTarget,
    free_addr,
    read_topic,
    wait_started,
    worker,
)
from tests.integration.sessions_harness import PLATFORM, make_shop, open_request

pytestmark = pytest.mark.e2e

ESCALATE = platform_pb2.CloseSessionRequest.OUTCOME_ESCALATED
GET_SESSION = "/escalation.v1.PlatformService/GetSession"


@dataclass(frozen=True)
class Exported:
    service: str
    span: trace_pb2.Span


class _Receiver(BaseHTTPRequestHandler):
    spans: list[Exported]
    lock: threading.Lock

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        with self.lock:
            for resource_spans in request.resource_spans:
                names = [a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"]
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend(Exported(names[0], span) for span in scope_spans.spans)
        reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def otlp_receiver() -> Iterator[tuple[str, list[Exported]]]:
    """An OTLP/HTTP traces endpoint on loopback: yields its base URL and the spans it received."""
    spans: list[Exported] = []
    handler = type("Receiver", (_Receiver,), {"spans": spans, "lock": threading.Lock()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", spans
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def one(spans: list[Exported], service: str, name: str) -> trace_pb2.Span:
    found = [e.span for e in spans if e.service == service and e.span.name == name]
    assert len(found) == 1, f"{len(found)} {name!r} from {service}; got {[(e.service, e.span.name) for e in spans]}"
    return found[0]


async def test_a_ticket_traced_across_serve_and_relay_processes_by_the_standard_environment(
    database_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    kafka = KafkaTarget(kafka_bootstrap)
    with otlp_receiver() as (endpoint, spans):
        # Only standard variables; a short batch delay so nothing waits for the default 5 s.
        otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
        grpc_addr = free_addr()
        serve_env = service_env(database_url, grpc_addr=grpc_addr, ESCALATION_LOG_FORMAT="json", **otel)
        with escalation(["serve"], serve_env, tmp_path, "serve") as serve:
            async with grpc.aio.insecure_channel(grpc_addr) as channel:
                await asyncio.wait_for(channel.channel_ready(), 30)
                await make_shop(channel)
                platform = platform_pb2_grpc.PlatformServiceStub(channel)
                sid = (await platform.OpenSession(open_request(), metadata=PLATFORM)).session.session_id
                await platform.CloseSession(
                    platform_pb2.CloseSessionRequest(session_id=sid, outcome=ESCALATE), metadata=PLATFORM
                )
                # Bytes that do not decode: refused with a warning logged inside the RPC's span.
                get = channel.unary_unary(GET_SESSION, request_serializer=None, response_deserializer=None)
                with pytest.raises(grpc.aio.AioRpcError):
                    await get(b"\x0a\xff", metadata=PLATFORM)
            assert serve.terminate() == 0, serve.output()
        with worker("outbox", database_url, tmp_path, "relay", kafka=kafka, env=otel) as relay:
            await wait_started(relay)
            [record] = await read_topic(kafka.bootstrap, kafka.tickets_topic, until=lambda got: len(got) >= 1)
            assert relay.terminate() == 0, relay.output()

        close = one(spans, "escalation-serve", "/escalation.v1.PlatformService/CloseSession")
        send = one(spans, "escalation-worker-outbox", f"{kafka.tickets_topic} send")
        assert send.trace_id == close.trace_id
        assert send.parent_span_id == close.span_id, "the relay's send continues the close, across processes"
        header = dict(record.headers)["traceparent"].decode()
        assert header.startswith(f"00-{send.trace_id.hex()}-{send.span_id.hex()}-")
        queries = {e.span.name for e in spans if e.span.trace_id == close.trace_id and e.span.parent_span_id}
        assert "close_session" in queries, "the close's one statement, which writes the outbox row"
        assert not any(e.span.name.startswith("/grpc.health") for e in spans)

        refused = one(spans, "escalation-serve", GET_SESSION)
        [warning] = serve.events_named("rpc.malformed_request")
        assert (warning["trace_id"], warning["span_id"]) == (refused.trace_id.hex(), refused.span_id.hex())
        assert all("trace_id" not in e for e in serve.events_named("server.started")), "outside any span: none"
