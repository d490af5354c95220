"""Request validation that collects every violation, so one INVALID_ARGUMENT names all bad fields."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Self

from escalation.domain import text as text_rule
from escalation.errors import FieldViolation, InvalidArgument

# google.protobuf.Timestamp's range, 0001-01-01 through 9999-12-31.
MIN_TIMESTAMP_SECONDS, MAX_TIMESTAMP_SECONDS = -62135596800, 253402300799
# Used with fullmatch only: `$` would also match before a trailing newline (SPEC §3).
IDENTIFIER = re.compile(r"[A-Za-z0-9._:-]{1,64}")
IDENTIFIER_RULE = "must be 1–64 characters of A–Z, a–z, 0–9, '.', '_', ':' or '-'"
MAX_PAGE_SIZE = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def canonical_uuid(value: str) -> uuid.UUID | None:
    """``value`` as a UUID when it is written in canonical lower-case hyphenated form, else None.

    uuid.UUID alone also reads ``{…}``, ``urn:uuid:…``, upper case and unhyphenated forms: look-alike ids
    for one session (SPEC §3: identifiers match as whole strings)."""
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return None
    return parsed if str(parsed) == value else None


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
        """Checks an id field as a whole string (no trailing newline, SPEC §3); returns it unchanged."""
        if not value:
            if required:
                self.add(field, "is required")
        elif not IDENTIFIER.fullmatch(value):
            self.add(field, IDENTIFIER_RULE)
        return value

    def text(self, field: str, value: str, *, max_chars: int, required: bool = True, multiline: bool = True) -> str:
        """Checks one free-text field by SPEC R4 "Text"; returns it with surrounding whitespace trimmed.

        Notes, under ``field``: empty ("is required", when ``required``), blank (no visible
        character, see escalation.domain.text), longer than ``max_chars`` code points after
        trimming, and each refused kind of character (controls except newline and tab when
        ``multiline``, bidirectional controls, surrogates and noncharacters, line separators when
        not ``multiline``). An optional field (``required=False``) may be empty or whitespace
        (stored empty) but not hold only invisible characters: it would be stored showing nothing.
        """
        trimmed = value.strip(text_rule.WHITESPACE)
        if not trimmed:
            if required:
                self.add(field, "is required" if not value else "must not be blank")
            return trimmed
        for refusal in text_rule.refusals(trimmed, multiline=multiline):
            self.add(field, refusal.description())
        if not text_rule.has_visible(trimmed):
            self.add(field, "must not be blank: it has no visible character")
        elif len(trimmed) > max_chars:
            self.add(field, f"must be at most {max_chars} characters after trimming (got {len(trimmed)})")
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
