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


@given(
    st.lists(st.integers(min_value=0, max_value=3000), max_size=40),
    st.integers(min_value=1, max_value=50),
    st.integers(min_value=1, max_value=20_000),
)
def test_byte_bounded_pages_see_every_item_once_and_stay_within_the_budget(
    sizes: list[int], page_size: int, budget: int
) -> None:
    """SPEC §3, AIP-158: a page ends before the item that would pass the budget; its token resumes there."""
    from escalation.v1 import common_pb2, platform_pb2

    def message(row: tuple[int, int]) -> common_pb2.Message:
        return common_pb2.Message(
            seq=row[0], content=common_pb2.MessageContent(text=common_pb2.Text(body="x" * row[1]))
        )

    rows = list(enumerate(sizes))
    seen: list[int] = []
    after = -1
    for _ in range(len(rows) + 1):
        window = [r for r in rows if r[0] > after][: page_size + 1]  # what the query returns (limit + 1)
        items, token = paging.bounded_page(window, page_size, message, lambda r: [r[0]], ["t"], budget=budget)
        assert len(items) <= page_size
        assert bool(items) == bool(window), "a page with rows left is never empty"
        if len(items) > 1:
            assert platform_pb2.ListMessagesResponse(messages=items).ByteSize() <= budget
        seen += [m.seq for m in items]
        if not token:
            break
        decoded, check = _decode(token, ["t"])
        assert not check
        assert decoded == [items[-1].seq]
        after = items[-1].seq
    assert seen == [r[0] for r in rows], "every item exactly once, in order"
