"""SPEC §3: one credential per call, malformed claims are UNAUTHENTICATED, and no handler fault is UNKNOWN."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import empty_pb2

from escalation.api.interceptors import ServerInterceptor
from escalation.auth import TokenVerifier
from escalation.config import JwtSettings
from escalation.v1 import ops_pb2
from tests.conftest import JWT_SECRET
from tests.integration.grpc_harness import bearer, failure, running_server, token


def _signed(payload: str) -> str:
    """A validly signed HS256 token whose payload is exactly ``payload`` (JSON text, possibly odd)."""

    def b64(raw: bytes) -> bytes:
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(payload.encode())
    signature = hmac.new(JWT_SECRET.encode(), signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + b64(signature)).decode()


_OPS = '"sub":"ops-1","role":"ops"'
_LATER = int(time.time()) + 600
MALFORMED_CLAIMS = [
    "exp:1e400",
    "exp:" + "9" * 400,
    "exp:-" + "9" * 400,
    'exp:"4000000000"',
    "exp:true",
    "exp:NaN",
    "exp:Infinity",
    "exp:null",
    "exp:LATER,iat:" + "9" * 400,
    "exp:LATER,iat:NaN",
    "exp:LATER,iat:true",
    'exp:LATER,nbf:"x"',
    "exp:LATER,nbf:1e400",
    "exp:LATER,sub:5",
    'exp:LATER,role:["ops"]',
    "exp:LATER,iss:5",
    "exp:LATER,aud:{}",
]


def _payload(claims: str) -> str:
    # "name:value" pairs; later names replace earlier ones, as a JSON decoder does.
    pairs = (pair.split(":", 1) for pair in claims.replace("LATER", str(_LATER)).split(","))
    parts = ",".join(f'"{k}":{v}' for k, v in pairs)
    return "{" + _OPS + "," + parts + "}"


@pytest.mark.parametrize("claims", MALFORMED_CLAIMS)
async def test_a_signed_token_with_a_malformed_claim_is_unauthenticated(pool: asyncpg.Pool, claims: str) -> None:
    json.loads(_payload(claims))  # the payload is JSON (Python's reading of it); only its claims are odd
    async with running_server(pool) as channel:
        stats = channel.unary_unary(
            "/escalation.v1.OpsService/ListWarnings",
            request_serializer=ops_pb2.ListWarningsRequest.SerializeToString,
            response_deserializer=ops_pb2.ListWarningsResponse.FromString,
        )
        good = "exp:LATER"
        await stats(ops_pb2.ListWarningsRequest(), metadata=(("authorization", f"Bearer {_signed(_payload(good))}"),))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stats(
                ops_pb2.ListWarningsRequest(), metadata=(("authorization", f"Bearer {_signed(_payload(claims))}"),)
            )
    got = failure(caught.value)
    assert (got.code, got.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID"), got


@pytest.mark.parametrize(
    "credentials",
    [
        [("merchant", "a1", "shop-a"), ("ops", "ops-1", None)],  # the last one used to win
        [("ops", "ops-1", None), ("merchant", "a1", "shop-a")],
        [("ops", "ops-1", None), ("ops", "ops-1", None)],  # even the same one twice
        [("ops", "ops-1", None), ("ops", "ops-2", None), ("ops", "ops-3", None)],
    ],
)
async def test_more_than_one_authorization_entry_is_unauthenticated(
    pool: asyncpg.Pool, credentials: list[tuple[str, str, str | None]]
) -> None:
    metadata = tuple(pair for role, sub, shop in credentials for pair in bearer(role, sub, shop))
    async with running_server(pool) as channel:
        warnings = channel.unary_unary(
            "/escalation.v1.OpsService/ListWarnings",
            request_serializer=ops_pb2.ListWarningsRequest.SerializeToString,
            response_deserializer=ops_pb2.ListWarningsResponse.FromString,
        )
        await warnings(ops_pb2.ListWarningsRequest(), metadata=bearer("ops", "ops-1"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await warnings(ops_pb2.ListWarningsRequest(), metadata=metadata)
    got = failure(caught.value)
    assert (got.code, got.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_DUPLICATED"), got


# --- no handler fault reaches the client as UNKNOWN ------------------------------------------------
# Handlers with deliberate bugs, behind the real interceptor: an exception, a response of the wrong
# type (which grpc core would fail to serialize after the handler returned), in each RPC shape.

_SERVICE = "escalation.v1.OpsService"


async def _raises(request: Any, context: Any) -> Any:
    raise OverflowError("int too large to convert to float")


async def _wrong_type(request: Any, context: Any) -> Any:
    return "not a message"


async def _stream_raises(request: Any, context: Any) -> AsyncIterator[Any]:
    yield empty_pb2.Empty()
    raise KeyError("boom")


async def _stream_wrong_type(request: Any, context: Any) -> AsyncIterator[Any]:
    yield empty_pb2.Empty()
    yield 42


async def _bidi_raises(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
    async for _ in requests:
        yield empty_pb2.Empty()
        raise ZeroDivisionError


async def _bidi_writes_wrong_type(requests: AsyncIterator[Any], context: Any) -> None:
    async for _ in requests:
        await context.write(empty_pb2.Empty())
        await context.write(object())


def _faulty_handlers() -> grpc.GenericRpcHandler[Any, Any]:
    ser, de = empty_pb2.Empty.SerializeToString, empty_pb2.Empty.FromString
    return grpc.method_handlers_generic_handler(
        _SERVICE,
        {
            "Raises": grpc.unary_unary_rpc_method_handler(_raises, de, ser),
            "WrongType": grpc.unary_unary_rpc_method_handler(_wrong_type, de, ser),
            "StreamRaises": grpc.unary_stream_rpc_method_handler(_stream_raises, de, ser),
            "StreamWrongType": grpc.unary_stream_rpc_method_handler(_stream_wrong_type, de, ser),
            "BidiRaises": grpc.stream_stream_rpc_method_handler(_bidi_raises, de, ser),
            "BidiWritesWrongType": grpc.stream_stream_rpc_method_handler(_bidi_writes_wrong_type, de, ser),
        },
    )


async def _call(channel: grpc.aio.Channel, path: str, shape: str, metadata: tuple[tuple[str, str]]) -> None:
    ser, de = empty_pb2.Empty.SerializeToString, empty_pb2.Empty.FromString
    if shape == "unary":
        await channel.unary_unary(path, ser, de)(empty_pb2.Empty(), metadata=metadata)
        return
    if shape == "server_stream":
        async for _ in channel.unary_stream(path, ser, de)(empty_pb2.Empty(), metadata=metadata):
            pass
        return
    async for _ in channel.stream_stream(path, ser, de)(iter([empty_pb2.Empty()]), metadata=metadata):
        pass


@pytest.mark.parametrize(
    ("method", "shape"),
    [
        ("Raises", "unary"),
        ("WrongType", "unary"),
        ("StreamRaises", "server_stream"),
        ("StreamWrongType", "server_stream"),
        ("BidiRaises", "bidi"),
        ("BidiWritesWrongType", "bidi"),
    ],
)
async def test_a_handler_fault_is_internal_never_unknown(method: str, shape: str) -> None:
    verifier = TokenVerifier(JwtSettings(algorithm="HS256", key=JWT_SECRET))
    server = grpc.aio.server(interceptors=[ServerInterceptor(verifier)])
    server.add_generic_rpc_handlers((_faulty_handlers(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    metadata = (("authorization", f"Bearer {token('ops', 'ops-1')}"),)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _call(channel, f"/{_SERVICE}/{method}", shape, metadata)
    finally:
        await server.stop(grace=None)
    got = failure(caught.value)
    assert (got.code, got.reason) == (grpc.StatusCode.INTERNAL, "INTERNAL"), got
    assert got.message == "internal error; it has been logged"
