"""OpenTelemetry tracing, off unless the standard OTEL_* environment turns it on (docs/tracing.md).

Off (the default) nothing is instrumented: the gRPC server registers no tracing interceptor, asyncpg
and aiokafka are left unwrapped, ``tracer()`` is a no-op tracer and ``current_traceparent()`` answers
None without looking at any context, so the write path pays nothing measurable.

On, it traces every RPC but health (server spans named by the real method, e.g.
``/escalation.v1.PlatformService/CloseSession``), the SQL those spans run, the deadline worker's
closes and the relay's Kafka sends. The W3C ``traceparent`` of the span that ends a session is stored
with its outbox row, and the relay's send continues that trace (SPEC §3, "OpenTelemetry tracing").
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Protocol

import grpc
from opentelemetry import context, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult, _get_from_env_or_default
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

from escalation.store import queries

TRACEPARENT = "traceparent"
# Every span this package starts itself (the deadline worker's) comes from this instrumentation scope.
SCOPE = "escalation"
_W3C = TraceContextTextMapPropagator()


class _Instrumentor(Protocol):
    def uninstrument(self) -> None: ...


class TracingConfigError(ValueError):
    """The OTEL_* environment asks for something this service cannot do."""


@dataclass
class _State:
    provider: TracerProvider | None = None
    tracer: trace.Tracer = field(default_factory=trace.NoOpTracer)
    instrumentors: list[_Instrumentor] = field(default_factory=list)


_state = _State()


def enabled() -> bool:
    """Whether tracing is on in this process (``configure`` ran and ``disable`` did not since)."""
    return _state.provider is not None


def requested(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the standard OpenTelemetry environment asks for traces.

    Yes when OTEL_TRACES_EXPORTER names an exporter other than ``none``, or, when it is unset, when an
    OTLP endpoint (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set; never when
    OTEL_SDK_DISABLED is ``true`` (OpenTelemetry specification, "SDK environment variables").
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return exporters != "none"
    return bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def exporters_from_env(environ: Mapping[str, str] = os.environ) -> list[SpanExporter]:
    """The exporters OTEL_TRACES_EXPORTER names (default ``otlp``): ``otlp`` (HTTP/protobuf), ``console``.

    Raises TracingConfigError, naming every problem at once, for an unknown exporter or an OTLP
    protocol other than http/protobuf (the gRPC OTLP exporter is not installed: it pins grpcio).
    """
    names = [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",") if n.strip()]
    known = {*_EXPORTERS, "none"}
    problems = [f"OTEL_TRACES_EXPORTER={n!r} is not one of otlp, console, none" for n in names if n not in known]
    # The traces-specific variable, when set, overrides the general one (OTLP exporter specification).
    variable = next(
        (
            v
            for v in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
            if environ.get(v, "").strip()
        ),
        None,
    )
    protocol = environ.get(variable, "").strip() if variable else ""
    if variable and "otlp" in names and protocol != "http/protobuf":
        problems.append(f"{variable}={protocol!r}: only http/protobuf is supported (port 4318)")
    if problems:
        raise TracingConfigError("; ".join(problems))
    return [_EXPORTERS[n]() for n in names if n != "none"]


def _otlp_exporter() -> SpanExporter:
    # Imported here: the exporter pulls in an HTTP client that only a traced process needs.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()  # endpoint, headers, timeout, certificate: from OTEL_EXPORTER_OTLP_*


_EXPORTERS: Mapping[str, Callable[[], SpanExporter]] = {"otlp": _otlp_exporter, "console": ConsoleSpanExporter}


def configure_from_env(service_name: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Turns tracing on when the OTEL_* environment asks for it (see ``requested``); True if it did.

    ``service_name`` (e.g. ``escalation-serve``) is the default for OTEL_SERVICE_NAME; the sampler
    comes from OTEL_TRACES_SAMPLER (default parentbased_always_on). The provider becomes the global
    one, and is flushed at exit. Raises TracingConfigError (see ``exporters_from_env``).
    """
    if not requested(environ):
        return False
    exporters = exporters_from_env(environ)
    provider = build_provider(service_name, [BatchSpanProcessor(e) for e in exporters], environ)
    trace.set_tracer_provider(provider)
    configure(provider)
    return True


def build_provider(
    service_name: str, processors: Sequence[SpanProcessor], environ: Mapping[str, str] = os.environ
) -> TracerProvider:
    """A provider whose spans go to ``processors``, sampled by OTEL_TRACES_SAMPLER less orphan queries.

    ``service_name`` is the default for OTEL_SERVICE_NAME (OTEL_RESOURCE_ATTRIBUTES adds to it).
    """
    attributes = {} if environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service_name}
    provider = TracerProvider(resource=Resource.create(attributes), sampler=_WithinWork(_get_from_env_or_default()))
    provider.add_span_processor(_QueryNames())
    for processor in processors:
        provider.add_span_processor(processor)
    return provider


def configure(provider: TracerProvider) -> None:
    """Turns tracing on with ``provider``: instruments asyncpg and aiokafka, arms the server interceptor.

    Tests pass a provider with an in-memory exporter; ``disable`` undoes this.
    """
    # Imported here: a process that does not trace never loads them (they wrap asyncpg and aiokafka).
    from opentelemetry.instrumentation.aiokafka import AIOKafkaInstrumentor
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

    disable()
    _state.provider = provider
    _state.tracer = provider.get_tracer(SCOPE)
    asyncpg_instrumentor = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]
    asyncpg_instrumentor.instrument(tracer_provider=provider)
    kafka_instrumentor = AIOKafkaInstrumentor()
    kafka_instrumentor.instrument(tracer_provider=provider)
    _state.instrumentors = [asyncpg_instrumentor, kafka_instrumentor]


def disable() -> None:
    """Turns tracing off again: unwraps asyncpg and aiokafka; servers built later register no interceptor."""
    for instrumentor in _state.instrumentors:
        instrumentor.uninstrument()
    _state.instrumentors = []
    _state.provider = None
    _state.tracer = trace.NoOpTracer()


def tracer() -> trace.Tracer:
    """The tracer for this package's own spans; a no-op one while tracing is off."""
    return _state.tracer


def server_interceptors() -> Sequence[grpc.aio.ServerInterceptor]:  # type: ignore[type-arg]
    """The interceptors to register outside ours, so spans see the final status: none while tracing is off."""
    if _state.provider is None:
        return []
    from escalation.observability.tracing_grpc import server_interceptor

    return [server_interceptor(_state.provider)]


def current_traceparent() -> str | None:
    """The W3C traceparent (``00-<32 hex trace id>-<16 hex span id>-<2 hex flags>``) of the current span.

    None while tracing is off or outside any span. Stored with an outbox row so the ticket's Kafka
    record continues the trace of the request (or worker round) that ended the session.
    """
    if _state.provider is None:
        return None
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return carrier.get(TRACEPARENT)


def continuing(traceparent: str | None, headers: list[tuple[str, bytes]]) -> AbstractContextManager[object]:
    """Inside: a Kafka record sent with ``headers`` carries the trace ``traceparent`` (stored) names.

    Tracing on: the stored context is made current, so the aiokafka instrumentation's send span is its
    child and injects its own traceparent (same trace id). Tracing off: the stored value is added to
    ``headers`` as it is. Without a stored value nothing is added (docs/tracing.md, header contract).
    A plain function, not a generator: the relay calls it once per row.
    """
    if traceparent is None:
        return _NOTHING
    if _state.provider is None:
        headers.append((TRACEPARENT, traceparent.encode()))
        return _NOTHING
    return _attached(_W3C.extract({TRACEPARENT: traceparent}))


_NOTHING = nullcontext()


@contextmanager
def _attached(ctx: context.Context) -> Iterator[None]:
    token = context.attach(ctx)
    try:
        yield
    finally:
        context.detach(token)


class _WithinWork(Sampler):
    """Drops a database span that has no parent: pool checks and worker polls that find nothing to do.

    Everything else is up to ``inner`` (OTEL_TRACES_SAMPLER). A query inside an RPC or a worker's close
    has a parent and is kept whenever that parent is.
    """

    def __init__(self, inner: Sampler) -> None:
        self._inner = inner

    def should_sample(
        self,
        parent_context: context.Context | None,
        trace_id: int,
        name: str,
        kind: trace.SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[trace.Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        orphan = not trace.get_current_span(parent_context).get_span_context().is_valid
        if orphan and attributes and ("db.system" in attributes or "db.system.name" in attributes):
            return SamplingResult(Decision.DROP)
        return self._inner.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"WithinWork{{{self._inner.get_description()}}}"


class _QueryNames(SpanProcessor):
    """Names a database span after its query in store/sql (``claim_outbox``), not its first word.

    Our queries begin with ``--`` comments, which the asyncpg instrumentation would take as the name.
    """

    def __init__(self) -> None:
        self._names = {text: name for name, text in queries.named().items()}

    def on_start(self, span: trace.Span, parent_context: context.Context | None = None) -> None:
        if not isinstance(span, ReadableSpan) or span.attributes is None:
            return
        statement = span.attributes.get("db.statement", span.attributes.get("db.query.text"))
        if isinstance(statement, str) and statement in self._names:
            span.update_name(self._names[statement])

    def on_end(self, span: ReadableSpan) -> None:
        pass
