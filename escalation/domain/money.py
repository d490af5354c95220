"""Amounts in minor units shown in their currency: ``Money(12850, "CNY")`` is ``CNY 128.50``.

An order card carries ``paid_amount`` in minor units (SPEC R4) and the number of minor units in a major
one differs by currency: ISO 4217's "minor unit" column. Two decimals is the common case; the table
below lists every active code that differs (ISO 4217 list one, amendment 176, 2024). An unknown or
malformed code is shown with two decimals, the common case, after its code escaped for a terminal.
"""

from __future__ import annotations

from escalation.domain.display import one_line

DEFAULT_EXPONENT = 2
# ISO 4217 codes whose minor unit is not 2.
_ZERO = ("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND", "VUV")
_ZERO_CFA = ("XAF", "XOF", "XPF")
_THREE = ("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND")
_FOUR = ("CLF", "UYW")
EXPONENTS: dict[str, int] = {
    **dict.fromkeys((*_ZERO, *_ZERO_CFA), 0),
    **dict.fromkeys(_THREE, 3),
    **dict.fromkeys(_FOUR, 4),
}


def exponent(currency: str) -> int:
    """Digits after the decimal point in ``currency`` (ISO 4217 minor unit); 2 when unknown."""
    return EXPONENTS.get(currency, DEFAULT_EXPONENT)


def format_minor(amount_minor: int, currency: str) -> str:
    """``"CNY 1,234.50"`` for (123450, "CNY"), ``"JPY 1,200"`` for (1200, "JPY"), ``"KWD 1.500"`` for
    (1500, "KWD"): the code, then the amount with thousands separators and the currency's decimals.

    Exact (integer arithmetic, no float). Negative amounts keep their sign (the API only sends 0 or
    more, SPEC R4). The code is escaped for a terminal (escalation.domain.display); total.
    """
    digits = exponent(currency)
    sign = "-" if amount_minor < 0 else ""
    major, minor = divmod(abs(amount_minor), 10**digits)
    number = f"{major:,}" + (f".{minor:0{digits}d}" if digits else "")
    return f"{one_line(currency)} {sign}{number}"
