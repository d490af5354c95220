"""Opaque page tokens (AIP-158): the last key seen plus a fingerprint of the request's filters.

A token is only valid with the filters it was issued for. Tokens are not signed: a client that edits
one can only move its own position in a list it may read anyway, so decoding checks the shape and
range of every part (callers check the key's parts) and anything else is INVALID_ARGUMENT on
``page_token`` — never an internal error.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from google.protobuf.message import Message

from escalation.domain.limits import PAGE_BYTE_BUDGET
from escalation.domain.validation import Violations

_VERSION = 1
_MAX_TOKEN = 2048
NOT_OURS = "is not a page token this service issued"
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")  # fullmatch


Row = TypeVar("Row")
Item = TypeVar("Item", bound=Message)


def _encoded_field_bytes(size: int) -> int:
    """Bytes a repeated message field of ``size`` bytes takes in its response: tag, length, body."""
    length_prefix = 1
    while size >= 1 << (7 * length_prefix):
        length_prefix += 1
    return 1 + length_prefix + size  # every list response's item field number is below 16: one tag byte


def bounded_page(
    rows: Sequence[Row],
    page_size: int,
    to_item: Callable[[Row], Item],
    last_key: Callable[[Row], list[Any]],
    filters: Any,
    *,
    budget: int = PAGE_BYTE_BUDGET,
) -> tuple[list[Item], str]:
    """One page of a list RPC, bounded by count and by bytes (SPEC §3, AIP-158): (items, next_page_token).

    ``rows`` are read in page order with ``limit = page_size + 1`` (the extra row says whether more
    follow). Items are added while their encoded size stays within ``budget`` bytes; the first item is
    always added (a single item is bounded by the write limits). When rows are left, the token resumes
    right after the last item returned, so a short page skips nothing. ``last_key(row)`` is the key
    the list's query resumes after; the token is only valid with the same ``filters``.
    """
    items: list[Item] = []
    used = 0
    for row in rows[:page_size]:
        item = to_item(row)
        cost = _encoded_field_bytes(item.ByteSize())
        if items and used + cost > budget:
            break
        items.append(item)
        used += cost
    more = len(items) < len(rows)
    return items, encode(last_key(rows[len(items) - 1]), filters) if items and more else ""


def _fingerprint(filters: Any) -> str:
    return hashlib.sha256(json.dumps(filters, sort_keys=True, default=str).encode()).hexdigest()[:16]


def encode(last_key: list[Any], filters: Any) -> str:
    """A token that resumes after ``last_key`` for the same ``filters``."""
    body = json.dumps({"v": _VERSION, "k": last_key, "f": _fingerprint(filters)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")


def decode(token: str, filters: Any, check: Violations, *, field: str = "page_token") -> list[Any] | None:
    """The last key of the previous page; None for the first page or a bad token (noted in ``check``)."""
    if not token:
        return None
    if len(token) > _MAX_TOKEN:
        check.add(field, NOT_OURS)
        return None
    # The whole token is unpadded base64url: the decoder would skip a newline or other stray bytes
    # (SPEC §3, identifiers match as whole strings), so they are refused before it runs.
    if not _TOKEN.fullmatch(token):
        check.add(field, NOT_OURS)
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        body = json.loads(base64.b64decode(padded.encode(), altchars=b"-_", validate=True))
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        check.add(field, NOT_OURS)
        return None
    if not isinstance(body, dict) or type(body.get("v")) is not int or body.get("v") != _VERSION:
        check.add(field, NOT_OURS)
        return None
    if not isinstance(body.get("k"), list):
        check.add(field, NOT_OURS)
        return None
    if body.get("f") != _fingerprint(filters):
        check.add(field, "was issued for a request with different filters")
        return None
    key: list[Any] = body["k"]
    return key
