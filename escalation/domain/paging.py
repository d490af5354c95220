"""Opaque page tokens (AIP-158): the last key seen plus a fingerprint of the request's filters.

A token is only valid with the filters it was issued for; anything else (garbage, tampering, a
token from another list) is INVALID_ARGUMENT on ``page_token``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from escalation.errors import FieldViolation, InvalidArgument

_VERSION = 1


def _fingerprint(filters: Any) -> str:
    return hashlib.sha256(json.dumps(filters, sort_keys=True, default=str).encode()).hexdigest()[:16]


def encode(last_key: list[Any], filters: Any) -> str:
    """A token that resumes after ``last_key`` for the same ``filters``."""
    body = json.dumps({"v": _VERSION, "k": last_key, "f": _fingerprint(filters)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")


def decode(token: str, filters: Any, *, field: str = "page_token") -> list[Any] | None:
    """The last key of the previous page, or None for the first page."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        body = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise InvalidArgument([FieldViolation(field, "is not a page token this service issued")]) from None
    if not isinstance(body, dict) or body.get("v") != _VERSION or not isinstance(body.get("k"), list):
        raise InvalidArgument([FieldViolation(field, "is not a page token this service issued")])
    if body.get("f") != _fingerprint(filters):
        raise InvalidArgument([FieldViolation(field, "was issued for a request with different filters")])
    key: list[Any] = body["k"]
    return key
