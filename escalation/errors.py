"""The domain errors. Each class's docstring is its message; api/status.py maps them to gRPC codes.

Raise these from anywhere below the API layer; never raise grpc errors there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field of a request, named by its path (``messages[0].text.body``)."""

    field: str
    description: str


class EscalationError(Exception):
    """Something went wrong."""

    #: UPPER_SNAKE reason for google.rpc.ErrorInfo.
    reason = "ESCALATION_ERROR"

    def __init__(self, message: str | None = None, *, metadata: Mapping[str, str] | None = None) -> None:
        self.message = message or (self.__doc__ or self.reason).strip().splitlines()[0]
        self.metadata: dict[str, str] = dict(metadata or {})
        super().__init__(self.message)


# --- the caller sent something wrong -------------------------------------------------------------


class InvalidArgument(EscalationError):
    """The request has invalid fields."""

    reason = "INVALID_FIELDS"

    def __init__(self, violations: Sequence[FieldViolation], message: str | None = None) -> None:
        self.violations = list(violations)
        summary = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(message or f"invalid request: {summary}")


class MalformedRequest(EscalationError):
    """The request bytes do not decode as this method's request message (corrupt wire format or invalid UTF-8)."""

    reason = "MALFORMED_REQUEST"


class RequestIdReused(EscalationError):
    """This request_id was already used for a different request."""

    reason = "REQUEST_ID_REUSED"


class ClientMsgIdReused(EscalationError):
    """This client_msg_id was already used for a different message in this session."""

    reason = "CLIENT_MSG_ID_REUSED"


# --- who is calling ------------------------------------------------------------------------------


class Unauthenticated(EscalationError):
    """A valid bearer token is required."""

    reason = "UNAUTHENTICATED"

    def __init__(self, message: str | None = None, *, reason: str = "UNAUTHENTICATED") -> None:
        super().__init__(message)
        self.reason = reason


class PermissionDenied(EscalationError):
    """The caller's role may not call this method."""

    reason = "ROLE_NOT_ALLOWED"


class NotMainAccount(PermissionDenied):
    """Only the shop's main account may change its reception settings."""

    reason = "NOT_MAIN_ACCOUNT"


class ImPermissionRequired(PermissionDenied):
    """This agent has no IM permission (or is disabled) and cannot talk to the platform."""

    reason = "IM_PERMISSION_REQUIRED"


class AgentDisabled(PermissionDenied):
    """This agent is disabled in its shop and cannot talk to the platform."""

    reason = "AGENT_DISABLED"


class MainAccountChanged(PermissionDenied):
    """This agent is no longer the shop's main account; reconnect to see only its own sessions."""

    reason = "MAIN_ACCOUNT_CHANGED"


# --- what the caller asked for does not exist (or is outside its scope) ---------------------------


class NotFound(EscalationError):
    """Not found."""

    reason = "NOT_FOUND"


class MerchantNotFound(NotFound):
    """No such merchant."""

    reason = "MERCHANT_NOT_FOUND"


class AgentNotFound(NotFound):
    """No such agent in this shop."""

    reason = "AGENT_NOT_FOUND"


class SessionNotFound(NotFound):
    """No such session."""

    reason = "SESSION_NOT_FOUND"


class TemplateNotFound(NotFound):
    """No such reply template."""

    reason = "TEMPLATE_NOT_FOUND"


# --- the system's state forbids it ---------------------------------------------------------------


class FailedPrecondition(EscalationError):
    """The current state does not allow this."""

    reason = "FAILED_PRECONDITION"


class AgentNoImPermission(FailedPrecondition):
    """Reception agents need IM permission; enable it in the shop's account management first."""

    reason = "AGENT_NO_IM_PERMISSION"


class MainAccountImRequired(FailedPrecondition):
    """The main account always keeps IM permission."""

    reason = "MAIN_ACCOUNT_IM_REQUIRED"


class MerchantDisabled(FailedPrecondition):
    """The merchant is disabled and cannot receive sessions."""

    reason = "MERCHANT_DISABLED"


class NoEligibleAgent(FailedPrecondition):
    """No agent of this merchant can receive platform sessions right now."""

    reason = "NO_ELIGIBLE_AGENT"


class AgentNotEligible(FailedPrecondition):
    """This agent cannot receive platform sessions (SPEC R1: designated, IM permission, not disabled)."""

    reason = "AGENT_NOT_ELIGIBLE"


class AlreadyAssigned(FailedPrecondition):
    """The session is already assigned to this agent."""

    reason = "ALREADY_ASSIGNED"


class SessionClosed(FailedPrecondition):
    """The session has ended; nothing more can be written to it."""

    reason = "SESSION_CLOSED"


class SessionFull(FailedPrecondition):
    """The session holds as much as one session may; close or escalate it (SPEC R7).

    ``metadata["limit"]`` names the bound reached: ``messages`` or ``content_bytes``, with
    ``max_messages`` / ``max_content_bytes`` giving its value.
    """

    reason = "SESSION_FULL"


class CursorExpired(EscalationError):
    """The cursor is older than the event log's retention; resynchronise with ListSessions."""

    reason = "CURSOR_EXPIRED"


# --- the system cannot serve right now -----------------------------------------------------------


class ConcurrentUpdate(EscalationError):
    """A concurrent change conflicted with this one; retry the request."""

    reason = "CONCURRENT_UPDATE"


class DatabaseUnavailable(EscalationError):
    """The database is unavailable; retry with backoff."""

    reason = "DATABASE_UNAVAILABLE"


class SlowConsumer(EscalationError):
    """The stream fell too far behind; reconnect with your last cursor."""

    reason = "SLOW_CONSUMER"


class ResourceExhausted(EscalationError):
    """This caller is over a limit; retry after the delay given in google.rpc.RetryInfo."""

    reason = "RESOURCE_EXHAUSTED"

    def __init__(
        self,
        message: str | None = None,
        *,
        retry_delay_seconds: float = 1.0,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, metadata=metadata)
        #: When a retry can succeed, in seconds (google.rpc.RetryInfo.retry_delay).
        self.retry_delay_seconds = retry_delay_seconds


class RateLimited(ResourceExhausted):
    """Too many requests of this kind from this caller; retry after the delay in RetryInfo (docs/security.md).

    ``metadata["limit"]`` names the limit (e.g. ``reply_per_sender``); ``rate_per_second`` and
    ``burst`` give its configured value, for this server process.
    """

    reason = "RATE_LIMITED"


class TooManyStreams(ResourceExhausted):
    """Too many streams are open; close one or retry after the delay in RetryInfo (docs/security.md).

    ``metadata["limit"]`` names the cap (``connect_streams_per_identity`` or
    ``unauthenticated_streams``) and ``max_streams`` its value, for this server process.
    """

    reason = "TOO_MANY_STREAMS"


class Unimplemented(EscalationError):
    """This RPC is not implemented yet; see the README for which RPCs are."""

    reason = "NOT_IMPLEMENTED"


class ShuttingDown(EscalationError):
    """This server is shutting down; reconnect (another replica will serve you)."""

    reason = "SHUTTING_DOWN"
