"""SPEC R4 "Text": blank means no visible character; controls and bidi controls are refused.

Everything here goes through ``Violations.text``, the one function every free-text field uses.
"""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from escalation.domain import text as text_rule
from escalation.domain.validation import Violations

BLANK = "must not be blank"
BIDI = "bidirectional controls"
CONTROL = "control characters"


def check(value: str, *, multiline: bool = True, required: bool = True, max_chars: int = 2000) -> list[str]:
    """The descriptions ``Violations.text`` notes for ``value`` (empty: accepted)."""
    violations = Violations()
    violations.text("f", value, max_chars=max_chars, required=required, multiline=multiline)
    return [item.description for item in violations._items]


# Characters that draw nothing, each seen in a bug report or an abuse write-up of a chat system.
INVISIBLE = {
    "zero-width space U+200B": "\u200b",
    "zero-width non-joiner U+200C": "\u200c",
    "zero-width joiner U+200D": "\u200d",
    "left-to-right mark U+200E": "\u200e",
    "right-to-left mark U+200F": "\u200f",
    "arabic letter mark U+061C": "\u061c",
    "word joiner U+2060": "\u2060",
    "function application U+2061": "\u2061",
    "invisible times U+2062": "\u2062",
    "invisible separator U+2063": "\u2063",
    "invisible plus U+2064": "\u2064",
    "BOM / zero-width no-break space U+FEFF": "\ufeff",
    "soft hyphen U+00AD": "\u00ad",
    "combining grapheme joiner U+034F": "\u034f",
    "mongolian vowel separator U+180E": "\u180e",
    "mongolian free variation selector U+180B": "\u180b",
    "hangul choseong filler U+115F": "\u115f",
    "hangul jungseong filler U+1160": "\u1160",
    "hangul filler U+3164": "\u3164",
    "halfwidth hangul filler U+FFA0": "\uffa0",
    "braille pattern blank U+2800": "\u2800",
    "khmer vowel inherent AQ U+17B4": "\u17b4",
    "khmer vowel inherent AA U+17B5": "\u17b5",
    "variation selector-16 U+FE0F": "\ufe0f",
    "variation selector-1 U+FE00": "\ufe00",
    "variation selector-17 U+E0100": "\U000e0100",
    "tag space U+E0020": "\U000e0020",
    "cancel tag U+E007F": "\U000e007f",
    "musical symbol null notehead U+1D159": "\U0001d159",
    "musical symbol begin beam U+1D173": "\U0001d173",
    "shorthand format letter overlap U+1BCA0": "\U0001bca0",
    "interlinear annotation anchor U+FFF9": "\ufff9",
    "inhibit symmetric swapping U+206A": "\u206a",
    "combining acute accent alone U+0301": "\u0301",
    "combining enclosing circle alone U+20DD": "\u20dd",
    "combining enclosing keycap alone U+20E3": "\u20e3",
    "devanagari vowel sign I alone U+093F": "\u093f",
    "thai vowel mai han-akat alone U+0E31": "\u0e31",
    "ideographic space U+3000": "\u3000",
    "no-break space U+00A0": "\u00a0",
    "en quad U+2000": "\u2000",
    "narrow no-break space U+202F": "\u202f",
    "ogham space mark U+1680": "\u1680",
}

VALID = {
    "latin": "Yes, it ships today.",
    "chinese": "可以，今天发货。",
    "arabic": "نعم، سيتم الشحن اليوم",
    "hebrew with RLM around punctuation": "כן\u200f, היום",
    "hindi with combining vowel signs": "हाँ, आज भेज देंगे।",
    "thai with combining vowels and tone marks": "ได้ครับ จัดส่งวันนี้",
    "korean": "네, 오늘 발송합니다",
    "accented with a combining mark": "Cafe\u0301",
    "family emoji (ZWJ sequence)": "👨\u200d👩\u200d👧",
    "rainbow flag (VS16 + ZWJ)": "🏳\ufe0f\u200d🌈",
    "scotland flag (tag sequence)": "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",
    "skin tone modifier": "👍🏽",
    "keycap": "1\ufe0f\u20e3",
    "emoji newer than this Python's Unicode tables": "\U0001fae8",
    "private-use icon": "\ue000",
    "arabic number sign over digits": "\u0600\u0661\u0662",
    "zero-width space between words": "ship\u200btoday",
    "multi-line with tab": "line one\n\tline two",
}


@pytest.mark.parametrize("ch", INVISIBLE.values(), ids=INVISIBLE.keys())
def test_a_known_invisible_character_alone_or_repeated_is_blank(ch: str) -> None:
    for value in (ch, ch * 3, f" {ch} ", f"{ch}\u200b{ch}"):
        assert any(BLANK in d for d in check(value)), value


def test_known_invisible_characters_together_are_blank() -> None:
    assert any(BLANK in d for d in check("".join(INVISIBLE.values())))


@pytest.mark.parametrize("value", VALID.values(), ids=VALID.keys())
def test_ordinary_text_in_any_script_and_emoji_sequences_are_valid(value: str) -> None:
    assert check(value) == []
    assert check(value.replace("\n\t", " "), multiline=False) == []


@pytest.mark.parametrize(
    "ch", ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069"]
)
def test_bidirectional_controls_are_refused_wherever_they_are(ch: str) -> None:
    for value in (f"refund {ch}redro{ch} ok", f"{ch}ok", f"ok{ch}", f"{ch}\u05e9\u05dc\u05d5\u05dd\u202c"):
        for multiline in (True, False):
            found = check(value, multiline=multiline)
            assert any(BIDI in d and f"U+{ord(ch):04X}" in d for d in found), (value, found)


def test_the_reported_reversed_word_is_refused() -> None:
    assert any(BIDI in d for d in check("refund \u202eredro\u202c ok"))


# --- properties over Unicode categories ----------------------------------------------------------

# Everything Python's tables call a letter, number, punctuation or symbol and the rule does not single
# out as drawing nothing (fillers, blank patterns).
visible_chars = st.characters(categories=("L", "N", "P", "S")).filter(text_rule.is_visible)
# Characters that draw nothing and are not refused: formats (less the bidi controls), marks,
# separators, and the default-ignorable fillers.
invisible_chars = st.one_of(
    st.characters(categories=("Cf", "Mn", "Mc", "Me", "Zs")).filter(
        lambda c: c not in text_rule.BIDI_CONTROLS and c not in text_rule.PREPENDED_CONCATENATION_MARKS
    ),
    st.sampled_from(sorted(INVISIBLE.values())),
)
allowed_chars = st.one_of(visible_chars, invisible_chars)


@given(st.text(invisible_chars, min_size=1, max_size=20))
def test_any_text_of_format_characters_marks_and_spaces_is_blank(value: str) -> None:
    assert not text_rule.has_visible(value)
    assert any(BLANK in d for d in check(value))


@given(st.text(allowed_chars, max_size=10), visible_chars, st.text(allowed_chars, max_size=10))
def test_one_visible_character_among_invisible_ones_makes_a_text_valid(before: str, visible: str, after: str) -> None:
    assert check(before + visible + after) == []


@given(
    st.text(allowed_chars, max_size=10),
    st.characters(categories=["Cc"]),
    st.text(allowed_chars, max_size=10),
    st.booleans(),
)
def test_a_control_character_is_refused_unless_newline_or_tab_in_multiline_text(
    before: str, control: str, after: str, multiline: bool
) -> None:
    value = f"ok{before}{control}{after}ok"
    refused = any(CONTROL in d for d in check(value, multiline=multiline))
    assert refused is not (multiline and control in "\n\t")


@given(st.text(allowed_chars, max_size=10), st.sampled_from(sorted(text_rule.BIDI_CONTROLS)), st.text(max_size=10))
def test_a_bidi_control_anywhere_is_refused_whatever_surrounds_it(before: str, control: str, after: str) -> None:
    assert any(BIDI in d for d in check(f"ok{before}{control}{after}"))


@given(st.sampled_from([0xFDD0, 0xFDEF, 0xFFFE, 0xFFFF, 0x1FFFE, 0x10FFFF]), st.booleans())
def test_noncharacters_are_refused(cp: int, multiline: bool) -> None:
    assert any("noncharacters" in d for d in check(f"ok{chr(cp)}", multiline=multiline))


def test_a_lone_surrogate_is_refused() -> None:
    assert any("surrogates" in d for d in check("ok\ud800"))


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\n"])
def test_single_line_fields_refuse_line_breaks_inside(separator: str) -> None:
    assert check(f"Ships{separator}today", multiline=False) != []
    assert check(f"Ships{separator}today") == []


def test_every_default_ignorable_code_point_is_invisible_and_not_just_format_characters() -> None:
    for low, high in text_rule.DEFAULT_IGNORABLE:
        for cp in range(low, high + 1):
            assert not text_rule.is_visible(chr(cp)), hex(cp)
    # The fillers are letters (Lo) by category: only the table makes them invisible.
    assert unicodedata.category("\u3164") == "Lo"


def test_an_optional_field_may_be_empty_or_whitespace_but_not_invisible() -> None:
    assert check("", required=False) == []
    assert check("  ", required=False) == []
    assert any(BLANK in d for d in check("\u200b", required=False))


def test_length_counts_after_trimming_and_reports_once() -> None:
    assert check(f"  {'x' * 10}\n", max_chars=10) == []
    assert check("x" * 11, max_chars=10) == ["must be at most 10 characters after trimming (got 11)"]
