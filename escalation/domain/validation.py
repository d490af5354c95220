"""Request validation that collects every violation, so one INVALID_ARGUMENT names all bad fields."""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime, timedelta
from typing import Self

from escalation.errors import FieldViolation, InvalidArgument

# What trimming removes: whitespace, but not the control characters str.strip() would also eat
# (\x1c–\x1f, \x85), which must be refused instead.
WHITESPACE = (
    " \t\n\r\x0b\x0c\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
# google.protobuf.Timestamp's range, 0001-01-01 through 9999-12-31.
MIN_TIMESTAMP_SECONDS, MAX_TIMESTAMP_SECONDS = -62135596800, 253402300799
IDENTIFIER = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
IDENTIFIER_RULE = "must be 1–64 characters of A–Z, a–z, 0–9, '.', '_', ':' or '-'"
MAX_PAGE_SIZE = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Violations:
    """Collects field violations; ``raise_if_any`` turns them into one InvalidArgument."""

    def __init__(self) -> None:
        self._items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> Self:
        self._items.append(FieldViolation(field, description))
        return self

    def __bool__(self) -> bool:
        return bool(self._items)

    def raise_if_any(self) -> None:
        if self._items:
            raise InvalidArgument(self._items)

    def identifier(self, field: str, value: str, *, required: bool = True) -> str:
        """Checks an id field; returns it unchanged."""
        if not value:
            if required:
                self.add(field, "is required")
        elif not IDENTIFIER.match(value):
            self.add(field, IDENTIFIER_RULE)
        return value

    def text(self, field: str, value: str, *, max_chars: int, required: bool = True, multiline: bool = True) -> str:
        """Trims surrounding whitespace; rejects empty, over-long and control characters."""
        trimmed = value.strip(WHITESPACE)
        if not trimmed:
            if required:
                self.add(field, "is required" if not value else "must not be blank")
            return trimmed
        if len(trimmed) > max_chars:
            self.add(field, f"must be at most {max_chars} characters after trimming (got {len(trimmed)})")
        allowed = "\n\t" if multiline else ""
        if any(unicodedata.category(ch) == "Cc" and ch not in allowed for ch in trimmed):
            self.add(field, "must not contain control characters")
        return trimmed

    def timestamp(self, field: str, seconds: int, nanos: int) -> datetime | None:
        """A Timestamp's value as an aware datetime, or None (noted) when it is out of range."""
        if not MIN_TIMESTAMP_SECONDS <= seconds <= MAX_TIMESTAMP_SECONDS or not 0 <= nanos < 1_000_000_000:
            self.add(field, "is not a valid timestamp (0001-01-01 to 9999-12-31)")
            return None
        return _EPOCH + timedelta(seconds=seconds, microseconds=nanos // 1000)

    def page_size(self, field: str, value: int, *, default: int) -> int:
        if value == 0:
            return default
        if not 1 <= value <= MAX_PAGE_SIZE:
            self.add(field, f"must be between 1 and {MAX_PAGE_SIZE} (0 means {default})")
            return default
        return value
