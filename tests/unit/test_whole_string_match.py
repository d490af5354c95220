"""SPEC §3: identifiers match as whole strings. ``re.match`` with ``$`` accepts a trailing newline."""

from __future__ import annotations

import ast
import re
import time
import uuid
from pathlib import Path

import jwt
import pytest
from google.protobuf import timestamp_pb2

from escalation import auth, errors
from escalation.api import session_requests
from escalation.config import JwtSettings
from escalation.domain import messages, paging
from escalation.domain.session import Sender
from escalation.domain.validation import Violations
from escalation.v1 import common_pb2

ROOT = Path(__file__).resolve().parents[2]
SUFFIXES = ["\n", "\r\n", " ", "\x00", "\u2028"]


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("value", ["shop-a", "order-42", "a", "x" * 63])
def test_an_identifier_with_anything_after_it_is_refused(value: str, suffix: str) -> None:
    check = Violations()
    check.identifier("merchant_id", value)
    assert not check
    check.identifier("merchant_id", value + suffix)
    assert check


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_a_client_msg_id_with_anything_after_it_is_refused(suffix: str) -> None:
    check = Violations()
    assert session_requests.client_msg_id(check, "c-1") == "c-1"
    assert not check
    session_requests.client_msg_id(check, "c-1" + suffix)
    assert check


@pytest.mark.parametrize("currency", ["CNY\n", "USD\r\n", "EUR "])
def test_a_currency_with_a_trailing_newline_is_refused(currency: str) -> None:
    content = common_pb2.MessageContent(
        order_card=common_pb2.OrderCard(
            order_id="o-1",
            status="PAID",
            create_time=timestamp_pb2.Timestamp(seconds=1_700_000_000),
            paid_amount=common_pb2.Money(amount_minor=1, currency=currency),
            items=[common_pb2.OrderItem(product_id="p-1", name="Mug", quantity=1)],
            detail_url="https://shop.example/o-1",
        )
    )
    check = Violations()
    messages.content(check, "content", content, Sender.PLATFORM)
    assert [v.field for v in check._items] == ["content.order_card.paid_amount.currency"]


@pytest.mark.parametrize(("claim", "value"), [("sub", "agent-1\n"), ("merchant_id", "shop-a\n")])
def test_a_token_whose_subject_or_merchant_ends_in_a_newline_is_refused(claim: str, value: str) -> None:
    secret = "k" * 40
    claims = {"sub": "agent-1", "role": "merchant", "merchant_id": "shop-a", "exp": time.time() + 60}
    verifier = auth.TokenVerifier(JwtSettings(algorithm="HS256", key=secret))
    assert verifier.verify(f"Bearer {jwt.encode(claims, secret)}").subject == "agent-1"
    with pytest.raises(errors.Unauthenticated):
        verifier.verify(f"Bearer {jwt.encode(claims | {claim: value}, secret)}")


def _anchored_patterns() -> list[str]:
    """Every regex literal in our code ending in ``$`` without re.MULTILINE: one `.match` away from the bug."""
    found = []
    for path in sorted([*(ROOT / "escalation").rglob("*.py"), *(ROOT / "workers").rglob("*.py")]):
        if "escalation/v1" in path.as_posix():
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            if not (isinstance(node.func.value, ast.Name) and node.func.value.id == "re") or not node.args:
                continue
            pattern = node.args[0]
            multiline = any("MULTILINE" in ast.unparse(arg) for arg in [*node.args[1:], *node.keywords])
            if isinstance(pattern, ast.Constant) and str(pattern.value).endswith("$") and not multiline:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {pattern.value!r}")
    return found


def test_no_pattern_relies_on_dollar_to_end_a_match() -> None:
    # `$` also matches before a final newline; use `fullmatch` (or `\Z`) instead.
    assert _anchored_patterns() == []
    assert re.match(r"^a$", "a\n") is not None  # the trap itself, so this test keeps its reason


@pytest.mark.parametrize("extra", ["\n", "\r\n", " ", "=", "==", "\t", "!", ".", "\u00e9"])
@pytest.mark.parametrize("where", ["end", "middle"])
def test_a_page_token_with_anything_added_is_refused(extra: str, where: str) -> None:
    # base64 decoders skip bytes outside their alphabet: "token\n" used to resume like "token".
    filters = ["sessions", "shop-a"]
    token = paging.encode(["2026-01-01T00:00:00+00:00", str(uuid.uuid4())], filters)
    check = Violations()
    assert paging.decode(token, filters, check) is not None
    assert not check
    edited = token + extra if where == "end" else token[:8] + extra + token[8:]
    assert paging.decode(edited, filters, check) is None
    assert check


_SID = "0d8f0c43-2f0e-4f8a-9f7e-9a8b7c6d5e4f"


@pytest.mark.parametrize(
    "key",
    [
        ["2026-01-01T00:00:00+00:00", _SID + "\n"],
        ["2026-01-01T00:00:00+00:00", "{" + _SID + "}"],
        ["2026-01-01T00:00:00+00:00", "urn:uuid:" + _SID],
        ["2026-01-01T00:00:00+00:00", _SID.upper()],
        ["2026-01-01T00:00:00+00:00", _SID.replace("-", "")],
        ["2026-01-01T00:00:00+00:00\n", _SID],
        ["2026-01-01 00:00:00+00:00", _SID],
        ["2026-01-01T00:00:00Z", _SID],
        ["2026-01-01T00:00:00", _SID],
        ["2026-01-01", _SID],
    ],
)
def test_a_page_key_matches_as_whole_canonical_strings(key: list[str]) -> None:
    check = Violations()
    canonical = ["2026-01-01T00:00:00+00:00", _SID]
    assert session_requests.time_and_uuid_key(check, canonical) is not None
    assert not check
    assert session_requests.time_and_uuid_key(check, key) is None
    assert check


@pytest.mark.parametrize("template_id", ["t-1\n", "t 1", "", "t-1\u2028"])
def test_a_template_page_key_needs_an_identifier(template_id: str) -> None:
    check = Violations()
    assert session_requests.time_and_id_key(check, ["2026-01-01T00:00:00.500000+00:00", "t-1"]) is not None
    assert not check
    assert session_requests.time_and_id_key(check, ["2026-01-01T00:00:00.500000+00:00", template_id]) is None
    assert check
