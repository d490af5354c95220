"""The one table from domain errors to gRPC status codes, with AIP-193 details attached."""

from __future__ import annotations

import math

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from escalation import errors

DOMAIN = "escalation"

# Looked up along the exception's MRO, so a subclass inherits its parent's code.
CODES: dict[type[errors.EscalationError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.MalformedRequest: grpc.StatusCode.INVALID_ARGUMENT,
    errors.RequestIdReused: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ClientMsgIdReused: grpc.StatusCode.INVALID_ARGUMENT,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.CursorExpired: grpc.StatusCode.OUT_OF_RANGE,
    errors.ConcurrentUpdate: grpc.StatusCode.ABORTED,
    errors.DatabaseUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.SlowConsumer: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    errors.ShuttingDown: grpc.StatusCode.UNAVAILABLE,
}


def code_for(exc: errors.EscalationError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in CODES:
            return CODES[cls]
    return grpc.StatusCode.INTERNAL


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def _retry_info(seconds: float) -> error_details_pb2.RetryInfo:
    delay = duration_pb2.Duration()
    # Rounded up to the millisecond, so a client that waits exactly this long finds its token.
    delay.FromMilliseconds(max(1, math.ceil(seconds * 1000)))
    return error_details_pb2.RetryInfo(retry_delay=delay)


def to_status_proto(exc: errors.EscalationError) -> status_pb2.Status:
    """google.rpc.Status with one ErrorInfo; for invalid fields a BadRequest, for limits a RetryInfo (AIP-193)."""
    code = code_for(exc)
    details = [_pack(error_details_pb2.ErrorInfo(reason=exc.reason, domain=DOMAIN, metadata=exc.metadata))]
    if isinstance(exc, errors.ResourceExhausted):
        details.append(_pack(_retry_info(exc.retry_delay_seconds)))
    if isinstance(exc, errors.InvalidArgument):
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                        for v in exc.violations
                    ]
                )
            )
        )
    return status_pb2.Status(code=code.value[0], message=exc.message, details=details)


def internal_status_proto() -> status_pb2.Status:
    """What a caller sees of a bug: no traceback, a reason to quote when reporting it."""
    info = error_details_pb2.ErrorInfo(reason="INTERNAL", domain=DOMAIN)
    return status_pb2.Status(
        code=code_pb2.INTERNAL, message="internal error; it has been logged", details=[_pack(info)]
    )


def to_grpc_status(proto: status_pb2.Status) -> grpc.Status:
    return rpc_status.to_status(proto)
