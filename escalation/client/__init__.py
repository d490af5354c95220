"""The asyncio Python SDK of the escalation service: the public gRPC API only (docs/clients.md).

``MerchantClient`` holds a merchant agent's Connect stream (reconnect with backoff, durable cursor,
resume without gap or duplicate, acks, read receipts, CURSOR_EXPIRED resync) and makes its unary calls;
``PlatformClient`` makes a platform agent's calls with safe retries and watches a session.
"""

from escalation.client.backoff import Backoff
from escalation.client.cursors import CursorStore, FileCursorStore, MemoryCursorStore
from escalation.client.errors import ClientError, FieldViolation
from escalation.client.merchant import ConnectionState, CursorExpired, MerchantClient
from escalation.client.platform import ESCALATED, RESOLVED, PlatformClient
from escalation.client.transport import Retry, TlsOptions, TokenSource

__all__ = [
    "ESCALATED",
    "RESOLVED",
    "Backoff",
    "ClientError",
    "ConnectionState",
    "CursorExpired",
    "CursorStore",
    "FieldViolation",
    "FileCursorStore",
    "MemoryCursorStore",
    "MerchantClient",
    "PlatformClient",
    "Retry",
    "TlsOptions",
    "TokenSource",
]
