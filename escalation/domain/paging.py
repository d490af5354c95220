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
from typing import Any

from escalation.domain.validation import Violations

_VERSION = 1
_MAX_TOKEN = 2048
NOT_OURS = "is not a page token this service issued"


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
    try:
        padded = token + "=" * (-len(token) % 4)
        body = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        check.add(field, NOT_OURS)
        return None
    if not isinstance(body, dict) or body.get("v") != _VERSION or not isinstance(body.get("k"), list):
        check.add(field, NOT_OURS)
        return None
    if body.get("f") != _fingerprint(filters):
        check.add(field, "was issued for a request with different filters")
        return None
    key: list[Any] = body["k"]
    return key
