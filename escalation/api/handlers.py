"""Rebuilding a grpc.aio method handler around new behaviour: what every interceptor of ours does.

grpc.aio gives an interceptor the servicer's ``RpcMethodHandler``; wrapping it means taking its one
behaviour out and building a handler of the same kind around a replacement.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

import grpc

# A string: grpc.RpcMethodHandler is generic only in the type stubs, not at run time.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"

_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def behavior_of(handler: Handler) -> Callable[..., Any]:
    """The servicer function (or coroutine / async generator function) the handler calls."""
    behavior = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    assert behavior is not None
    return behavior


def rebuilt(
    handler: Handler, behavior: Callable[..., Any], *, raw_request: bool = False, raw_response: bool = False
) -> Handler:
    """A handler of ``handler``'s kind calling ``behavior`` with ``handler``'s serializers; ``raw_request``:
    the behaviour takes request bytes, ``raw_response``: it returns response bytes (api/wire.py)."""
    factory = _FACTORIES[(handler.request_streaming, handler.response_streaming)]
    built: Handler = factory(
        behavior,
        request_deserializer=None if raw_request else handler.request_deserializer,
        response_serializer=None if raw_response else handler.response_serializer,
    )
    return built
