"""PlatformClient: a platform agent's calls, each retried safely, and a resumable WatchSession."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator, Sequence
from types import TracebackType
from typing import Any, TypeAlias, cast

import grpc

from escalation.client.backoff import Backoff
from escalation.client.errors import ClientError, from_rpc_error
from escalation.client.merchant import RECONNECT_CODES
from escalation.client.stream import EOF_
from escalation.client.transport import EXPIRED_REASON, Retry, TlsOptions, TokenSource, Transport
from escalation.v1 import common_pb2, platform_pb2, platform_pb2_grpc

__all__ = ["ESCALATED", "RESOLVED", "PlatformClient"]

RESOLVED = platform_pb2.CloseSessionRequest.OUTCOME_RESOLVED
ESCALATED = platform_pb2.CloseSessionRequest.OUTCOME_ESCALATED
Outcome: TypeAlias = platform_pb2.CloseSessionRequest.Outcome.ValueType
_CLOSED_AS = {RESOLVED: common_pb2.CLOSE_REASON_RESOLVED, ESCALATED: common_pb2.CLOSE_REASON_PLATFORM_ESCALATED}
Content = str | common_pb2.OrderCard | common_pb2.MessageContent


def content(value: Content) -> common_pb2.MessageContent:
    """A MessageContent from a text, an OrderCard, or a MessageContent as it is."""
    if isinstance(value, common_pb2.MessageContent):
        return value
    if isinstance(value, common_pb2.OrderCard):
        return common_pb2.MessageContent(order_card=value)
    return common_pb2.MessageContent(text=common_pb2.Text(body=value))


class PlatformClient:
    """A platform support agent's client (role platform or platform_supervisor).

    ``target``, ``token``, ``tls``, ``retry`` as for MerchantClient; ``backoff``: WatchSession reconnects;
    ``idle_timeout``: seconds without a frame (the server heartbeats when quiet) before a watch reconnects.
    """

    def __init__(
        self,
        target: str,
        token: TokenSource,
        *,
        tls: TlsOptions | None = None,
        retry: Retry | None = None,
        backoff: Backoff | None = None,
        idle_timeout: float = 45.0,
    ) -> None:
        self._transport = Transport(target, token, tls, retry or Retry())
        self._backoff = backoff or Backoff()
        self._idle_timeout = idle_timeout
        self._closing = asyncio.Event()

    async def __aenter__(self) -> PlatformClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the channel and ends running ``watch()`` iterations (``close`` is the CloseSession call)."""
        self._closing.set()
        await self._transport.close()

    def _stub(self) -> Any:
        # grpc.aio stubs: the generated .pyi types them as sync stubs.
        return platform_pb2_grpc.PlatformServiceStub(self._transport.channel())

    async def open_session(
        self,
        *,
        merchant_id: str,
        category: common_pb2.Category.ValueType,
        text: str | None = None,
        order_card: common_pb2.OrderCard | None = None,
        messages: Sequence[Content] = (),
        order_id: str = "",
        request_id: str | None = None,
    ) -> platform_pb2.OpenSessionResponse:
        """Opens a session with ``merchant_id`` (SPEC R2 assigns the agent) and returns it with its messages.

        The opening messages are ``text``, then ``order_card``, then ``messages`` (1–10 in all). A
        ``request_id`` (default: a new UUID) is sent on every try, so a retry after a lost answer returns
        the session the first try made instead of a second one (AIP-155). Raises ClientError, e.g.
        FAILED_PRECONDITION NO_ELIGIBLE_AGENT, NOT_FOUND MERCHANT_NOT_FOUND, INVALID_ARGUMENT.
        """
        opening = [content(m) for m in (text, order_card) if m is not None] + [content(m) for m in messages]
        request = platform_pb2.OpenSessionRequest(
            request_id=request_id or uuid.uuid4().hex,
            merchant_id=merchant_id,
            category=category,
            order_id=order_id,
            messages=opening,
        )
        stub = self._stub()
        return await self._transport.unary(stub.OpenSession, request, platform_pb2.OpenSessionResponse)

    async def send(
        self,
        session_id: str,
        *,
        text: str | None = None,
        order_card: common_pb2.OrderCard | None = None,
        client_msg_id: str | None = None,
    ) -> common_pb2.Message:
        """Sends one platform message (text or order card); retried with one ``client_msg_id`` (SPEC R4)."""
        if (text is None) == (order_card is None):
            raise ValueError("exactly one of text, order_card")
        request = platform_pb2.SendMessageRequest(
            session_id=session_id,
            client_msg_id=client_msg_id or uuid.uuid4().hex,
            content=content(text if text is not None else cast(common_pb2.OrderCard, order_card)),
        )
        stub = self._stub()
        return await self._transport.unary(stub.SendMessage, request, common_pb2.Message)

    async def close(self, session_id: str, *, resolution: Outcome) -> common_pb2.Session:
        """Ends the session as RESOLVED (no ticket) or ESCALATED (a service ticket; SPEC R6).

        CloseSession carries no idempotency key, so a retry after a lost answer may meet the end the first
        try made (FAILED_PRECONDITION SESSION_CLOSED): the client then returns the session if it ended with
        this outcome, and raises otherwise. Raises ClientError.
        """
        request = platform_pb2.CloseSessionRequest(session_id=session_id, outcome=resolution)
        stub = self._stub()
        tries = 0

        async def close(metadata: tuple[tuple[str, str], ...], seconds: float) -> common_pb2.Session:
            nonlocal tries
            tries += 1
            return cast(common_pb2.Session, await stub.CloseSession(request, metadata=metadata, timeout=seconds))

        try:
            return await self._transport.call(close)
        except ClientError as err:
            if tries < 2 or err.reason != "SESSION_CLOSED":
                raise
            session = await self.get_session(session_id)
            if session.close_reason != _CLOSED_AS.get(resolution):
                raise
            return session

    async def get_session(self, session_id: str) -> common_pb2.Session:
        """The session, if this agent opened it (a supervisor: any); else NOT_FOUND."""
        stub = self._stub()
        request = platform_pb2.GetSessionRequest(session_id=session_id)
        return await self._transport.unary(stub.GetSession, request, common_pb2.Session)

    async def list_sessions(
        self,
        *,
        merchant_id: str = "",
        state: common_pb2.SessionState.ValueType = common_pb2.SESSION_STATE_UNSPECIFIED,
        page_size: int = 0,
        page_token: str = "",
    ) -> platform_pb2.ListSessionsResponse:
        """One page of this agent's sessions (a supervisor: all), newest first."""
        stub = self._stub()
        request = platform_pb2.ListSessionsRequest(
            merchant_id=merchant_id, state=state, page_size=page_size, page_token=page_token
        )
        return await self._transport.unary(stub.ListSessions, request, platform_pb2.ListSessionsResponse)

    async def list_messages(
        self, session_id: str, *, after_seq: int = 0, page_size: int = 0, page_token: str = ""
    ) -> platform_pb2.ListMessagesResponse:
        """One page of the session's messages after ``after_seq``, ascending seq."""
        stub = self._stub()
        request = platform_pb2.ListMessagesRequest(
            session_id=session_id, after_seq=after_seq, page_size=page_size, page_token=page_token
        )
        return await self._transport.unary(stub.ListMessages, request, platform_pb2.ListMessagesResponse)

    async def watch(
        self, session_id: str, *, after_seq: int = 0
    ) -> AsyncGenerator[platform_pb2.WatchSessionResponse, None]:
        """Yields the session's messages after ``after_seq``, read receipts, and last ``session_ended``.

        Reconnects like MerchantClient.events (backoff with full jitter, reset after a healthy period,
        a fresh token on TOKEN_EXPIRED), resuming after the highest message seq yielded, so no message
        is yielded twice or skipped (SPEC R8). Heartbeats are not yielded. The iteration ends after
        ``session_ended``. Raises ClientError for a status a reconnect would only repeat (NOT_FOUND, …).
        """
        loop = asyncio.get_running_loop()
        attempt = 0
        while not self._closing.is_set():
            started = loop.time()
            stub = self._stub()
            call = stub.WatchSession(
                platform_pb2.WatchSessionRequest(session_id=session_id, after_seq=after_seq),
                metadata=await self._transport.metadata(),
            )
            failure: ClientError | None = None
            try:
                while True:
                    async with asyncio.timeout(self._idle_timeout):
                        frame = await call.read()
                    if frame is EOF_:
                        break
                    kind = frame.WhichOneof("event")
                    if kind == "heartbeat":
                        continue
                    if kind == "message_added":
                        if frame.message_added.seq <= after_seq:
                            continue
                        after_seq = frame.message_added.seq
                    yield frame
                    if kind == "session_ended":
                        return
            except grpc.aio.AioRpcError as rpc_error:
                failure = from_rpc_error(rpc_error)
            except TimeoutError:
                failure = None
            except asyncio.CancelledError:
                # grpc.aio raises CancelledError from a call cancelled locally: by aclose(), that is the end.
                task = asyncio.current_task()
                if not self._closing.is_set() or task is None or task.cancelling():
                    raise
            finally:
                call.cancel()
            if self._closing.is_set():
                return
            if failure is not None:
                expired = failure.code is grpc.StatusCode.UNAUTHENTICATED and failure.reason == EXPIRED_REASON
                if expired and self._transport.refreshable:
                    continue
                if failure.code not in RECONNECT_CODES:
                    raise failure
            if loop.time() - started >= self._backoff.reset_after:
                attempt = 0
            retry_after = failure.retry_delay if failure is not None and failure.retry_delay else 0.0
            with contextlib.suppress(TimeoutError):  # aclose() ends the wait at once
                await asyncio.wait_for(self._closing.wait(), self._backoff.delay(attempt, at_least=retry_after))
            attempt += 1
