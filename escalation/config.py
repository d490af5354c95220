"""Configuration from the environment, validated once at start.

Every setting is one ``ESCALATION_*`` variable; the README's configuration table lists them. A bad
value raises ConfigError whose message is one line naming the variable; every bad variable is
collected first and reported in that one line, joined by "; " (SPEC §3: one clear line), so an
operator fixes them all in one round. The CLI prints it and exits with status 2.
"""

from __future__ import annotations

import ipaddress
import os
import re
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

from escalation import transport_security
from escalation.domain.limits import DEFAULT_BATCH_SIZE
from escalation.domain.tickets import DEFAULT_SLA
from escalation.domain.token_bucket import Rate
from escalation.transport_security import GrpcTls, KafkaSecurity

T = TypeVar("T")

LOG_FORMATS = ("console", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
JWT_ALGORITHMS = ("HS256", "RS256")
# Below this PyJWT warns, and an HMAC key that short is guessable anyway.
MIN_HS256_SECRET_BYTES = 32


_JWT_VARIABLES = (
    "ESCALATION_JWT_ALGORITHM",
    "ESCALATION_JWT_SECRET",
    "ESCALATION_JWT_PUBLIC_KEY",
    "ESCALATION_JWT_PUBLIC_KEY_FILE",
    "ESCALATION_JWT_JWKS_URL",
)


@dataclass(frozen=True)
class Variable:
    """One ``ESCALATION_*`` variable as `escalation COMMAND --help` lists it."""

    name: str
    default: str
    meaning: str
    # Commands that read it: "serve", "migrate", "deadlines", "outbox", "warnings", "tail"; "*" for all.
    used_by: frozenset[str]


_ALL, _WORKERS = frozenset({"*"}), frozenset({"deadlines", "outbox", "warnings"})
_DB = frozenset({"serve", "migrate"}) | _WORKERS
_SESSIONS = frozenset({"serve", "deadlines"})
_KAFKA = frozenset({"outbox", "tail"})
_SERVE = frozenset({"serve"})
# The one list of variables (a test checks it against what ``load`` reads); --help is generated from it.
VARIABLES: tuple[Variable, ...] = (
    Variable("ESCALATION_DATABASE_URL", "required", "postgresql://user@host:5432/db", _DB),
    Variable("ESCALATION_DB_POOL_MIN", "2", "connection pool minimum per process", _DB - {"migrate"}),
    Variable("ESCALATION_DB_POOL_MAX", "20", "connection pool maximum per process", _DB - {"migrate"}),
    Variable("ESCALATION_DB_COMMAND_TIMEOUT_SECONDS", "10", "per-statement cap", _DB - {"migrate"}),
    Variable("ESCALATION_KAFKA_BOOTSTRAP", "required", "HOST:PORT[,HOST:PORT…]", _KAFKA),
    Variable("ESCALATION_KAFKA_IDEMPOTENCE", "true", "idempotent producer", _KAFKA),
    Variable("ESCALATION_KAFKA_TOPIC_PARTITIONS", "6", "partitions of the topics the relay creates", _KAFKA),
    Variable("ESCALATION_KAFKA_REPLICATION_FACTOR", "3", "their replication factor", _KAFKA),
    Variable("ESCALATION_KAFKA_TOPIC_PREFIX", "empty", "prepended to every topic name", _KAFKA),
    Variable("ESCALATION_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL", _KAFKA),
    Variable("ESCALATION_KAFKA_SASL_MECHANISM", "unset", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", _KAFKA),
    Variable("ESCALATION_KAFKA_SASL_USERNAME", "unset", "SASL user (or ..._USERNAME_FILE)", _KAFKA),
    Variable("ESCALATION_KAFKA_SASL_USERNAME_FILE", "unset", "file holding the SASL user", _KAFKA),
    Variable("ESCALATION_KAFKA_SASL_PASSWORD", "unset", "SASL password (or ..._PASSWORD_FILE)", _KAFKA),
    Variable("ESCALATION_KAFKA_SASL_PASSWORD_FILE", "unset", "file holding the SASL password", _KAFKA),
    Variable("ESCALATION_KAFKA_SSL_CA_FILE", "system trust store", "PEM CA of the brokers", _KAFKA),
    Variable("ESCALATION_KAFKA_SSL_CERT_FILE", "unset", "PEM client certificate (brokers requiring one)", _KAFKA),
    Variable("ESCALATION_KAFKA_SSL_KEY_FILE", "unset", "PEM key of that certificate", _KAFKA),
    Variable("ESCALATION_GRPC_ADDR", "0.0.0.0:50051", "gRPC listen address", frozenset({"serve"})),
    Variable("ESCALATION_GRPC_TLS_CERT_FILE", "unset (plaintext)", "PEM server certificate chain", _SERVE),
    Variable("ESCALATION_GRPC_TLS_KEY_FILE", "unset", "PEM key of that certificate", _SERVE),
    Variable("ESCALATION_GRPC_TLS_CLIENT_CA_FILE", "unset", "PEM CA: require client certificates (mTLS)", _SERVE),
    Variable(
        "ESCALATION_METRICS_ADDR",
        "0.0.0.0:9464",
        "HTTP listen address: /metrics, /livez, /readyz",
        frozenset({"serve"}) | _WORKERS,
    ),
    Variable(
        "ESCALATION_LIVENESS_STALL_SECONDS",
        "120",
        "/livez fails when a worker round or the event loop is this late",
        frozenset({"serve"}) | _WORKERS,
    ),
    Variable(
        "ESCALATION_GRPC_MAX_CONNECTION_AGE_SECONDS",
        "600",
        "GOAWAY after this (±10%) so clients rebalance; 0: never",
        frozenset({"serve"}),
    ),
    Variable(
        "ESCALATION_GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS",
        "30",
        "calls on an aged connection get this long, then are cut",
        frozenset({"serve"}),
    ),
    Variable("ESCALATION_JWT_ALGORITHM", "HS256", "HS256 or RS256", frozenset({"serve"})),
    Variable("ESCALATION_JWT_SECRET", "required for HS256", "shared secret, at least 32 bytes", frozenset({"serve"})),
    Variable("ESCALATION_JWT_PUBLIC_KEY", "required for RS256", "PEM public key", frozenset({"serve"})),
    Variable("ESCALATION_JWT_PUBLIC_KEY_FILE", "unset", "PEM public key file", frozenset({"serve"})),
    Variable("ESCALATION_JWT_JWKS_URL", "unset", "JWKS of the identity provider (RS256/ES256)", _SERVE),
    Variable("ESCALATION_JWT_JWKS_CACHE_SECONDS", "300", "JWKS refetched in the background after this", _SERVE),
    Variable("ESCALATION_JWT_JWKS_MIN_REFRESH_SECONDS", "30", "unknown kid: at most one refetch per this", _SERVE),
    Variable("ESCALATION_JWT_AUDIENCE", "unset", "required aud claim", frozenset({"serve"})),
    Variable("ESCALATION_JWT_ISSUER", "unset", "required iss claim", frozenset({"serve"})),
    Variable("ESCALATION_JWT_LEEWAY_SECONDS", "30", "clock skew allowed on exp", frozenset({"serve"})),
    Variable("ESCALATION_LOG_FORMAT", "json", "json or console", _ALL),
    Variable("ESCALATION_BUILD_REVISION", "unset", "source revision, baked into the image", _ALL),
    Variable("ESCALATION_LOG_LEVEL", "info", "debug, info, warning or error", _ALL),
    Variable(
        "ESCALATION_SHUTDOWN_GRACE_SECONDS", "10", "in-flight RPCs get this long on SIGTERM", frozenset({"serve"})
    ),
    Variable("ESCALATION_REMIND_BEFORE_SECONDS", "60", "reply reminder this long before the deadline", _SESSIONS),
    Variable("ESCALATION_TICKET_SLA", "spec defaults", "CATEGORY=DURATION,… e.g. REFUND=1h", _SESSIONS),
    Variable("ESCALATION_DEV_OVERRIDE_REPLY_TIMEOUT_SECONDS", "unset", "development only", _SESSIONS),
    Variable("ESCALATION_DEV_OVERRIDE_IDLE_TIMEOUT_SECONDS", "unset", "development only", _SESSIONS),
    Variable(
        "ESCALATION_DEADLINE_BATCH_SIZE", str(DEFAULT_BATCH_SIZE), "sessions per transaction", frozenset({"deadlines"})
    ),
    Variable("ESCALATION_DEADLINE_POLL_SECONDS", "2", "longest sleep between rounds", frozenset({"deadlines"})),
    Variable("ESCALATION_OUTBOX_BATCH_SIZE", str(DEFAULT_BATCH_SIZE), "rows per claim", frozenset({"outbox"})),
    Variable("ESCALATION_OUTBOX_POLL_SECONDS", "1", "longest sleep between rounds", frozenset({"outbox"})),
    Variable(
        "ESCALATION_OUTBOX_MAX_ATTEMPTS",
        "5",
        "failures (while Kafka takes other rows) before a row is parked",
        frozenset({"outbox"}),
    ),
    Variable(
        "ESCALATION_OUTBOX_RETENTION_HOURS", "168", "published rows are deleted after this", frozenset({"outbox"})
    ),
    Variable("ESCALATION_STREAM_HEARTBEAT_SECONDS", "15", "heartbeat after this long idle", frozenset({"serve"})),
    Variable("ESCALATION_STREAM_WRITE_TIMEOUT_SECONDS", "10", "a blocked write ends the stream", frozenset({"serve"})),
    Variable("ESCALATION_STREAM_MAX_LAG_EVENTS", "10000", "a reader this far behind is cut off", frozenset({"serve"})),
    Variable(
        "ESCALATION_CONNECT_STREAMS_PER_IDENTITY",
        "5",
        "concurrent Connect streams per merchant agent, per replica; the newest is refused",
        _SERVE,
    ),
    Variable(
        "ESCALATION_WATCH_STREAMS_PER_IDENTITY",
        "20",
        "concurrent WatchSession streams per platform agent, per replica; the newest is refused",
        _SERVE,
    ),
    Variable(
        "ESCALATION_UNAUTHENTICATED_STREAMS",
        "200",
        "concurrent Health.Watch and reflection streams, per replica",
        _SERVE,
    ),
    Variable("ESCALATION_GRPC_MAX_CONCURRENT_STREAMS", "100", "streams per HTTP/2 connection", _SERVE),
    Variable(
        "ESCALATION_RATE_OPEN_SESSION_PER_AGENT",
        "5/s,50",
        "OpenSession per platform agent: RATE/s|m|h,BURST, per replica",
        _SERVE,
    ),
    Variable(
        "ESCALATION_RATE_OPEN_SESSION_PER_MERCHANT",
        "1/s,30",
        "OpenSession per target merchant, per replica",
        _SERVE,
    ),
    Variable(
        "ESCALATION_RATE_SEND_MESSAGE_PER_SENDER",
        "5/s,50",
        "SendMessage per platform agent, per replica",
        _SERVE,
    ),
    Variable(
        "ESCALATION_RATE_REPLY_PER_SENDER",
        "2/s,20",
        "merchant replies (Reply and Connect) per agent, per replica",
        _SERVE,
    ),
    Variable("ESCALATION_EVENT_RETENTION_HOURS", "72", "merchant events kept this long", frozenset({"deadlines"})),
    Variable(
        "ESCALATION_WARNING_REPLY_RATE_THRESHOLD", "0.8", "warn below this 3-minute rate", frozenset({"warnings"})
    ),
    Variable("ESCALATION_WARNING_MIN_SESSIONS", "5", "rated sessions needed first", frozenset({"warnings"})),
    Variable("ESCALATION_WARNING_AVERAGE_RESPONSE_SECONDS", "90", "warn above this average", frozenset({"warnings"})),
    Variable("ESCALATION_WARNING_INTERVAL_SECONDS", "300", "how often to check", frozenset({"warnings"})),
)


def variables_help(command: str) -> str:
    """The environment variables ``command`` reads, one per line, for its --help epilog."""
    rows = [v for v in VARIABLES if command in v.used_by or "*" in v.used_by]
    width = max(len(v.name) for v in rows)
    lines = [f"  {v.name:<{width}}  {v.meaning} ({v.default})" for v in rows]
    return "environment (invalid values are all reported at once; exit status 2):\n" + "\n".join(lines)


class ConfigError(Exception):
    """A configuration variable has a bad value; the message is one line naming it."""


@dataclass(frozen=True)
class JwtSettings:
    algorithm: str = "HS256"
    # HS256: the shared secret. RS256: the PEM public key (verification only). Empty: JWKS only.
    key: str = field(default="", repr=False)  # never in a repr (tracebacks, logs)
    audience: str | None = None
    issuer: str | None = None
    leeway_seconds: int = 30
    # Keys by ``kid`` from the identity provider (escalation/jwks.py), besides or instead of ``key``.
    jwks_url: str | None = field(default=None, repr=False)  # may carry credentials
    jwks_cache_seconds: float = 300.0
    jwks_min_refresh_seconds: float = 30.0


# A platform tool working a queue opens and writes a few sessions a second; a person types far slower.
_OPEN_SESSION_PER_AGENT = Rate(per_second=5, burst=50)
# Even a big shop gets an escalation a second only at the peak of a sale; 30 at once is a day's worth.
_OPEN_SESSION_PER_MERCHANT = Rate(per_second=1, burst=30)
_SEND_MESSAGE_PER_SENDER = Rate(per_second=5, burst=50)
# A merchant agent answers by hand or with a few quick replies in a row.
_REPLY_PER_SENDER = Rate(per_second=2, burst=20)


@dataclass(frozen=True)
class LimitSettings:
    """Per-identity caps (SPEC §3 "Limits"), each kept in one process: N replicas allow N times as much.

    The defaults sit well above what a person at a keyboard or a platform tool working a queue does;
    docs/security.md explains each.
    """

    # Concurrent MerchantService.Connect streams of one (merchant_id, agent id); the newest is refused.
    connect_streams_per_identity: int = 5
    # Concurrent PlatformService.WatchSession streams of one platform agent (sub); the newest is refused.
    # A platform tool may watch a few sessions at once.
    watch_streams_per_identity: int = 20
    # Concurrent streams of the services that need no token (Health.Watch, reflection).
    unauthenticated_streams: int = 200
    # HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: streams one client connection may have open at a time.
    max_concurrent_streams: int = 100
    open_session_per_agent: Rate = _OPEN_SESSION_PER_AGENT
    open_session_per_merchant: Rate = _OPEN_SESSION_PER_MERCHANT
    send_message_per_sender: Rate = _SEND_MESSAGE_PER_SENDER
    reply_per_sender: Rate = _REPLY_PER_SENDER


@dataclass(frozen=True)
class Settings:
    # Holds the database password: never in a repr (tracebacks, logs); docs/production.md "Secrets".
    database_url: str | None = field(default=None, repr=False)
    db_pool_min: int = 2
    db_pool_max: int = 20
    db_command_timeout_seconds: float = 10.0
    kafka_bootstrap: str | None = None
    # Off only for brokers without InitProducerId (the embedded test broker); on for Apache Kafka.
    kafka_idempotence: bool = True
    grpc_addr: str = "0.0.0.0:50051"
    # None: plaintext gRPC (loopback, or TLS terminated by a mesh/balancer).
    grpc_tls: GrpcTls | None = None
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)
    # The source revision the image was built from (ESCALATION_BUILD_REVISION); "" when unknown.
    build_revision: str = ""
    metrics_addr: str = "0.0.0.0:9464"
    # /livez fails once a worker round or serve's event loop is this many seconds overdue.
    liveness_stall_seconds: float = 120.0
    # Each gRPC connection is sent GOAWAY after this long (gRPC adds ±10% jitter), so clients behind
    # an L4 balancer reconnect and spread over new replicas; 0 keeps connections forever.
    grpc_max_connection_age_seconds: float = 600.0
    # Calls still running on a connection past its age get this long before they are cut (streams
    # then end UNAVAILABLE and the client resumes from its cursor elsewhere).
    grpc_max_connection_age_grace_seconds: float = 30.0
    # None when no JWT variable is set: fine for `migrate` and the workers, an error for `serve`.
    jwt: JwtSettings | None = None
    log_format: str = "json"
    log_level: str = "info"
    # Seconds in-flight RPCs get to finish on SIGTERM before they are cancelled.
    shutdown_grace_seconds: float = 10.0
    # The reply reminder is due this many seconds before the deadline (SPEC R5).
    remind_before_seconds: int = 60
    # Ticket SLA (handle_by = close time + this) per category name (SPEC R7).
    ticket_sla: Mapping[str, timedelta] = field(default_factory=lambda: dict(DEFAULT_SLA))
    # Development and tests only: every merchant's reply timeout becomes this many seconds.
    dev_override_reply_timeout_seconds: float | None = None
    # Development and tests only: every merchant's idle timeout (SPEC R12) becomes this many seconds.
    dev_override_idle_timeout_seconds: float | None = None
    deadline_batch_size: int = DEFAULT_BATCH_SIZE
    deadline_poll_seconds: float = 2.0
    outbox_batch_size: int = DEFAULT_BATCH_SIZE
    outbox_poll_seconds: float = 1.0
    outbox_retention_hours: float = 168.0
    # A row failing this many rounds while the broker acknowledges others is parked (docs/delivery.md).
    outbox_max_attempts: int = 5
    kafka_topic_partitions: int = 6
    kafka_replication_factor: int = 3
    kafka_topic_prefix: str = ""
    stream_heartbeat_seconds: float = 15.0
    stream_write_timeout_seconds: float = 10.0
    stream_max_lag_events: int = 10_000
    event_retention_hours: float = 72.0
    # Merchant warnings (SPEC R10): the session 3-minute rate below this fraction, or the average
    # response above this many seconds, given at least this many rated sessions in the trailing 24 h.
    warning_reply_rate_threshold: float = 0.8
    warning_min_sessions: int = 5
    warning_average_response_seconds: float = 90.0
    # How often `escalation worker warnings` checks.
    warning_interval_seconds: float = 300.0
    limits: LimitSettings = field(default_factory=LimitSettings)

    def require_jwt(self) -> JwtSettings:
        if self.jwt is None:
            raise ConfigError(
                "ESCALATION_JWT_SECRET (HS256), ESCALATION_JWT_PUBLIC_KEY[_FILE] (RS256) "
                "or ESCALATION_JWT_JWKS_URL is required"
            )
        return self.jwt

    def require_kafka_bootstrap(self) -> str:
        if not self.kafka_bootstrap:
            raise ConfigError("ESCALATION_KAFKA_BOOTSTRAP is required (e.g. kafka-1:9092,kafka-2:9092)")
        return self.kafka_bootstrap

    def require_database_url(self) -> str:
        if not self.database_url:
            raise ConfigError("ESCALATION_DATABASE_URL is required (e.g. postgresql://user@host:5432/escalation)")
        return self.database_url


class _Env(Mapping[str, str]):
    """The environment being read, and the errors found so far: ``load`` reports them all at once."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self.errors: list[str] = []

    def __getitem__(self, key: str) -> str:
        return self._env[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._env)

    def __len__(self) -> int:
        return len(self._env)


def _get(env: Mapping[str, str], name: str, parse: Callable[[str], T], default: T, hint: str) -> T:
    """The parsed value of ``name`` or ``default`` when unset; a bad value is noted (``_Env``) or raised."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return parse(raw)
    except (ValueError, OSError) as exc:
        shown = shown_value(name, raw)
        message = f"{name}={shown!r} is invalid: {hint} ({str(exc).replace(raw, shown)})"
    if isinstance(env, _Env):
        env.errors.append(message)
        return default
    raise ConfigError(message)


# Variables whose whole value is a secret (ESCALATION_JWT_SECRET, ESCALATION_KAFKA_SASL_PASSWORD, …);
# their *_FILE companions hold paths, which are shown.
_HIDDEN_VARIABLE = re.compile(r"(PASSWORD|SECRET|TOKEN|PRIVATE_KEY)\Z")
# The user-info of a URL (or anything with an '@'): what precedes the last '@', after any scheme.
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)?(?P<userinfo>.*)@", re.DOTALL)
_QUERY_CREDENTIAL = re.compile(r"(?P<key>password=)[^&\s]*", re.IGNORECASE)
HIDDEN = "<hidden>"


def shown_value(name: str, raw: str) -> str:
    """``raw`` as a configuration error may print it: no secret, ever (docs/production.md "Secrets").

    A secret variable's value is replaced whole by ``<hidden>``; in any other value the password of a
    URL's user-info (``postgresql://app:***@db/x``, also when the URL is malformed) and a
    ``password=`` query parameter are replaced by ``***``.
    """
    if _HIDDEN_VARIABLE.search(name):
        return HIDDEN

    def userinfo(match: re.Match[str]) -> str:
        user, colon, _ = match["userinfo"].partition(":")
        return f"{match['scheme'] or ''}{user + ':***' if colon else '***'}@"

    return _QUERY_CREDENTIAL.sub(r"\g<key>***", _USERINFO.sub(userinfo, raw))


N = TypeVar("N", int, float)


def _in_range(kind: Callable[[str], N], low: N, high: N) -> Callable[[str], N]:
    def parse(raw: str) -> N:
        value = kind(raw)
        if not low <= value <= high:
            raise ValueError(f"{value} is outside {low}..{high}")
        return value

    return parse


def _int_in(low: int, high: int) -> Callable[[str], int]:
    return _in_range(int, low, high)


def _float_in(low: float, high: float) -> Callable[[str], float]:
    return _in_range(float, low, high)


def _topic_prefix(raw: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._-]{0,100}", raw):
        raise ValueError("only letters, digits, '.', '_' and '-'")
    return raw


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError("must be greater than 0")
    return value


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        for option in options:
            if raw.lower() == option.lower():
                return option
        raise ValueError(f"expected one of {', '.join(options)}")

    return parse


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _host_port(raw: str) -> str:
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected HOST:PORT")
    return raw


def _postgres_url(raw: str) -> str:
    if not raw.startswith(("postgresql://", "postgres://")):
        raise ValueError("expected a postgresql:// URL")
    return raw


def _bootstrap(raw: str) -> str:
    for part in raw.split(","):
        _host_port(part.strip())
    return raw


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_RATE_PER_SECOND = 1_000_000.0
MAX_BURST = 1_000_000


def _rate(raw: str) -> Rate:
    """``5/s,50``: 5 tokens a second (``/m`` a minute, ``/h`` an hour), bursts of up to 50."""
    amount, sep, rest = raw.strip().partition("/")
    unit, comma, burst = rest.partition(",")
    unit = unit.strip()
    if not sep or not comma or unit not in ("s", "m", "h"):
        raise ValueError("expected RATE/s,BURST (or /m, /h), e.g. 5/s,50")
    per_second = float(amount) / _DURATION_UNITS[unit]
    if not 0 < per_second <= MAX_RATE_PER_SECOND:
        raise ValueError(f"the rate must be above 0 and at most {MAX_RATE_PER_SECOND:g}/s")
    size = int(burst.strip())
    if not 1 <= size <= MAX_BURST:
        raise ValueError(f"the burst must be 1..{MAX_BURST}")
    return Rate(per_second=per_second, burst=size)


def _limits(env: Mapping[str, str]) -> LimitSettings:
    d = LimitSettings()
    hint = "RATE/s,BURST (or /m, /h), e.g. 5/s,50"
    return LimitSettings(
        connect_streams_per_identity=_get(
            env,
            "ESCALATION_CONNECT_STREAMS_PER_IDENTITY",
            _int_in(1, 1_000_000),
            d.connect_streams_per_identity,
            "1..1000000",
        ),
        watch_streams_per_identity=_get(
            env,
            "ESCALATION_WATCH_STREAMS_PER_IDENTITY",
            _int_in(1, 1_000_000),
            d.watch_streams_per_identity,
            "1..1000000",
        ),
        unauthenticated_streams=_get(
            env, "ESCALATION_UNAUTHENTICATED_STREAMS", _int_in(1, 1_000_000), d.unauthenticated_streams, "1..1000000"
        ),
        max_concurrent_streams=_get(
            env, "ESCALATION_GRPC_MAX_CONCURRENT_STREAMS", _int_in(1, 1_000_000), d.max_concurrent_streams, "1..1000000"
        ),
        open_session_per_agent=_get(
            env, "ESCALATION_RATE_OPEN_SESSION_PER_AGENT", _rate, d.open_session_per_agent, hint
        ),
        open_session_per_merchant=_get(
            env, "ESCALATION_RATE_OPEN_SESSION_PER_MERCHANT", _rate, d.open_session_per_merchant, hint
        ),
        send_message_per_sender=_get(
            env, "ESCALATION_RATE_SEND_MESSAGE_PER_SENDER", _rate, d.send_message_per_sender, hint
        ),
        reply_per_sender=_get(env, "ESCALATION_RATE_REPLY_PER_SENDER", _rate, d.reply_per_sender, hint),
    )


def _sla(raw: str) -> dict[str, timedelta]:
    """``REFUND=2h,LOGISTICS=1d``: overrides on top of the spec's defaults."""
    table = dict(DEFAULT_SLA)
    for item in raw.split(","):
        name, sep, value = item.strip().partition("=")
        name = name.strip().upper()
        if not sep or name not in table:
            raise ValueError(f"expected CATEGORY=DURATION with CATEGORY one of {', '.join(DEFAULT_SLA)}")
        value = value.strip()
        if len(value) < 2 or value[-1] not in _DURATION_UNITS or not value[:-1].isdigit() or int(value[:-1]) <= 0:
            raise ValueError(f"{value!r} is not a duration like 90m, 2h or 1d")
        table[name] = timedelta(seconds=int(value[:-1]) * _DURATION_UNITS[value[-1]])
    return table


def _jwks_url(raw: str) -> str:
    """An https URL, or http on a loopback host (``localhost``, 127.0.0.0/8, ``[::1]``); ValueError otherwise."""
    parts = urllib.parse.urlsplit(raw)
    host = parts.hostname or ""
    _ = parts.port  # ValueError on a malformed port
    if (parts.scheme == "https" and host) or (parts.scheme == "http" and _is_loopback(host)):
        return raw
    raise ValueError("keys must come over https")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_REVISION = re.compile(r"[A-Za-z0-9._+-]{1,64}")


def _revision(raw: str) -> str:
    if not _REVISION.fullmatch(raw):
        raise ValueError("1..64 letters, digits, '.', '_', '+' or '-'")
    return raw


def _jwt(env: Mapping[str, str]) -> JwtSettings | None:
    if not any(env.get(name) for name in _JWT_VARIABLES):
        return None
    jwks_url = _get(env, "ESCALATION_JWT_JWKS_URL", _jwks_url, None, "an https:// URL (http only on loopback)")
    static = any(env.get(name) for name in _JWT_VARIABLES[1:4])
    algorithm = _get(env, "ESCALATION_JWT_ALGORITHM", _choice(JWT_ALGORITHMS), "HS256", "HS256 or RS256")
    if not static and jwks_url:
        key = ""  # JWKS only: every token must name a kid the identity provider publishes
    elif algorithm == "HS256":
        key = env.get("ESCALATION_JWT_SECRET", "")
        if not key:
            raise ConfigError("ESCALATION_JWT_SECRET is required for HS256 (at least 32 bytes)")
        if len(key.encode()) < MIN_HS256_SECRET_BYTES:
            raise ConfigError(
                f"ESCALATION_JWT_SECRET is too short: HS256 needs at least {MIN_HS256_SECRET_BYTES} bytes"
            )
    else:
        key_file = env.get("ESCALATION_JWT_PUBLIC_KEY_FILE", "")
        key = _get(env, "ESCALATION_JWT_PUBLIC_KEY_FILE", lambda p: Path(p).read_text(), "", "a readable PEM file")
        if not key:
            key = env.get("ESCALATION_JWT_PUBLIC_KEY", "")
        if "BEGIN PUBLIC KEY" not in key:
            where = "ESCALATION_JWT_PUBLIC_KEY_FILE" if key_file else "ESCALATION_JWT_PUBLIC_KEY"
            raise ConfigError(f"{where} must hold a PEM public key for RS256")
    return JwtSettings(
        algorithm=algorithm,
        key=key,
        audience=env.get("ESCALATION_JWT_AUDIENCE") or None,
        issuer=env.get("ESCALATION_JWT_ISSUER") or None,
        leeway_seconds=_get(env, "ESCALATION_JWT_LEEWAY_SECONDS", _int_in(0, 300), 30, "seconds, 0..300"),
        jwks_url=jwks_url,
        jwks_cache_seconds=_get(env, "ESCALATION_JWT_JWKS_CACHE_SECONDS", _float_in(1, 86_400), 300.0, "1..86400"),
        jwks_min_refresh_seconds=_get(
            # 0 would remove the rate limit: every made-up kid would cost the provider a request.
            env,
            "ESCALATION_JWT_JWKS_MIN_REFRESH_SECONDS",
            _float_in(1, 3600),
            30.0,
            "seconds, 1..3600",
        ),
    )


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Reads and validates every setting.

    Raises ConfigError naming every bad variable, in one line joined by "; " (SPEC §3).
    """
    env = _Env(os.environ if env is None else env)
    pool_min = _get(env, "ESCALATION_DB_POOL_MIN", _int_in(0, 1000), 2, "an integer 0..1000")
    pool_max = _get(env, "ESCALATION_DB_POOL_MAX", _int_in(1, 1000), 20, "an integer 1..1000")
    if pool_min > pool_max:
        env.errors.append(f"ESCALATION_DB_POOL_MIN={pool_min} is larger than ESCALATION_DB_POOL_MAX={pool_max}")
    try:
        jwt = _jwt(env)
    except ConfigError as exc:
        env.errors.append(str(exc))
        jwt = None
    settings = Settings(
        database_url=_get(env, "ESCALATION_DATABASE_URL", _postgres_url, None, "a postgresql:// URL"),
        db_pool_min=pool_min,
        db_pool_max=pool_max,
        db_command_timeout_seconds=_get(
            env, "ESCALATION_DB_COMMAND_TIMEOUT_SECONDS", _positive_float, 10.0, "seconds > 0"
        ),
        kafka_bootstrap=_get(env, "ESCALATION_KAFKA_BOOTSTRAP", _bootstrap, None, "HOST:PORT[,HOST:PORT...]"),
        kafka_idempotence=_get(env, "ESCALATION_KAFKA_IDEMPOTENCE", _bool, True, "true or false"),
        grpc_addr=_get(env, "ESCALATION_GRPC_ADDR", _host_port, "0.0.0.0:50051", "HOST:PORT"),
        grpc_tls=transport_security.grpc_tls(env, env.errors),
        kafka_security=transport_security.kafka_security(env, env.errors),
        build_revision=_get(env, "ESCALATION_BUILD_REVISION", _revision, "", "e.g. a git commit"),
        metrics_addr=_get(env, "ESCALATION_METRICS_ADDR", _host_port, "0.0.0.0:9464", "HOST:PORT"),
        liveness_stall_seconds=_get(
            env, "ESCALATION_LIVENESS_STALL_SECONDS", _float_in(1, 86_400), 120.0, "seconds, 1..86400"
        ),
        grpc_max_connection_age_seconds=_get(
            env, "ESCALATION_GRPC_MAX_CONNECTION_AGE_SECONDS", _float_in(0, 86_400 * 30), 600.0, "seconds, 0: never"
        ),
        grpc_max_connection_age_grace_seconds=_get(
            env, "ESCALATION_GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS", _float_in(0, 86_400), 30.0, "seconds"
        ),
        jwt=jwt,
        log_format=_get(env, "ESCALATION_LOG_FORMAT", _choice(LOG_FORMATS), "json", "console or json"),
        log_level=_get(env, "ESCALATION_LOG_LEVEL", _choice(LOG_LEVELS), "info", "debug, info, warning or error"),
        shutdown_grace_seconds=_get(env, "ESCALATION_SHUTDOWN_GRACE_SECONDS", _positive_float, 10.0, "seconds > 0"),
        remind_before_seconds=_get(env, "ESCALATION_REMIND_BEFORE_SECONDS", _int_in(1, 3600), 60, "seconds, 1..3600"),
        ticket_sla=_get(env, "ESCALATION_TICKET_SLA", _sla, dict(DEFAULT_SLA), "e.g. REFUND=2h,LOGISTICS=1d"),
        dev_override_reply_timeout_seconds=_get(
            env, "ESCALATION_DEV_OVERRIDE_REPLY_TIMEOUT_SECONDS", _float_in(0.1, 3600), None, "seconds, 0.1..3600"
        ),
        dev_override_idle_timeout_seconds=_get(
            env, "ESCALATION_DEV_OVERRIDE_IDLE_TIMEOUT_SECONDS", _float_in(0.1, 7200), None, "seconds, 0.1..7200"
        ),
        deadline_batch_size=_get(
            env, "ESCALATION_DEADLINE_BATCH_SIZE", _int_in(1, 10_000), DEFAULT_BATCH_SIZE, "1..10000"
        ),
        deadline_poll_seconds=_get(
            env, "ESCALATION_DEADLINE_POLL_SECONDS", _float_in(0.05, 60), 2.0, "seconds, 0.05..60"
        ),
        outbox_batch_size=_get(env, "ESCALATION_OUTBOX_BATCH_SIZE", _int_in(1, 10_000), DEFAULT_BATCH_SIZE, "1..10000"),
        outbox_poll_seconds=_get(env, "ESCALATION_OUTBOX_POLL_SECONDS", _float_in(0.05, 60), 1.0, "seconds, 0.05..60"),
        outbox_retention_hours=_get(env, "ESCALATION_OUTBOX_RETENTION_HOURS", _float_in(0.01, 8760), 168.0, "hours"),
        outbox_max_attempts=_get(env, "ESCALATION_OUTBOX_MAX_ATTEMPTS", _int_in(1, 1000), 5, "1..1000"),
        kafka_topic_partitions=_get(env, "ESCALATION_KAFKA_TOPIC_PARTITIONS", _int_in(1, 10_000), 6, "1..10000"),
        kafka_replication_factor=_get(env, "ESCALATION_KAFKA_REPLICATION_FACTOR", _int_in(1, 100), 3, "1..100"),
        stream_heartbeat_seconds=_get(env, "ESCALATION_STREAM_HEARTBEAT_SECONDS", _float_in(0.1, 300), 15.0, "seconds"),
        stream_write_timeout_seconds=_get(
            env, "ESCALATION_STREAM_WRITE_TIMEOUT_SECONDS", _float_in(0.1, 300), 10.0, "seconds"
        ),
        stream_max_lag_events=_get(env, "ESCALATION_STREAM_MAX_LAG_EVENTS", _int_in(10, 10_000_000), 10_000, "events"),
        event_retention_hours=_get(env, "ESCALATION_EVENT_RETENTION_HOURS", _float_in(0.001, 8760), 72.0, "hours"),
        kafka_topic_prefix=_get(
            env, "ESCALATION_KAFKA_TOPIC_PREFIX", _topic_prefix, "", "letters, digits, '.', '_', '-'"
        ),
        warning_reply_rate_threshold=_get(
            env, "ESCALATION_WARNING_REPLY_RATE_THRESHOLD", _float_in(0, 1), 0.8, "a fraction 0..1, e.g. 0.8"
        ),
        warning_min_sessions=_get(env, "ESCALATION_WARNING_MIN_SESSIONS", _int_in(1, 1_000_000), 5, "1..1000000"),
        warning_average_response_seconds=_get(
            env, "ESCALATION_WARNING_AVERAGE_RESPONSE_SECONDS", _float_in(1, 86_400), 90.0, "seconds, 1..86400"
        ),
        warning_interval_seconds=_get(
            env, "ESCALATION_WARNING_INTERVAL_SECONDS", _float_in(0.05, 86_400), 300.0, "seconds, 0.05..86400"
        ),
        limits=_limits(env),
    )
    if env.errors:
        count = f"{len(env.errors)} invalid variables: " if len(env.errors) > 1 else ""
        raise ConfigError(count + "; ".join(env.errors))
    return settings
