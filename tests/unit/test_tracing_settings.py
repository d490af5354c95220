"""Tracing is switched by the standard OTEL_* environment (docs/tracing.md), and logs carry trace ids."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export import ConsoleSpanExporter

from escalation.observability import tracing
from escalation.observability.logging import add_trace_ids


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
        ({"OTEL_SDK_DISABLED": "TRUE", "OTEL_TRACES_EXPORTER": "console"}, False),
        ({"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_EXPORTER": "console"}, True),
    ],
)
def test_tracing_is_on_only_when_the_standard_environment_asks(environ: dict[str, str], on: bool) -> None:
    assert tracing.requested(environ) is on


def test_exporters_follow_otel_traces_exporter() -> None:
    assert [type(e) for e in tracing.exporters_from_env({"OTEL_TRACES_EXPORTER": "console"})] == [ConsoleSpanExporter]
    assert tracing.exporters_from_env({"OTEL_TRACES_EXPORTER": "none"}) == []
    assert [type(e).__name__ for e in tracing.exporters_from_env({})] == ["OTLPSpanExporter"]


def test_every_unusable_otel_setting_is_named_in_one_error() -> None:
    with pytest.raises(tracing.TracingConfigError) as raised:
        tracing.exporters_from_env(
            {"OTEL_TRACES_EXPORTER": "otlp,jaeger,zipkin", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
        )
    message = str(raised.value)
    assert "'jaeger'" in message
    assert "'zipkin'" in message
    assert "OTEL_EXPORTER_OTLP_PROTOCOL='grpc'" in message
    assert "\n" not in message
    assert tracing.exporters_from_env({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"})
    # The traces-specific setting wins over the general one, either way round.
    assert tracing.exporters_from_env(
        {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    )
    with pytest.raises(tracing.TracingConfigError, match="OTEL_EXPORTER_OTLP_TRACES_PROTOCOL='grpc'"):
        tracing.exporters_from_env(
            {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
        )
    # A console-only setup does not care about the OTLP protocol.
    assert tracing.exporters_from_env({"OTEL_TRACES_EXPORTER": "console", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})


def test_log_lines_inside_a_span_carry_its_w3c_ids_and_others_none() -> None:
    assert add_trace_ids(None, "info", {"event": "x"}) == {"event": "x"}
    tracer = tracing.build_provider("unit", []).get_tracer("unit")
    with tracer.start_as_current_span("rpc") as span:
        ids = span.get_span_context()
        assert add_trace_ids(None, "info", {"event": "x"}) == {
            "event": "x",
            "trace_id": format(ids.trace_id, "032x"),
            "span_id": format(ids.span_id, "016x"),
        }
    with trace.use_span(trace.INVALID_SPAN):
        assert add_trace_ids(None, "info", {}) == {}


def test_while_off_no_traceparent_is_recorded_even_inside_a_foreign_span() -> None:
    assert not tracing.enabled()
    with tracing.build_provider("unit", []).get_tracer("unit").start_as_current_span("someone else's"):
        assert tracing.current_traceparent() is None
    headers: list[tuple[str, bytes]] = []
    with tracing.continuing(None, headers):
        pass
    assert headers == []
