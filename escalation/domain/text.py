"""SPEC R4 "Text": which characters show something, and which free text may not hold.

Pure and table-driven, so the same answer comes from every free-text field (message text, emoji
code, order-card text, template title and text, display names) through ``Violations.text``.

*Visible* means the character draws something on its own. Not visible: whitespace, format
characters (Cf: zero-width space and joiners, word joiner, BOM, tags…, but not the few drawn as a
sign over the digits that follow, such as U+0600 ARABIC NUMBER SIGN), combining marks (M*: they
only decorate a base, so a text of marks alone has none), default-ignorable code points (Unicode's
Default_Ignorable_Code_Point, which includes the Hangul fillers and the variation selectors), and
characters that are drawn as an empty cell (braille blank U+2800, musical null notehead U+1D159).
Unassigned code points count as visible: this Python's Unicode tables may predate an emoji a client
sends (a new emoji must not become "blank"); private-use characters count as visible too (apps
draw their own icons with them).

*Refused*: control characters (Cc; newline and tab are allowed in multi-line fields), the
bidirectional embeddings, overrides and isolates (U+202A–U+202E, U+2066–U+2069: they reorder what
the reader sees, "Trojan Source", CVE-2021-42574), surrogates and noncharacters (not text), and in
single-line fields the line and paragraph separators. The implicit direction marks (LRM U+200E, RLM
U+200F, ALM U+061C) are allowed: they only set the direction of neighbouring punctuation, reorder
nothing beyond it, and right-to-left writers need them; they are not visible.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass

# What trimming removes: whitespace, but not the control characters str.strip() would also eat
# (\x1c–\x1f, \x85), which must be refused instead.
WHITESPACE = (
    " \t\n\r\x0b\x0c\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)

BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
BIDI_CONTROLS_RULE = "must not contain bidirectional controls (U+202A–U+202E, U+2066–U+2069)"
LINE_SEPARATORS = frozenset("\u2028\u2029")

# Unicode 15.1 DerivedCoreProperties.txt, Default_Ignorable_Code_Point (inclusive ranges). Listed
# here rather than derived because unicodedata does not expose the property; several ranges are
# unassigned (Cn) yet reserved to render as nothing.
DEFAULT_IGNORABLE: tuple[tuple[int, int], ...] = (
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)
# Drawn as an empty cell although their category says symbol: the braille blank pattern and the
# musical null notehead (both used to fake "non-empty" names and messages).
BLANK_SYMBOLS = frozenset("\u2800\U0001d159")
# Prepended_Concatenation_Mark: format characters (Cf) that are drawn, as a sign spanning the
# digits that follow (Arabic number sign, end of ayah…).
PREPENDED_CONCATENATION_MARKS = frozenset(
    "\u0600\u0601\u0602\u0603\u0604\u0605\u06dd\u070f\u0890\u0891\u08e2\U000110bd\U000110cd"
)
_INVISIBLE_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Mn", "Mc", "Me"})


def is_default_ignorable(ch: str) -> bool:
    """Unicode's Default_Ignorable_Code_Point for one character."""
    cp = ord(ch)
    return any(low <= cp <= high for low, high in DEFAULT_IGNORABLE)


def is_noncharacter(ch: str) -> bool:
    """U+FDD0–U+FDEF and the last two code points of every plane: reserved, never text."""
    cp = ord(ch)
    return 0xFDD0 <= cp <= 0xFDEF or cp & 0xFFFE == 0xFFFE


def is_visible(ch: str) -> bool:
    """Whether one character draws something on its own (module docstring: the rule)."""
    if ch.isspace() or ch in BLANK_SYMBOLS or is_default_ignorable(ch) or is_noncharacter(ch):
        return False
    return ch in PREPENDED_CONCATENATION_MARKS or unicodedata.category(ch) not in _INVISIBLE_CATEGORIES


@dataclass(frozen=True)
class Refusal:
    """Why one character may not appear in a text field: the BadRequest description and the character."""

    rule: str
    ch: str

    def description(self) -> str:
        return f"{self.rule}; found U+{ord(self.ch):04X}"


def refusals(text: str, *, multiline: bool) -> Iterator[Refusal]:
    """The first offending character of each refused kind in ``text``, in rule order (SPEC R4)."""
    found: dict[str, Refusal] = {}
    for ch in text:
        rule = _refused(ch, multiline=multiline)
        if rule is not None and rule not in found:
            found[rule] = Refusal(rule, ch)
    yield from found.values()


def _refused(ch: str, *, multiline: bool) -> str | None:
    category = unicodedata.category(ch)
    if category == "Cc" and not (multiline and ch in "\n\t"):
        return "must not contain control characters"
    if ch in BIDI_CONTROLS:
        return BIDI_CONTROLS_RULE
    if category == "Cs" or is_noncharacter(ch):
        return "must not contain surrogates or noncharacters"
    if not multiline and ch in LINE_SEPARATORS:
        return "must be a single line"
    return None


def has_visible(text: str) -> bool:
    """At least one character that shows something: otherwise the text is blank (SPEC R4)."""
    return any(is_visible(ch) for ch in text)
