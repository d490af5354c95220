"""Order-card amounts in minor units are shown in their currency with ISO 4217's minor unit."""

from __future__ import annotations

import pytest

from escalation.domain.money import exponent, format_minor


@pytest.mark.parametrize(
    ("amount", "currency", "shown"),
    [
        (12850, "CNY", "CNY 128.50"),
        (123456789, "USD", "USD 1,234,567.89"),
        (5, "EUR", "EUR 0.05"),
        (0, "CNY", "CNY 0.00"),
        (1200, "JPY", "JPY 1,200"),
        (98000, "KRW", "KRW 98,000"),
        (1500, "KWD", "KWD 1.500"),
        (7, "BHD", "BHD 0.007"),
        (12345, "CLF", "CLF 1.2345"),
        (-250, "CNY", "CNY -2.50"),
    ],
)
def test_amounts_use_the_currencys_minor_unit(amount: int, currency: str, shown: str) -> None:
    assert format_minor(amount, currency) == shown


def test_an_unknown_or_hostile_code_gets_two_decimals_and_is_escaped() -> None:
    assert exponent("XYZ") == 2
    assert format_minor(199, "XYZ") == "XYZ 1.99"
    assert format_minor(199, "\x1b[2J") == "\\x1b[2J 1.99"
