"""JWT keys from a JWKS URL, rotated by the identity provider (issue 11 §3, SPEC §3).

A loopback HTTP server (http.server in a thread) publishes the JWKS document and counts fetches; the
tests rotate its keys and call the real gRPC server (RS256 and ES256 keys), or JwksKeys with a clock
they move for the rate limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import grpc
import jwt
import pytest
from prometheus_client import REGISTRY

from escalation import config
from escalation.jwks import JwksKeys
from escalation.v1 import ops_pb2, ops_pb2_grpc
from tests.conftest import JWT_SECRET
from tests.integration.grpc_harness import failure, running_server, token
from tests.integration.jwks_harness import IdentityProvider, es256, identity_provider, rs256


@pytest.fixture
def idp() -> Iterator[IdentityProvider]:
    with identity_provider() as provider:
        yield provider


async def _list_warnings(channel: grpc.aio.Channel, bearer: str) -> grpc.StatusCode:
    """OK, or the code of the failure (whose ErrorInfo reason must then be TOKEN_INVALID)."""
    refused: grpc.aio.AioRpcError | None = None
    try:
        await ops_pb2_grpc.OpsServiceStub(channel).ListWarnings(
            ops_pb2.ListWarningsRequest(), metadata=(("authorization", f"Bearer {bearer}"),), timeout=10
        )
    except grpc.aio.AioRpcError as exc:
        refused = exc
    if refused is None:
        return grpc.StatusCode.OK
    assert failure(refused).reason == "TOKEN_INVALID"
    return refused.code()


async def test_rotated_keys_are_fetched_and_removed_ones_refused(pool: asyncpg.Pool, idp: IdentityProvider) -> None:
    old, new = rs256("2026-11"), es256("2026-12")
    idp.publish(old)
    settings = config.Settings(
        jwt=config.JwtSettings(
            algorithm="HS256", key=JWT_SECRET, jwks_url=idp.url, jwks_min_refresh_seconds=0, jwks_cache_seconds=3600
        ),
        shutdown_grace_seconds=1,
    )
    async with running_server(pool, config=settings) as channel:
        assert idp.fetches == 1  # fetched before serving
        signed_by_old = old.token()
        assert await _list_warnings(channel, signed_by_old) is grpc.StatusCode.OK
        assert await _list_warnings(channel, token("ops", "ops-2")) is grpc.StatusCode.OK  # static HS256 still works

        idp.publish(new)  # the provider rotates: the old kid is gone
        assert await _list_warnings(channel, new.token()) is grpc.StatusCode.OK  # unknown kid: one refetch
        assert idp.fetches == 2
        # The old key's tokens (even one verified before) are refused now; so is a kid nobody published.
        assert await _list_warnings(channel, signed_by_old) is grpc.StatusCode.UNAUTHENTICATED
        assert await _list_warnings(channel, old.token("ops-3")) is grpc.StatusCode.UNAUTHENTICATED
        assert await _list_warnings(channel, new.token(kid="nobody")) is grpc.StatusCode.UNAUTHENTICATED
        # A token naming a published kid but signed by another key, and alg confusion (HS256 with a kid).
        assert await _list_warnings(channel, old.token(kid=new.kid)) is grpc.StatusCode.UNAUTHENTICATED
        forged = jwt.encode({"sub": "x", "role": "ops", "exp": 4_000_000_000}, "k" * 32, headers={"kid": new.kid})
        assert await _list_warnings(channel, forged) is grpc.StatusCode.UNAUTHENTICATED


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_unknown_kids_refetch_at_most_once_per_interval(idp: IdentityProvider) -> None:
    current, later = rs256("a"), rs256("b")
    idp.publish(current)
    clock = Clock()
    keys = JwksKeys(idp.url, cache_seconds=3600, min_refresh_seconds=30, clock=clock)
    await keys.start()
    assert keys.key("a") is not None
    assert idp.fetches == 1

    clock.now += 31
    for kid in ("x", "y", "z", "x"):  # a flood of made-up kids: one fetch for all of them
        assert await keys.key_or_refresh(kid) is None
    assert idp.fetches == 2
    await asyncio.gather(*(keys.key_or_refresh(f"k{n}") for n in range(20)))
    assert idp.fetches == 2

    idp.publish(current, later)
    assert await keys.key_or_refresh("b") is None  # still inside the interval
    clock.now += 30
    found = await keys.key_or_refresh("b")
    assert found is not None
    assert found.algorithm_name == "RS256"
    assert idp.fetches == 3
    await keys.close()


async def test_a_stale_set_is_refetched_in_the_background(idp: IdentityProvider) -> None:
    first, second = es256("one"), es256("two")
    idp.publish(first)
    clock = Clock()
    keys = JwksKeys(idp.url, cache_seconds=300, min_refresh_seconds=30, clock=clock)
    await keys.start()
    idp.publish(second)
    clock.now += 301
    assert keys.key("one") is not None  # answered from memory at once; the refetch runs behind it
    for _ in range(200):
        if keys.key("two") is not None:
            break
        await asyncio.sleep(0.01)
    assert keys.key("two") is not None
    assert keys.key("one") is None
    assert idp.fetches == 2
    await keys.close()


async def test_an_unreachable_provider_keeps_the_last_keys(idp: IdentityProvider) -> None:
    key = rs256("kept")
    idp.publish(key)
    clock = Clock()
    keys = JwksKeys(idp.url, cache_seconds=3600, min_refresh_seconds=0, clock=clock)
    await keys.start()
    idp.publish()  # an empty set is not a usable document (PyJWKSetError)
    assert await keys.key_or_refresh("other") is None
    assert keys.key("kept") is not None
    await keys.close()


# What identity providers answer when something is wrong in front of them, besides being down.
BROKEN_ANSWERS = {
    "html maintenance page": (200, b"<html><body><h1>Down for maintenance</h1></body></html>"),
    "truncated json": (200, b'{"keys": [{"kty": "RSA", "kid": "a", "n": "'),
    "json array": (200, b"[]"),
    "json string": (200, b'"keys"'),
    "keys not an array": (200, b'{"keys": {"kid": "a"}}'),
    "keys of junk": (200, b'{"keys": [1, "two", null]}'),
    "server error": (500, b"internal error"),
}


def _failures() -> float:
    return sum(
        REGISTRY.get_sample_value("escalation_jwks_fetch_failures_total", {"reason": reason}) or 0.0
        for reason in ("unreachable", "invalid_document")
    )


@pytest.mark.parametrize("answer", BROKEN_ANSWERS.values(), ids=BROKEN_ANSWERS.keys())
async def test_a_broken_answer_is_a_failed_fetch_at_start_and_after_rotation(
    idp: IdentityProvider, answer: tuple[int, bytes]
) -> None:
    first, rotated = rs256("first"), es256("rotated")
    clock = Clock()
    keys = JwksKeys(idp.url, cache_seconds=3600, min_refresh_seconds=30, clock=clock)
    idp.broken = answer
    failures = _failures()
    await keys.start()  # must not raise: serve starts anyway (docs/production.md)
    assert not keys.loaded
    assert _failures() == failures + 1

    idp.publish(first)
    clock.now += 30
    assert await keys.key_or_refresh("first") is not None
    assert keys.loaded

    idp.publish(first, rotated)
    idp.broken = answer  # the provider breaks while a token names the new key
    clock.now += 30
    assert await keys.key_or_refresh("rotated") is None  # refused, not an exception
    assert keys.key("first") is not None  # the last good keys are kept
    assert _failures() == failures + 2
    assert idp.fetches == 3
    await keys.close()


async def test_a_stale_set_refetched_from_a_broken_provider_keeps_its_keys(idp: IdentityProvider) -> None:
    kept = es256("kept")
    idp.publish(kept)
    clock = Clock()
    keys = JwksKeys(idp.url, cache_seconds=300, min_refresh_seconds=30, clock=clock)
    await keys.start()
    for status, body in BROKEN_ANSWERS.values():
        idp.broken = (status, body)
        clock.now += 301
        before = idp.fetches
        assert keys.key("kept") is not None  # starts the background refetch
        for _ in range(200):
            if idp.fetches > before:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # let the task finish: an exception left in it would be an error here
        assert keys.key("kept") is not None
    await keys.close()


async def test_serve_starts_and_refuses_when_the_provider_is_broken(pool: asyncpg.Pool, idp: IdentityProvider) -> None:
    key = rs256("later")
    idp.broken = BROKEN_ANSWERS["html maintenance page"]
    settings = config.Settings(
        jwt=config.JwtSettings(
            algorithm="HS256", key=JWT_SECRET, jwks_url=idp.url, jwks_min_refresh_seconds=0, jwks_cache_seconds=3600
        ),
        shutdown_grace_seconds=1,
    )
    async with running_server(pool, config=settings) as channel:
        assert idp.fetches == 1
        assert await _list_warnings(channel, key.token()) is grpc.StatusCode.UNAUTHENTICATED  # not UNKNOWN
        assert await _list_warnings(channel, token("ops", "ops-2")) is grpc.StatusCode.OK
        idp.broken = BROKEN_ANSWERS["truncated json"]
        assert await _list_warnings(channel, key.token()) is grpc.StatusCode.UNAUTHENTICATED
        idp.publish(key)
        assert await _list_warnings(channel, key.token()) is grpc.StatusCode.OK
