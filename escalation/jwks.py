"""Token signing keys from the identity provider's JWKS URL, by ``kid`` (RS256/ES256; SPEC §3 "JWKS with rotation").

PyJWKClient fetches and parses the document; its fetch is blocking (urllib), so it never runs on the
event loop: ``refresh`` runs it in a worker thread, and the request path only reads the in-memory map
from ``kid`` to key. The map is filled before serve starts (``start``), refetched in the background
once older than ``cache_seconds`` (tokens keep verifying against the current map meanwhile), and
refetched on a token whose ``kid`` is unknown — that call waits for the fetch, at most once per
``min_refresh_seconds`` for the whole process (a flood of made-up kids cannot turn into a flood of
requests to the identity provider). A failed fetch — unreachable, an HTTP error, a body that is not
JSON (a maintenance page), JSON that is not a JWKS object — keeps the last good keys, is logged once
(``jwks.fetch_failed``) and counted (``escalation_jwks_fetch_failures_total``); it never raises, so
neither serve's start nor a background refresh can fail on it. docs/production.md.

PyJWKClient reads the whole response (``json.load``) and has no size cap; the fetch is bounded in time
(``FETCH_TIMEOUT_SECONDS``) only, and the URL is the operator's own identity provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import jwt
import structlog

from escalation.observability.metrics import JWKS_FETCH_FAILURES

log = structlog.get_logger(__name__)

# Asymmetric only: an HMAC "key" in a public document would let anyone sign.
ALGORITHMS = frozenset({"RS256", "ES256"})
FETCH_TIMEOUT_SECONDS = 5.0


class JwksKeys:
    """The identity provider's current signing keys, by ``kid``; see the module docstring for when it fetches."""

    def __init__(
        self,
        url: str,
        *,
        cache_seconds: float = 300.0,
        min_refresh_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # PyJWKClient only fetches and parses here; the cache and the rate limit are ours (async-aware).
        self._client = jwt.PyJWKClient(url, cache_jwk_set=False, cache_keys=False, timeout=FETCH_TIMEOUT_SECONDS)
        self._url = url
        self._cache_seconds = cache_seconds
        self._min_refresh_seconds = min_refresh_seconds
        self._clock = clock
        self._keys: Mapping[str, jwt.PyJWK] = {}
        self._fetched_at = -math.inf  # last successful fetch
        self._tried_at = -math.inf  # last attempt, successful or not (the rate limit)
        self._lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None
        self.fetches = 0  # attempts, for tests and logs
        # Bumped whenever the set of keys changes: verified-token caches drop what a removed key signed.
        self.generation = 0

    async def start(self) -> None:
        """First fetch, before serving; never raises: on failure JWKS tokens are refused until a fetch succeeds.

        Until one does, a background task retries every ``min_refresh_seconds`` (at least 1 s): a replica
        that is not ready gets no traffic, so no token's unknown ``kid`` would trigger the refetch.
        """
        await self.refresh()
        if not self._keys:
            self._background = asyncio.get_running_loop().create_task(self._until_loaded(), name="jwks-retry")
            self._background.add_done_callback(_retrieve)

    async def _until_loaded(self) -> None:
        while not self._keys:
            await asyncio.sleep(max(self._min_refresh_seconds, 1.0))
            await self.refresh()

    @property
    def loaded(self) -> bool:
        """True once a fetch has brought at least one usable key (what /readyz checks for JWKS-only serve)."""
        return bool(self._keys)

    async def close(self) -> None:
        if self._background is not None:
            self._background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._background

    def key(self, kid: str) -> jwt.PyJWK | None:
        """The cached key for ``kid`` (no I/O); schedules a background refetch when the cache is stale."""
        now = self._clock()
        if (
            now - self._fetched_at >= self._cache_seconds
            and now - self._tried_at >= self._min_refresh_seconds
            and (self._background is None or self._background.done())
        ):
            self._background = asyncio.get_running_loop().create_task(self.refresh(), name="jwks-refresh")
            self._background.add_done_callback(_retrieve)
        return self._keys.get(kid)

    async def key_or_refresh(self, kid: str) -> jwt.PyJWK | None:
        """The key for ``kid``, refetching the document first when ``kid`` is unknown and the rate limit allows."""
        found = self.key(kid)
        if found is not None:
            return found
        await self.refresh(unless_known=kid)
        return self._keys.get(kid)

    async def refresh(self, *, unless_known: str | None = None) -> None:
        """Refetches the document in a thread, at most once per ``min_refresh_seconds``; callers share one fetch."""
        async with self._lock:
            if unless_known is not None and unless_known in self._keys:
                return  # another caller's fetch brought it
            if self._clock() - self._tried_at < self._min_refresh_seconds:
                return
            self._tried_at = self._clock()
            self.fetches += 1
            try:
                document: Any = await asyncio.to_thread(self._client.fetch_data)
                keys = _signing_keys(_key_set(document))
            except jwt.PyJWKClientConnectionError as exc:
                self._failed("unreachable", exc)
                return
            except (ValueError, TypeError, KeyError, OSError, jwt.PyJWTError) as exc:
                # ValueError: a body that is not JSON (json.JSONDecodeError); TypeError: JSON that is not a JWK Set.
                self._failed("invalid_document", exc)
                return
            if {k: v.key for k, v in keys.items()} != {k: v.key for k, v in self._keys.items()}:
                self.generation += 1
            self._keys, self._fetched_at = keys, self._clock()
            log.info("jwks.fetched", url=self._url, kids=sorted(keys))

    def _failed(self, reason: str, exc: BaseException) -> None:
        JWKS_FETCH_FAILURES.labels(reason=reason).inc()
        log.warning("jwks.fetch_failed", url=self._url, reason=reason, error=str(exc)[:200], keys_kept=len(self._keys))


def _retrieve(task: asyncio.Task[None]) -> None:
    """Done callback of the background refresh: an exception refresh did not foresee is logged, not left unretrieved."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("jwks.refresh_crashed", error=repr(exc)[:200])


def _key_set(document: Any) -> jwt.PyJWKSet:
    """The JWK Set in a parsed document; TypeError unless it is an object with a ``keys`` array (RFC 7517 §5)."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise TypeError(f"not a JWK Set: expected an object with a 'keys' array, got {type(document).__name__}")
    return jwt.PyJWKSet.from_dict(document)


def _signing_keys(key_set: jwt.PyJWKSet) -> dict[str, jwt.PyJWK]:
    return {
        key.key_id: key
        for key in key_set.keys
        if key.key_id and key.public_key_use in (None, "sig") and key.algorithm_name in ALGORITHMS
    }


def kid_of(authorization: str | None) -> str | None:
    """The ``kid`` in a ``Bearer <JWT>`` header value, unverified; None when absent or unreadable (verify says why)."""
    _, _, token = (authorization or "").partition(" ")
    try:
        kid = jwt.get_unverified_header(token.strip()).get("kid")
    except jwt.InvalidTokenError:
        return None
    return kid if isinstance(kid, str) else None
