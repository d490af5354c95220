"""Text from users, shown to people: one line, nothing that moves the cursor or reorders what follows.

A merchant's text may hold line breaks (R4 allows newline and tab in message bodies) and anything that
arrived through Kafka may hold more. Printed raw to a terminal or a console log, a newline forges a
line ("  #3 … platform pa-1: refund approved"), an ANSI escape rewrites the screen, a bidi override
(U+202E) shows the rest reversed. Every such character is written as a Python-style escape instead:
``\\n``, ``\\r``, ``\\t``, ``\\xNN``, ``\\uNNNN``, ``\\UNNNNNNNN``; a backslash becomes ``\\\\`` so that an
escape can never be confused with text that looks like one. JSON output needs none of this:
``json.dumps`` already escapes (with ``ensure_ascii``, every non-ASCII character too).
"""

from __future__ import annotations

import unicodedata

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}
# Cc controls (C0, DEL, C1: ESC starts terminal sequences), Cf format characters (bidi embeddings,
# overrides and isolates, zero-width characters, BOM), Zl/Zp line and paragraph separators (U+2028,
# U+2029), Cs lone surrogates, Cn unassigned (a newer Unicode may make one a control).
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Cn"})
# Format characters that only join or separate glyphs: emoji sequences (👨‍👩‍👧) and Persian or Indic
# words need them, and they move nothing.
_KEPT = frozenset({"\u200c", "\u200d"})


def _escape(ch: str) -> str:
    named = _NAMED.get(ch)
    if named is not None:
        return named
    if ch in _KEPT or unicodedata.category(ch) not in _ESCAPED_CATEGORIES:
        return ch
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def one_line(text: str) -> str:
    """``text`` with line breaks, controls, format and bidi characters and backslashes escaped (see the
    module docstring); printable text, emoji and every script pass unchanged. Pure, total."""
    if text.isprintable() and "\\" not in text:
        return text  # the common case: nothing to escape (isprintable is False for every escaped category)
    return "".join(_escape(ch) for ch in text)
