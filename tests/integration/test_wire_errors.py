"""Bytes that do not decode are INVALID_ARGUMENT / MALFORMED_REQUEST on every RPC and stream frame (SPEC §3).

Raw bytes go to every method of every service the server registers (identity serializers, as a second
gRPC implementation or a broken client would send them): corrupt wire format, invalid UTF-8 in a string
field, a truncated varint, a length past the end, an invalid or mismatched wire type. Protobuf itself is
the oracle: whatever it refuses to decode must come back as exactly one ErrorInfo with reason
MALFORMED_REQUEST; whatever it decodes goes to the handler and must never be UNKNOWN or INTERNAL.
A client mistake is a warning naming the method, never an error-level log line.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
import grpc
import pytest
import structlog
from google.protobuf import descriptor

from escalation.v1 import merchant_pb2, platform_pb2_grpc
from tests.integration.grpc_harness import failure, running_server
from tests.integration.sessions_harness import PLATFORM, make_shop, open_request, text
from tests.integration.wire_harness import SHOP, Method, all_methods, call_raw, decodes

pytestmark = pytest.mark.integration

_LENGTH_DELIMITED, _VARINT = 2, 0


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _delimited(number: int, payload: bytes) -> bytes:
    return _tag(number, _LENGTH_DELIMITED) + _varint(len(payload)) + payload


def invalid_utf8(message: descriptor.Descriptor, depth: int = 3) -> bytes | None:
    """A message whose first string field (searched depth-first through message fields) holds invalid UTF-8."""
    for field in message.fields:
        if field.type == descriptor.FieldDescriptor.TYPE_STRING:
            return _delimited(field.number, b"\xff\xfe")
    if depth:
        for field in message.fields:
            if field.type == descriptor.FieldDescriptor.TYPE_MESSAGE and field.message_type is not None:
                inner = invalid_utf8(field.message_type, depth - 1)
                if inner is not None:
                    return _delimited(field.number, inner)
    return None


def malformed(method: Method) -> dict[str, bytes]:
    """Requests protobuf refuses, by kind of fault."""
    cases = {
        "corrupt wire format": b"\xff\xff\xff",
        "truncated varint": _tag(1, _VARINT) + b"\xff\xff",
        "length past the end": _delimited(1, b"abcdefgh")[:-5],
        "invalid wire type": _tag(1, 7),
        "unmatched end-group": _tag(1, 4),
    }
    assert method.descriptor.input_type is not None
    utf8 = invalid_utf8(method.descriptor.input_type)
    if utf8 is not None:
        cases["invalid UTF-8"] = utf8
    return cases


def wrong_wire_types(method: Method) -> dict[str, bytes]:
    """Each top-level field sent with a wire type other than its own (protobuf may keep it as unknown)."""
    cases = {}
    for field in method.descriptor.input_type.fields:
        if field.type in (descriptor.FieldDescriptor.TYPE_STRING, descriptor.FieldDescriptor.TYPE_MESSAGE):
            cases[f"{field.name} as varint"] = _tag(field.number, _VARINT) + b"\x01"
        else:
            cases[f"{field.name} as bytes"] = _delimited(field.number, b"\xff\xfe")
    return cases


def _errors_logged(logs: Sequence[Mapping[str, Any]], caplog: pytest.LogCaptureFixture) -> list[str]:
    ours = [f"{e['event']}: {e}" for e in logs if e["log_level"] in ("error", "critical", "exception")]
    stdlib = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]
    return ours + stdlib


async def test_undecodable_bytes_are_invalid_argument_on_every_method(
    pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    methods = all_methods()
    assert {"/escalation.v1.MerchantService/Connect", "/escalation.v1.PlatformService/WatchSession"} <= {
        m.path for m in methods
    }
    wrong: list[str] = []
    caplog.set_level(logging.WARNING)
    async with running_server(pool) as channel:
        with structlog.testing.capture_logs() as logs:
            for method in methods:
                for kind, raw in malformed(method).items():
                    assert not decodes(method, raw), f"{method} {kind}: the case decodes"
                    got = await call_raw(channel, method, [raw])
                    seen = (got.code, got.failure and (got.failure.reason, got.failure.domain))
                    if seen != (grpc.StatusCode.INVALID_ARGUMENT, ("MALFORMED_REQUEST", "escalation")):
                        wrong.append(f"{method} {kind}: {seen}")
        assert not wrong, "\n".join(wrong)
        assert not _errors_logged(logs, caplog)
        warned = {e["method"] for e in logs if e["event"] == "rpc.malformed_request" and e["log_level"] == "warning"}
        assert warned == {m.path for m in methods}


async def test_wrong_wire_types_are_never_unknown_or_internal(pool: asyncpg.Pool) -> None:
    wrong: list[str] = []
    async with running_server(pool) as channel:
        await make_shop(channel, SHOP, agents={f"{SHOP}-sub-1": 10})
        for method in all_methods():
            for kind, raw in wrong_wire_types(method).items():
                got = await call_raw(channel, method, [raw])
                reason = got.failure.reason if got.failure else None
                if decodes(method, raw):
                    ok = got.code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
                    ok = ok and reason != "MALFORMED_REQUEST"
                else:
                    ok = (got.code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST")
                if not ok:
                    wrong.append(f"{method} {kind} (decodes: {decodes(method, raw)}): {got.code} {reason}")
    assert not wrong, "\n".join(wrong)


CONNECT = "/escalation.v1.MerchantService/Connect"
EOF: object = getattr(grpc.aio, "EOF")  # noqa: B009


async def _read_until_end(call: Any, results: list[merchant_pb2.ReplyResult]) -> None:
    # Well inside the 15 s heartbeat: the stream must end when the bad frame is read, not on a timer.
    async with asyncio.timeout(5):
        while (raw := await call.read()) is not EOF:
            frame = merchant_pb2.ConnectResponse.FromString(raw)
            if frame.HasField("reply_result"):
                results.append(frame.reply_result)


@pytest.mark.parametrize(
    "bad_frame",
    [
        b"\xff\xff\xff",
        merchant_pb2.ConnectRequest(
            reply=merchant_pb2.ReplyRequest(session_id=str(uuid.UUID(int=1)), content=text("ok"))
        ).SerializeToString()[:-3],
        _delimited(2, _delimited(2, b"\xc3\x28")),  # reply.client_msg_id with invalid UTF-8
        _tag(3, 7),
    ],
    ids=["corrupt", "truncated", "invalid-utf8", "invalid-wire-type"],
)
async def test_a_later_connect_frame_that_does_not_decode_ends_the_stream_with_invalid_argument(
    pool: asyncpg.Pool, bad_frame: bytes
) -> None:
    """Frames before it are served (the reply is stored and answered); then the stream ends at once."""
    async with running_server(pool) as channel:
        await make_shop(channel, SHOP, agents={f"{SHOP}-main": 10})
        opened = await platform_pb2_grpc.PlatformServiceStub(channel).OpenSession(open_request(SHOP), metadata=PLATFORM)
        method = next(m for m in all_methods() if m.path == CONNECT)
        untyped: Any = channel
        call: Any = untyped.stream_stream(CONNECT)(metadata=method.metadata)
        head = await pool.fetchval("SELECT last_event_cursor FROM merchants WHERE merchant_id = $1", SHOP)
        await call.write(merchant_pb2.ConnectRequest(hello=merchant_pb2.Hello(last_cursor=head)).SerializeToString())
        reply = merchant_pb2.ReplyRequest(
            session_id=opened.session.session_id, client_msg_id="c-1", content=text("yes, today")
        )
        await call.write(merchant_pb2.ConnectRequest(reply=reply).SerializeToString())
        await call.write(bad_frame)
        results: list[merchant_pb2.ReplyResult] = []
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _read_until_end(call, results)
        got = failure(caught.value)
        assert (got.code, got.reason, got.metadata) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "MALFORMED_REQUEST",
            {"frame_index": "2"},
        )
        assert [r.WhichOneof("result") for r in results] == ["message"]
