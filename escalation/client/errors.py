"""Typed errors of the client: a failed call's gRPC code with its AIP-193 details decoded.

Every error the service returns carries one ``google.rpc.ErrorInfo`` (an UPPER_SNAKE ``reason`` in domain
``escalation``), invalid fields a ``google.rpc.BadRequest`` and limits a ``google.rpc.RetryInfo``
(SPEC §3, AIP-193); ``ClientError`` exposes them as attributes so a caller matches on ``reason``, not on
message text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import grpc
from google.rpc import error_details_pb2, status_pb2

__all__ = ["ClientError", "FieldViolation", "from_rpc_error", "is_transient"]

# Codes a call may be retried on when it carries its idempotency key (request_id, client_msg_id) or only
# reads: the server was away (UNAVAILABLE, including a replica SHUTTING_DOWN), over a limit
# (RESOURCE_EXHAUSTED, with RetryInfo), lost a race it reports (ABORTED), or the answer was lost on the
# way (DEADLINE_EXCEEDED). Every other code is the caller's mistake or a state retrying cannot change.
TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field of a request (``google.rpc.BadRequest.FieldViolation``)."""

    field: str
    description: str


class ClientError(Exception):
    """A call the service answered with an error status.

    Attributes: ``code`` (grpc.StatusCode), ``reason`` (the ErrorInfo reason, e.g. ``SESSION_CLOSED``;
    ``""`` when the status carried none, e.g. a transport failure), ``domain`` (``escalation``),
    ``message`` (the status message), ``violations`` (every BadRequest field violation), ``metadata``
    (the ErrorInfo metadata, e.g. ``oldest_cursor``), ``retry_delay`` (seconds from RetryInfo, or None).
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        domain: str = "",
        violations: tuple[FieldViolation, ...] = (),
        metadata: dict[str, str] | None = None,
        retry_delay: float | None = None,
    ) -> None:
        super().__init__(f"{code.name}{f' {reason}' if reason else ''}: {message}")
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.violations = violations
        self.metadata = dict(metadata or {})
        self.retry_delay = retry_delay

    @property
    def transient(self) -> bool:
        """True when the same call, with the same idempotency key, may succeed later."""
        return self.code in TRANSIENT_CODES


def _status_details(err: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    pairs = cast("tuple[tuple[str, str | bytes], ...]", tuple(err.trailing_metadata() or ()))
    for key, value in pairs:
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except Exception:  # a foreign proxy's trailer: the code alone still tells the story
                return None
    return None


def from_rpc_error(err: grpc.aio.AioRpcError) -> ClientError:
    """The ClientError of a failed call, with ErrorInfo, BadRequest and RetryInfo decoded (AIP-193)."""
    status = _status_details(err)
    reason = domain = ""
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    retry_delay: float | None = None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend(FieldViolation(v.field, v.description) for v in bad.field_violations)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_delay = retry.retry_delay.ToTimedelta().total_seconds()
    return ClientError(
        err.code(),
        err.details() or "",
        reason=reason,
        domain=domain,
        violations=tuple(violations),
        metadata=metadata,
        retry_delay=retry_delay,
    )


def is_transient(err: grpc.aio.AioRpcError) -> bool:
    """True for codes worth retrying with the same idempotency key (see TRANSIENT_CODES)."""
    return err.code() in TRANSIENT_CODES
