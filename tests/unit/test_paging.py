"""Page tokens are opaque, bound to their filters, and reject garbage as a page_token violation."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from escalation.domain import paging
from escalation.domain.validation import Violations

keys = st.lists(st.one_of(st.text(max_size=20), st.integers(), st.booleans()), max_size=3)


def _decode(token: str, filters: list[object]) -> tuple[list[object] | None, Violations]:
    check = Violations()
    return paging.decode(token, filters, check), check


@given(keys, st.text(max_size=10))
def test_round_trip(key: list[object], merchant: str) -> None:
    decoded, check = _decode(paging.encode(key, ["x", merchant]), ["x", merchant])
    assert decoded == key
    assert not check


def test_empty_token_is_the_first_page() -> None:
    decoded, check = _decode("", ["x"])
    assert decoded is None
    assert not check


@given(st.text(min_size=1, max_size=40))
def test_garbage_is_a_page_token_violation(token: str) -> None:
    decoded, check = _decode(token, ["x"])
    assert decoded is None
    assert check


def test_deeply_nested_or_huge_tokens_are_violations_not_crashes() -> None:
    import base64

    nested = base64.urlsafe_b64encode(b"[" * 5000).decode()
    for token in (nested, "A" * 10_000):
        decoded, check = _decode(token, ["x"])
        assert decoded is None
        assert check


def test_token_from_other_filters_is_rejected() -> None:
    token = paging.encode(["a"], ["agents", "shop-a"])
    decoded, check = _decode(token, ["agents", "shop-b"])
    assert decoded is None
    assert check
