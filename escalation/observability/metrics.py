"""Prometheus metrics (SPEC §3). Low cardinality: no per-session or per-agent labels."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

GRPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by status code.",
    ["grpc_service", "grpc_method", "grpc_type", "grpc_code"],
)
GRPC_HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time from receiving an RPC to finishing it (streams: their whole life).",
    ["grpc_service", "grpc_method", "grpc_type"],
    buckets=_LATENCY_BUCKETS,
)

SESSIONS_OPENED = Counter("escalation_sessions_opened_total", "Sessions opened, by category.", ["category"])
SESSIONS_CLOSED = Counter("escalation_sessions_closed_total", "Sessions ended, by reason.", ["reason"])
ASSIGNMENT_SATURATION = Histogram(
    "escalation_assignment_saturation",
    "Saturation (open sessions ÷ capacity) of the chosen agent just before each assignment.",
    buckets=(0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0, 1.5, 2.0, 5.0),
)
DEADLINE_LATENESS = Histogram(
    "escalation_deadline_lateness_seconds",
    "How long after its reply deadline or idle deadline (database clock) a session was actually closed.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0),
)
OUTBOX_PENDING = Gauge("escalation_outbox_pending", "Outbox rows waiting for Kafka's ack (parked rows excluded).")
OUTBOX_PARKED = Gauge(
    "escalation_outbox_parked",
    "Outbox rows the relay gave up on; they wait for `escalation outbox retry` (SPEC R7).",
)
OUTBOX_OLDEST_AGE = Gauge(
    "escalation_outbox_oldest_age_seconds", "Age of the oldest unpublished outbox row (0 when none)."
)
TICKETS_PUBLISHED = Counter(
    "escalation_tickets_published_total",
    "Service tickets acknowledged by Kafka (duplicates after a crash count again).",
)
OUTBOX_PUBLISHED = Counter(
    "escalation_outbox_published_total", "Outbox rows acknowledged by Kafka, by topic.", ["topic"]
)
# reason: "unreachable" (connection, timeout, HTTP error status) or "invalid_document" (not a JWK Set).
JWKS_FETCH_FAILURES = Counter(
    "escalation_jwks_fetch_failures_total",
    "JWKS fetches that failed (the last good keys are kept), by reason.",
    ["reason"],
)
STREAMS_CONNECTED = Gauge(
    "escalation_merchant_streams_connected", "Merchant Connect streams open on this server process."
)
SESSIONS_OPEN = Gauge("escalation_sessions_open", "Sessions open right now (all merchants, from the database).")
FIRST_REPLY = Histogram(
    "escalation_first_reply_seconds",
    "From a session's opening to the merchant's first reply.",
    buckets=(5, 10, 20, 30, 45, 60, 90, 120, 150, 180, 240, 300),
)
TLS_CERTIFICATE_EXPIRY = Gauge(
    "escalation_tls_certificate_expiry_timestamp_seconds",
    "notAfter (Unix time) of the certificate the gRPC server presents; 0 without TLS (issue 11).",
)

# The limits of SPEC §3 "Limits" (api/limits.py); no identity label, so an attacker cannot grow the series.
LIMIT_NAMES = (
    "connect_streams_per_identity",
    "unauthenticated_streams",
    "open_session_per_agent",
    "open_session_per_merchant",
    "send_message_per_sender",
    "reply_per_sender",
)
REQUESTS_REFUSED = Counter(
    "escalation_requests_refused_total",
    "Calls and streams refused with RESOURCE_EXHAUSTED because a caller was over a limit, by limit.",
    ["limit"],
)


def _precreate() -> None:
    """Labelled series exist from the start (at 0), so rate() and increase() see their first event."""
    from escalation.domain.session import CloseReason
    from escalation.domain.tickets import DEFAULT_SLA

    for category in DEFAULT_SLA:
        SESSIONS_OPENED.labels(category=category)
    for reason in CloseReason:
        SESSIONS_CLOSED.labels(reason=reason.value)
    for topic in ("escalation.service-tickets.v1", "escalation.merchant-warnings.v1"):
        OUTBOX_PUBLISHED.labels(topic=topic)
    for limit in LIMIT_NAMES:
        REQUESTS_REFUSED.labels(limit=limit)


_precreate()
