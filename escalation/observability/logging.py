"""structlog setup: readable console lines in development, one JSON object per line in production."""

from __future__ import annotations

import logging
import sys

import structlog
from opentelemetry import trace

from escalation.domain import display


def add_trace_ids(logger: object, method_name: str, event_dict: structlog.types.EventDict) -> structlog.types.EventDict:
    """Adds ``trace_id`` (32 hex) and ``span_id`` (16 hex) of the current span, W3C spelling, if any.

    Outside a span, and always while tracing is off (docs/tracing.md), the line is left as it is.
    """
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        event_dict["trace_id"] = format(span.trace_id, "032x")
        event_dict["span_id"] = format(span.span_id, "016x")
    return event_dict


# Rendered by the console renderer as a traceback block of their own: multi-line on purpose.
_TRACEBACK_KEYS = frozenset({"exc_info", "exception", "stack"})


def escape_for_console(
    logger: object, method_name: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    """Writes every logged value as one escaped line (domain/display.py), so that a merchant's text or
    an identifier from a request cannot forge log lines, move the cursor or reverse what follows.

    Values other than strings and numbers are rendered with repr() first, as the console renderer
    would. JSON logs need no such step: json.dumps escapes every control and non-ASCII character.
    """
    for key, value in event_dict.items():
        if key in _TRACEBACK_KEYS or value is None or isinstance(value, bool | int | float):
            continue
        event_dict[key] = display.one_line(value if isinstance(value, str) else repr(value))
    return event_dict


def configure(*, log_format: str = "console", level: str = "info") -> None:
    """Routes structlog and stdlib logging (asyncpg, aiokafka, grpc) through one renderer."""
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        add_trace_ids,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        timestamper,
    ]
    renderer: structlog.types.Processor
    escaping: list[structlog.types.Processor] = []
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer()
        # Without locals: a frame's variables can hold transcripts and other personal data.
        shared.append(
            structlog.processors.ExceptionRenderer(structlog.tracebacks.ExceptionDictTransformer(show_locals=False))
        )
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        escaping.append(escape_for_console)

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *escaping, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Their INFO lines are noise at our INFO level (every metadata refresh, every connection).
    for noisy in ("kafka", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # While Kafka is down aiokafka logs dozens of ERROR lines a second; the relay's own
    # worker.round_failed (with backoff) says the same once per attempt.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
