"""The one status table: every domain error has a deliberate code; none is UNKNOWN or INTERNAL."""

from __future__ import annotations

import re

import grpc
import pytest
from google.rpc import error_details_pb2

from escalation import errors
from escalation.api import status


def _all_errors() -> list[type[errors.EscalationError]]:
    found: list[type[errors.EscalationError]] = []
    pending = [errors.EscalationError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return [cls for cls in found if cls is not errors.EscalationError]


@pytest.mark.parametrize("cls", _all_errors(), ids=lambda c: c.__name__)
def test_every_domain_error_maps_to_a_deliberate_code(cls: type[errors.EscalationError]) -> None:
    exc = errors.InvalidArgument([]) if issubclass(cls, errors.InvalidArgument) else cls()
    code = status.code_for(exc)
    assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.OK)
    assert re.fullmatch(r"[A-Z][A-Z0-9_]*", exc.reason)
    assert exc.message
    assert "\n" not in exc.message


def test_spec_reasons_have_the_spec_codes() -> None:
    assert status.code_for(errors.AgentNoImPermission()) is grpc.StatusCode.FAILED_PRECONDITION
    assert status.code_for(errors.SessionClosed()) is grpc.StatusCode.FAILED_PRECONDITION
    assert status.code_for(errors.RequestIdReused()) is grpc.StatusCode.INVALID_ARGUMENT
    assert status.code_for(errors.ClientMsgIdReused()) is grpc.StatusCode.INVALID_ARGUMENT
    assert status.code_for(errors.CursorExpired()) is grpc.StatusCode.OUT_OF_RANGE
    assert status.code_for(errors.SlowConsumer()) is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status.code_for(errors.SessionNotFound()) is grpc.StatusCode.NOT_FOUND


def test_invalid_argument_carries_error_info_and_every_violation() -> None:
    exc = errors.InvalidArgument(
        [errors.FieldViolation("a", "is required"), errors.FieldViolation("b.c", "is too long")]
    )
    proto = status.to_status_proto(exc)
    assert proto.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    assert proto.details[0].Unpack(info)
    assert proto.details[1].Unpack(bad)
    assert (info.reason, info.domain) == ("INVALID_FIELDS", "escalation")
    assert [(v.field, v.description) for v in bad.field_violations] == [("a", "is required"), ("b.c", "is too long")]


def test_error_metadata_reaches_error_info() -> None:
    proto = status.to_status_proto(errors.SessionClosed(metadata={"ticket_id": "t-1"}))
    info = error_details_pb2.ErrorInfo()
    proto.details[0].Unpack(info)
    assert dict(info.metadata) == {"ticket_id": "t-1"}
    assert len(proto.details) == 1


def test_internal_status_reveals_nothing() -> None:
    proto = status.internal_status_proto()
    assert proto.code == grpc.StatusCode.INTERNAL.value[0]
    assert "Traceback" not in proto.message


@pytest.mark.parametrize(
    ("exc", "reason", "millis"),
    [
        (errors.RateLimited(retry_delay_seconds=0.2501), "RATE_LIMITED", 251),
        (errors.RateLimited(retry_delay_seconds=1e-9), "RATE_LIMITED", 1),
        (errors.TooManyStreams(retry_delay_seconds=40), "TOO_MANY_STREAMS", 40_000),
    ],
)
def test_limits_are_resource_exhausted_with_retry_info(exc: errors.ResourceExhausted, reason: str, millis: int) -> None:
    proto = status.to_status_proto(exc)
    assert proto.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
    assert proto.details[0].Unpack(info)
    assert proto.details[1].Unpack(retry)
    assert info.reason == reason
    # Rounded up: a client that waits exactly this long finds its token.
    assert retry.retry_delay.ToMilliseconds() == millis
