"""Page tokens are opaque, bound to their filters, and reject garbage as INVALID_ARGUMENT."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from escalation import errors
from escalation.domain import paging

keys = st.lists(st.one_of(st.text(max_size=20), st.integers(), st.booleans()), max_size=3)


@given(keys, st.text(max_size=10))
def test_round_trip(key: list[object], merchant: str) -> None:
    assert paging.decode(paging.encode(key, ["x", merchant]), ["x", merchant]) == key


def test_empty_token_is_the_first_page() -> None:
    assert paging.decode("", ["x"]) is None


@given(st.text(min_size=1, max_size=40))
def test_garbage_is_invalid_argument_on_page_token(token: str) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        paging.decode(token, ["x"])
    assert [v.field for v in caught.value.violations] == ["page_token"]


def test_token_from_other_filters_is_rejected() -> None:
    token = paging.encode(["a"], ["agents", "shop-a"])
    with pytest.raises(errors.InvalidArgument, match="different filters"):
        paging.decode(token, ["agents", "shop-b"])
