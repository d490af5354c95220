"""The platform console's text for people: counts in English, refusals in one readable form."""

from __future__ import annotations

import grpc
import pytest

from escalation.client import ClientError, FieldViolation
from escalation.consoles import render
from escalation.consoles.refusal import refusal_lines
from escalation.v1 import common_pb2


@pytest.mark.parametrize(("last_seq", "text"), [(0, "(0 messages)"), (1, "(1 message)"), (2, "(2 messages)")])
def test_a_session_line_counts_its_messages_in_english(last_seq: int, text: str) -> None:
    for state in (common_pb2.SESSION_STATE_OPEN, common_pb2.SESSION_STATE_ENDED):
        line = render.session(common_pb2.Session(session_id="s1", state=state, last_seq=last_seq))
        assert line.endswith(text), line


def test_a_refusal_without_a_reason_has_no_gap_and_violations_show_once() -> None:
    assert refusal_lines(ClientError(grpc.StatusCode.INTERNAL, "boom"), "h:1") == ["INTERNAL: boom"]
    assert refusal_lines(ClientError(grpc.StatusCode.NOT_FOUND, "no", reason="SESSION_NOT_FOUND"), "h:1") == [
        "NOT_FOUND SESSION_NOT_FOUND: no"
    ]
    stated = ClientError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid request: session_id: not a UUID",
        reason="INVALID_FIELDS",
        violations=(FieldViolation("session_id", "not a UUID"), FieldViolation("text", "empty")),
    )
    assert refusal_lines(stated, "h:1") == [
        "INVALID_ARGUMENT INVALID_FIELDS: invalid request: session_id: not a UUID",
        "  text: empty",
    ]
    away = ClientError(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; ipv6:%5B::1%5D:50051")
    assert refusal_lines(away, "localhost:50051") == [
        "cannot reach localhost:50051 — is the service running? (--target)"
    ]
    draining = ClientError(grpc.StatusCode.UNAVAILABLE, "shutting down", reason="SHUTTING_DOWN")
    assert refusal_lines(draining, "h:1") == ["UNAVAILABLE SHUTTING_DOWN: shutting down"]
