"""Request decoding under the interceptor, so bytes that do not decode are the client's mistake (SPEC §3).

grpc.aio decodes a unary request before any interceptor code runs and answers a failure with UNKNOWN
(plus an error-level traceback); a streamed frame that does not decode surfaces inside the handler as
an unexpected exception (INTERNAL). The interceptor therefore registers every method with identity
request bytes and decodes them here, where a failure becomes ``MalformedRequest`` (INVALID_ARGUMENT).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

import structlog

from escalation import errors

log = structlog.get_logger(__name__)

Decoder = Callable[[bytes], Any]


def decode(decoder: Decoder | None, raw: bytes, *, method: str, frame_index: int | None = None) -> Any:
    """The request message that ``raw`` (one gRPC message's bytes) encodes; ``raw`` itself without a decoder.

    ``frame_index`` numbers the frames of a request stream from 0 and is echoed in the error's metadata.
    Raises errors.MalformedRequest (INVALID_ARGUMENT, SPEC §3) when the bytes do not decode: corrupt wire
    format, a truncated varint or field, invalid UTF-8 in a string field. Logged as a warning: a client
    mistake, not a fault of ours.
    """
    if decoder is None:
        return raw
    try:
        return decoder(raw)
    # The decoder is a pure function of the client's bytes: whatever it raises is about those bytes.
    except Exception as exc:
        log.warning("rpc.malformed_request", method=method, frame_index=frame_index, size=len(raw), error=str(exc))
        metadata = {} if frame_index is None else {"frame_index": str(frame_index)}
        default = errors.MalformedRequest().message
        raise errors.MalformedRequest(f"{default} ({exc})", metadata=metadata) from None


class DecodedFrames:
    """A request stream whose frames are decoded one by one as the handler reads them.

    A frame that does not decode raises errors.MalformedRequest from ``__anext__``, in whichever task
    reads it; the frames before it have been handled normally.
    """

    def __init__(self, raw: AsyncIterable[bytes], decoder: Decoder | None, method: str) -> None:
        self._raw: AsyncIterator[bytes] = aiter(raw)
        self._decoder = decoder
        self._method = method
        self._index = 0

    def __aiter__(self) -> DecodedFrames:
        return self

    async def aclose(self) -> None:
        """Closes the frames unread (a handler that refuses the stream before reading it)."""
        close = getattr(self._raw, "aclose", None)
        if close is not None:
            await close()

    async def __anext__(self) -> Any:
        raw = await anext(self._raw)
        index, self._index = self._index, self._index + 1
        return decode(self._decoder, raw, method=self._method, frame_index=index)
