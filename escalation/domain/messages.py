"""SPEC R4 message content rules: which kinds each side may send, and each kind's limits."""

from __future__ import annotations

import re
import unicodedata

from escalation.domain import urls
from escalation.domain.session import ALLOWED_KINDS, Kind, Sender
from escalation.domain.validation import Violations
from escalation.v1 import common_pb2

MAX_TEXT = 2000
MAX_URL = 2048
MAX_IMAGE_SIDE = 10_000
MAX_ORDER_ITEMS = 50
MAX_QUANTITY = 10_000
_CURRENCY = re.compile(r"[A-Z]{3}")  # fullmatch: no trailing newline (SPEC §3)
# Timestamp's valid range (0001-01-01 .. 9999-12-31).
_MIN_SECONDS, _MAX_SECONDS = -62135596800, 253402300799

_KIND_BY_FIELD = {"text": Kind.TEXT, "order_card": Kind.ORDER_CARD, "image": Kind.IMAGE, "emoji": Kind.EMOJI}


def https_url(check: Violations, field: str, value: str, *, required: bool) -> None:
    """An https URL that is safe to fetch (SPEC R4, §3; the host rules are in domain/urls.py).

    Whitespace, control and format characters (bidi controls, zero-width) would make it read as
    another URL than it is, so they are refused. Every URL of a message is checked alike: images and
    product images are fetched by the ticketing system and merchant clients, and a detail link is
    opened by people.
    """
    if not value:
        if required:
            check.add(field, "is required")
        return
    if len(value) > MAX_URL:
        check.add(field, f"must be at most {MAX_URL} characters")
        return
    if any(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf") for ch in value):
        check.add(field, "must be an https:// URL without whitespace, control or format characters")
        return
    problem = urls.fetchable_url_problem(value)
    if problem is not None:
        check.add(field, problem)


def _timestamp(check: Violations, field: str, msg: common_pb2.OrderCard, name: str, *, required: bool) -> None:
    if not msg.HasField(name):  # type: ignore[arg-type]
        if required:
            check.add(field, "is required")
        return
    ts = getattr(msg, name)
    if not _MIN_SECONDS <= ts.seconds <= _MAX_SECONDS or not 0 <= ts.nanos < 1_000_000_000:
        check.add(field, "is not a valid timestamp")


def _order_card(check: Violations, f: str, card: common_pb2.OrderCard) -> None:
    check.identifier(f"{f}.order_id", card.order_id)
    check.text(f"{f}.status", card.status, max_chars=64, multiline=False)
    _timestamp(check, f"{f}.create_time", card, "create_time", required=True)
    _timestamp(check, f"{f}.pay_time", card, "pay_time", required=False)
    if not card.HasField("paid_amount"):
        check.add(f"{f}.paid_amount", "is required")
    else:
        if card.paid_amount.amount_minor < 0:
            check.add(f"{f}.paid_amount.amount_minor", "must not be negative")
        if not _CURRENCY.fullmatch(card.paid_amount.currency):
            check.add(f"{f}.paid_amount.currency", "must be an ISO 4217 code such as CNY")
    if not 1 <= len(card.items) <= MAX_ORDER_ITEMS:
        check.add(f"{f}.items", f"must list 1–{MAX_ORDER_ITEMS} items")
    for i, item in enumerate(card.items):
        g = f"{f}.items[{i}]"
        check.identifier(f"{g}.product_id", item.product_id)
        check.text(f"{g}.name", item.name, max_chars=200, multiline=False)
        https_url(check, f"{g}.image_url", item.image_url, required=False)
        check.text(f"{g}.spec", item.spec, max_chars=200, required=False, multiline=False)
        if not 1 <= item.quantity <= MAX_QUANTITY:
            check.add(f"{g}.quantity", f"must be between 1 and {MAX_QUANTITY}")
    if card.HasField("logistics"):
        check.text(f"{f}.logistics.courier", card.logistics.courier, max_chars=100, multiline=False)
        check.text(f"{f}.logistics.tracking_number", card.logistics.tracking_number, max_chars=100, multiline=False)
    https_url(check, f"{f}.detail_url", card.detail_url, required=True)


def content(check: Violations, field: str, value: common_pb2.MessageContent, sender: Sender) -> Kind | None:
    """Validates one message's content for ``sender``; returns its kind (None when it is unusable).

    Text is trimmed in place, so what is stored is what was validated.
    """
    which = value.WhichOneof("kind")
    if which is None:
        check.add(
            field, "is required: set exactly one of " + ", ".join(k.lower() for k in sorted(ALLOWED_KINDS[sender]))
        )
        return None
    kind = _KIND_BY_FIELD[which]
    if kind not in ALLOWED_KINDS[sender]:
        allowed = ", ".join(k.lower() for k in sorted(ALLOWED_KINDS[sender]))
        check.add(f"{field}.{which}", f"{sender.value.lower()} messages may only be {allowed}")
        return None
    f = f"{field}.{which}"
    if kind is Kind.TEXT:
        value.text.body = check.text(f"{f}.body", value.text.body, max_chars=MAX_TEXT)
    elif kind is Kind.ORDER_CARD:
        _order_card(check, f, value.order_card)
    elif kind is Kind.IMAGE:
        https_url(check, f"{f}.url", value.image.url, required=True)
        for side in ("width", "height"):
            if not 1 <= getattr(value.image, side) <= MAX_IMAGE_SIDE:
                check.add(f"{f}.{side}", f"must be between 1 and {MAX_IMAGE_SIDE} pixels")
    elif kind is Kind.EMOJI:
        code = check.text(f"{f}.code", value.emoji.code, max_chars=32, multiline=False)
        if any(ch.isspace() for ch in code):
            check.add(f"{f}.code", "must not contain whitespace")
        value.emoji.code = code
    return kind
