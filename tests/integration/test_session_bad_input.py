"""Bad input for every session RPC (SPEC §2 R4, §3 errors; limits from the proto comments).

Every case must fail with INVALID_ARGUMENT, reason INVALID_FIELDS, and a BadRequest whose field paths
are exactly the expected ones — never UNKNOWN or INTERNAL — and must leave the database untouched.
The values just inside each limit are checked to pass.

The tables run against one module-scoped server and database (a shop, two open sessions, page
tokens issued by the service) so that ~200 cases stay fast; the sweep at the end replays them all
against a fresh database from the ``pool`` fixture and compares the whole database state.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, cast

import asyncpg
import grpc
import pytest
from google.protobuf import message as pb_message
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2, status_pb2
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from escalation.domain import paging
from escalation.domain.validation import Violations
from escalation.v1 import common_pb2, merchant_pb2, merchant_pb2_grpc, platform_pb2, platform_pb2_grpc
from tests.conftest import with_database
from tests.integration.grpc_harness import bearer, failure, running_server
from tests.integration.sessions_harness import PLATFORM, make_shop, open_request, text

pytestmark = pytest.mark.integration

SHOP = "shop-a"
AGENT = bearer("merchant", "shop-a-sub-1", SHOP)
Build = Callable[["Env"], pb_message.Message]

# --- the shared environment ----------------------------------------------------------------------


@dataclass(frozen=True)
class Env:
    pool: asyncpg.Pool
    platform: platform_pb2_grpc.PlatformServiceAsyncStub
    merchant: merchant_pb2_grpc.MerchantServiceAsyncStub
    sid: str
    other_sid: str
    platform_sessions_token: str
    merchant_sessions_token: str
    messages_token: str


async def _environment(pool: asyncpg.Pool, channel: grpc.aio.Channel) -> Env:
    """One shop whose only agent gets both open sessions; page tokens the service issued for them."""
    platform = platform_pb2_grpc.PlatformServiceStub(channel)
    merchant = merchant_pb2_grpc.MerchantServiceStub(channel)
    await make_shop(channel, SHOP, agents={"shop-a-sub-1": 10})
    sid = (await platform.OpenSession(open_request(SHOP), metadata=PLATFORM)).session.session_id
    other = (await platform.OpenSession(open_request(SHOP), metadata=PLATFORM)).session.session_id
    await platform.SendMessage(platform_pb2.SendMessageRequest(session_id=sid, content=text("more")), metadata=PLATFORM)
    first_page = platform_pb2.ListSessionsRequest(page_size=1)
    env = Env(
        pool=pool,
        platform=platform,
        merchant=merchant,
        sid=sid,
        other_sid=other,
        platform_sessions_token=(await platform.ListSessions(first_page, metadata=PLATFORM)).next_page_token,
        merchant_sessions_token=(await merchant.ListSessions(first_page, metadata=AGENT)).next_page_token,
        messages_token=(
            await platform.ListMessages(
                platform_pb2.ListMessagesRequest(session_id=sid, page_size=1), metadata=PLATFORM
            )
        ).next_page_token,
    )
    assert env.platform_sessions_token
    assert env.merchant_sessions_token
    assert env.messages_token
    return env


@pytest.fixture(scope="module")
async def env(pg_admin_url: str, template_database: str) -> AsyncIterator[Env]:
    name = f"bad_input_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
        try:
            shared = await asyncpg.create_pool(with_database(pg_admin_url, name), min_size=1, max_size=10)
            assert shared is not None
            try:
                async with running_server(shared, with_database(pg_admin_url, name)) as channel:
                    yield await _environment(shared, channel)
            finally:
                await shared.close()
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def snapshot(pool: asyncpg.Pool) -> tuple[Any, ...]:
    """Everything a write could change: row counts, sequence positions, deadlines, agent load."""
    row = await pool.fetchrow(
        """
        SELECT (SELECT count(*) FROM sessions) AS sessions,
               (SELECT count(*) FROM messages) AS messages,
               (SELECT count(*) FROM merchant_events) AS events,
               (SELECT count(*) FROM tickets) AS tickets,
               (SELECT count(*) FROM outbox) AS outbox,
               (SELECT coalesce(sum(open_sessions), 0) FROM agents) AS load,
               (SELECT array_agg((session_id, state, last_seq, reply_deadline) ORDER BY session_id)::text
                  FROM sessions) AS session_state
        """
    )
    assert row is not None
    return tuple(row)


# --- request builders ----------------------------------------------------------------------------

UNKNOWN_SID = "7f0c2a52-9b1e-4c55-8a4e-3f7d51b0c9aa"  # well-formed, never stored
LONG_ID = "x" * 65
TOO_LONG_TEXT = "x" * 2001
MAX_TEXT = "y" * 2000


def image(url: str = "https://img.example/proof.jpg", width: int = 640, height: int = 480) -> common_pb2.MessageContent:
    return common_pb2.MessageContent(image=common_pb2.Image(url=url, width=width, height=height))


def emoji(code: str) -> common_pb2.MessageContent:
    return common_pb2.MessageContent(emoji=common_pb2.Emoji(code=code))


def item(**fields: Any) -> common_pb2.OrderItem:
    defaults: dict[str, Any] = {
        "product_id": "p-1",
        "name": "Mug",
        "image_url": "https://img.example/mug.png",
        "spec": "blue",
        "quantity": 1,
    }
    return common_pb2.OrderItem(**(defaults | fields))


def card(*, clear: tuple[str, ...] = (), **fields: Any) -> common_pb2.MessageContent:
    """A valid order card with ``fields`` replaced and ``clear`` unset."""
    defaults: dict[str, Any] = {
        "order_id": "o-1",
        "status": "PAID",
        "create_time": timestamp_pb2.Timestamp(seconds=1_700_000_000),
        "pay_time": timestamp_pb2.Timestamp(seconds=1_700_000_600),
        "paid_amount": common_pb2.Money(amount_minor=1999, currency="CNY"),
        "items": [item()],
        "logistics": common_pb2.Logistics(courier="SF", tracking_number="SF123"),
        "detail_url": "https://shop.example/orders/o-1",
    }
    order = common_pb2.OrderCard(**(defaults | fields))
    for name in clear:
        order.ClearField(name)  # type: ignore[arg-type]
    return common_pb2.MessageContent(order_card=order)


def opening(*messages: common_pb2.MessageContent, **fields: Any) -> Build:
    def build(_: Env) -> pb_message.Message:
        request = open_request(SHOP, request_id=uuid.uuid4().hex)
        if messages:
            del request.messages[:]
            request.messages.extend(messages)
        for name, value in fields.items():
            if name == "messages":
                del request.messages[:]
                request.messages.extend(value)
            else:
                setattr(request, name, value)
        return request

    return build


def _sid(env: Env, sid: str | None) -> str:
    return env.sid if sid is None else sid


def send(content: common_pb2.MessageContent | None, *, sid: str | None = None, client_msg_id: str = "") -> Build:
    def build(e: Env) -> pb_message.Message:
        request = platform_pb2.SendMessageRequest(session_id=_sid(e, sid), client_msg_id=client_msg_id)
        if content is not None:
            request.content.CopyFrom(content)
        return request

    return build


def reply(
    content: common_pb2.MessageContent | None, *, sid: str | None = None, client_msg_id: str = "", template_id: str = ""
) -> Build:
    def build(e: Env) -> pb_message.Message:
        request = merchant_pb2.ReplyRequest(
            session_id=_sid(e, sid), client_msg_id=client_msg_id, template_id=template_id
        )
        if content is not None:
            request.content.CopyFrom(content)
        return request

    return build


Outcome = platform_pb2.CloseSessionRequest.Outcome


def close(outcome: int = Outcome.OUTCOME_RESOLVED, *, sid: str | None = None) -> Build:
    return lambda e: platform_pb2.CloseSessionRequest(session_id=_sid(e, sid), outcome=Outcome.ValueType(outcome))


def get(sid: str) -> Build:
    return lambda _: platform_pb2.GetSessionRequest(session_id=sid)


def list_sessions(**fields: Any) -> Build:
    return lambda _: platform_pb2.ListSessionsRequest(**fields)


def list_messages(*, sid: str | None = None, **fields: Any) -> Build:
    return lambda e: platform_pb2.ListMessagesRequest(session_id=_sid(e, sid), **fields)


def _token(body: str) -> str:
    return base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")


# --- the table -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    rpc: str
    build: Build
    fields: frozenset[str]


CASES: list[Any] = []


def bad(case_id: str, rpc: str, build: Build, *fields: str) -> None:
    CASES.append(pytest.param(Case(rpc, build, frozenset(fields)), id=f"{rpc}-{case_id}"))


def text_cases(rpc: str, wrap: Callable[[common_pb2.MessageContent], Build], field: str) -> None:
    """R4 text rules, for whichever RPC carries the message (``field`` is the Text's path)."""
    body = f"{field}.body"
    bad("empty-text", rpc, wrap(text("")), body)
    bad("whitespace-only-text", rpc, wrap(text(" \n\t\u3000 ")), body)
    bad("2001-char-text", rpc, wrap(text(TOO_LONG_TEXT)), body)
    bad("2001-chars-after-trimming", rpc, wrap(text(f"  {TOO_LONG_TEXT}\n")), body)
    for name, ch in [
        ("nul", "\x00"),
        ("bel", "\x07"),
        ("esc", "\x1b"),
        ("del", "\x7f"),
        ("cr", "\r"),
        ("c1-nel", "\x85"),
    ]:
        bad(f"control-char-{name}-in-text", rpc, wrap(text(f"ship{ch}today")), body)


# PlatformService.OpenSession
OPEN = "Platform.OpenSession"
bad("missing-request-id", OPEN, opening(request_id=""), "request_id")
bad("65-char-request-id", OPEN, opening(request_id=LONG_ID), "request_id")
bad("missing-merchant-id", OPEN, opening(merchant_id=""), "merchant_id")
bad("malformed-merchant-id", OPEN, opening(merchant_id="shop a"), "merchant_id")
bad("malformed-order-id", OPEN, opening(order_id="order/1"), "order_id")
bad("category-unspecified", OPEN, opening(category=common_pb2.CATEGORY_UNSPECIFIED), "category")
bad("category-99", OPEN, opening(category=common_pb2.Category.ValueType(99)), "category")
bad("0-opening-messages", OPEN, opening(messages=[]), "messages")
bad("11-opening-messages", OPEN, opening(messages=[text(f"m{i}") for i in range(11)]), "messages")
bad("empty-message-content", OPEN, opening(common_pb2.MessageContent()), "messages[0]")
bad("second-message-bad", OPEN, opening(text("ok"), text("\x00")), "messages[1].text.body")
bad("platform-sends-image", OPEN, opening(image()), "messages[0].image")
bad("platform-sends-emoji", OPEN, opening(emoji("[ok]")), "messages[0].emoji")
bad(
    "order-card-item-quantity-0",
    OPEN,
    opening(text("see card"), card(items=[item(quantity=0)])),
    "messages[1].order_card.items[0].quantity",
)
text_cases(OPEN, lambda c: opening(c), "messages[0].text")

# PlatformService.SendMessage
SEND = "Platform.SendMessage"
bad("missing-session-id", SEND, send(text("hi"), sid=""), "session_id")
for label, malformed in [
    ("not-a-uuid", "not-a-uuid"),
    ("truncated-uuid", UNKNOWN_SID[:-1]),
    ("uuid-with-spaces", f" {UNKNOWN_SID} "),
    ("path-traversal", "../sessions/1"),
]:
    bad(f"malformed-session-id-{label}", SEND, send(text("hi"), sid=malformed), "session_id")
for label, non_canonical in [
    ("upper-case", UNKNOWN_SID.upper()),
    ("braces", "{" + UNKNOWN_SID + "}"),
    ("urn", f"urn:uuid:{UNKNOWN_SID}"),
    ("no-hyphens", UNKNOWN_SID.replace("-", "")),
]:
    bad(
        f"non-canonical-session-id-{label}",
        SEND,
        send(text("hi"), sid=non_canonical),
        "session_id",
    )
bad("client-msg-id-with-space", SEND, send(text("hi"), client_msg_id="msg 1"), "client_msg_id")
bad("65-char-client-msg-id", SEND, send(text("hi"), client_msg_id=LONG_ID), "client_msg_id")
bad("missing-content", SEND, send(None), "content")
bad("empty-content", SEND, send(common_pb2.MessageContent()), "content")
bad("platform-sends-image", SEND, send(image()), "content.image")
bad("platform-sends-emoji", SEND, send(emoji("[ok]")), "content.emoji")
text_cases(SEND, lambda c: send(c), "content.text")
OC = "content.order_card"
for label, content, fields in [
    ("missing-order-id", card(order_id=""), [f"{OC}.order_id"]),
    ("malformed-order-id", card(order_id="o 1"), [f"{OC}.order_id"]),
    ("missing-status", card(status=""), [f"{OC}.status"]),
    ("65-char-status", card(status="S" * 65), [f"{OC}.status"]),
    ("missing-create-time", card(clear=("create_time",)), [f"{OC}.create_time"]),
    ("create-time-out-of-range", card(create_time=timestamp_pb2.Timestamp(seconds=10**12)), [f"{OC}.create_time"]),
    ("pay-time-bad-nanos", card(pay_time=timestamp_pb2.Timestamp(seconds=1, nanos=-1)), [f"{OC}.pay_time"]),
    ("missing-paid-amount", card(clear=("paid_amount",)), [f"{OC}.paid_amount"]),
    (
        "negative-paid-amount",
        card(paid_amount=common_pb2.Money(amount_minor=-1, currency="CNY")),
        [f"{OC}.paid_amount.amount_minor"],
    ),
    (
        "lower-case-currency",
        card(paid_amount=common_pb2.Money(amount_minor=1, currency="cny")),
        [f"{OC}.paid_amount.currency"],
    ),
    (
        "two-letter-currency",
        card(paid_amount=common_pb2.Money(amount_minor=1, currency="CN")),
        [f"{OC}.paid_amount.currency"],
    ),
    ("missing-currency", card(paid_amount=common_pb2.Money(amount_minor=1)), [f"{OC}.paid_amount.currency"]),
    ("0-items", card(items=[]), [f"{OC}.items"]),
    ("51-items", card(items=[item(product_id=f"p-{i}") for i in range(51)]), [f"{OC}.items"]),
    ("item-quantity-0", card(items=[item(quantity=0)]), [f"{OC}.items[0].quantity"]),
    ("item-quantity-10001", card(items=[item(quantity=10_001)]), [f"{OC}.items[0].quantity"]),
    ("item-negative-quantity", card(items=[item(), item(quantity=-3)]), [f"{OC}.items[1].quantity"]),
    ("item-missing-product-id", card(items=[item(product_id="")]), [f"{OC}.items[0].product_id"]),
    ("item-missing-name", card(items=[item(name=" ")]), [f"{OC}.items[0].name"]),
    ("item-201-char-name", card(items=[item(name="n" * 201)]), [f"{OC}.items[0].name"]),
    ("item-newline-in-name", card(items=[item(name="a\nb")]), [f"{OC}.items[0].name"]),
    ("item-201-char-spec", card(items=[item(spec="s" * 201)]), [f"{OC}.items[0].spec"]),
    ("item-http-image-url", card(items=[item(image_url="http://img.example/m.png")]), [f"{OC}.items[0].image_url"]),
    ("item-javascript-image-url", card(items=[item(image_url="javascript:alert(1)")]), [f"{OC}.items[0].image_url"]),
    ("missing-detail-url", card(detail_url=""), [f"{OC}.detail_url"]),
    ("http-detail-url", card(detail_url="http://shop.example/o-1"), [f"{OC}.detail_url"]),
    ("javascript-detail-url", card(detail_url="javascript:alert(document.cookie)"), [f"{OC}.detail_url"]),
    ("2049-char-detail-url", card(detail_url="https://shop.example/" + "a" * 2028), [f"{OC}.detail_url"]),
    (
        "logistics-empty",
        card(logistics=common_pb2.Logistics()),
        [f"{OC}.logistics.courier", f"{OC}.logistics.tracking_number"],
    ),
    (
        "logistics-101-char-tracking-number",
        card(logistics=common_pb2.Logistics(courier="SF", tracking_number="9" * 101)),
        [f"{OC}.logistics.tracking_number"],
    ),
]:
    bad(f"order-card-{label}", SEND, send(content), *fields)

# PlatformService.CloseSession
CLOSE = "Platform.CloseSession"
bad("missing-session-id", CLOSE, close(sid=""), "session_id")
bad("malformed-session-id", CLOSE, close(sid="session-1"), "session_id")
bad("outcome-unspecified", CLOSE, close(Outcome.OUTCOME_UNSPECIFIED), "outcome")
bad("outcome-99", CLOSE, close(99), "outcome")
bad("everything-missing", CLOSE, close(Outcome.OUTCOME_UNSPECIFIED, sid=""), "session_id", "outcome")

# MerchantService.Reply
REPLY = "Merchant.Reply"
bad("missing-session-id", REPLY, reply(text("hi"), sid=""), "session_id")
bad("malformed-session-id", REPLY, reply(text("hi"), sid="12345"), "session_id")
bad("client-msg-id-with-space", REPLY, reply(text("hi"), client_msg_id="c 1"), "client_msg_id")
bad("65-char-client-msg-id", REPLY, reply(text("hi"), client_msg_id=LONG_ID), "client_msg_id")
bad("neither-content-nor-template", REPLY, reply(None), "content", "template_id")
bad("both-content-and-template", REPLY, reply(text("hi"), template_id="tpl-1"), "content", "template_id")
bad("empty-content", REPLY, reply(common_pb2.MessageContent()), "content")
bad("malformed-template-id", REPLY, reply(None, template_id="tpl 1"), "template_id")
bad("merchant-sends-order-card", REPLY, reply(card()), "content.order_card")
text_cases(REPLY, lambda c: reply(c), "content.text")
for label, content, fields in [
    ("image-http-url", image(url="http://img.example/a.png"), ["content.image.url"]),
    ("image-javascript-url", image(url="javascript:alert(1)"), ["content.image.url"]),
    ("image-data-url", image(url="data:image/png;base64,AAAA"), ["content.image.url"]),
    ("image-url-without-host", image(url="https:///a.png"), ["content.image.url"]),
    ("image-url-with-space", image(url="https://img.example/a b.png"), ["content.image.url"]),
    ("image-2049-char-url", image(url="https://img.example/" + "a" * 2029), ["content.image.url"]),
    ("image-missing-url", image(url=""), ["content.image.url"]),
    ("image-width-0", image(width=0), ["content.image.width"]),
    ("image-height-0", image(height=0), ["content.image.height"]),
    ("image-width-10001", image(width=10_001), ["content.image.width"]),
    ("image-height-10001", image(height=10_001), ["content.image.height"]),
    ("image-negative-sides", image(width=-1, height=-1), ["content.image.width", "content.image.height"]),
    ("empty-emoji", emoji(""), ["content.emoji.code"]),
    ("33-char-emoji", emoji("e" * 33), ["content.emoji.code"]),
    ("emoji-with-space", emoji("[thumbs up]"), ["content.emoji.code"]),
    ("emoji-with-control-char", emoji("[ok]\x1b"), ["content.emoji.code"]),
]:
    bad(label, REPLY, reply(content), *fields)

# GetSession, ListSessions, ListMessages on both services.
for side in ("Platform", "Merchant"):
    GET, LIST_S, LIST_M = f"{side}.GetSession", f"{side}.ListSessions", f"{side}.ListMessages"
    bad("missing-session-id", GET, get(""), "session_id")
    bad("malformed-session-id", GET, get("not-a-uuid"), "session_id")
    bad("session-id-with-nul", GET, get(UNKNOWN_SID + "\x00"), "session_id")
    bad(
        "non-canonical-session-id-upper-case",
        GET,
        get(UNKNOWN_SID.upper()),
        "session_id",
    )
    bad(
        "upper-case-id-of-an-existing-session",
        GET,
        lambda e: platform_pb2.GetSessionRequest(session_id=e.sid.upper()),
        "session_id",
    )

    bad("page-size-minus-1", LIST_S, list_sessions(page_size=-1), "page_size")
    bad("page-size-1001", LIST_S, list_sessions(page_size=1001), "page_size")
    bad("page-size-10000", LIST_S, list_sessions(page_size=10_000), "page_size")
    bad("malformed-merchant-id", LIST_S, list_sessions(merchant_id="shop a"), "merchant_id")
    bad("state-99", LIST_S, list_sessions(state=common_pb2.SessionState.ValueType(99)), "state")
    bad(
        "open-time-end-before-start",
        LIST_S,
        list_sessions(
            open_time_start=timestamp_pb2.Timestamp(seconds=1_700_000_100),
            open_time_end=timestamp_pb2.Timestamp(seconds=1_700_000_000),
        ),
        "open_time_end",
    )
    bad(
        "open-time-start-out-of-range",
        LIST_S,
        list_sessions(open_time_start=timestamp_pb2.Timestamp(seconds=10**12)),
        "open_time_start",
    )
    bad(
        "open-time-end-bad-nanos",
        LIST_S,
        list_sessions(open_time_end=timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=-1)),
        "open_time_end",
    )
    for label, garbage in [
        ("text", "garbage"),
        ("punctuation", "!!!"),
        ("json-not-object", _token("[1, 2]")),
        ("wrong-version", _token('{"v": 2, "k": [], "f": ""}')),
        ("forged-fingerprint", _token('{"v": 1, "k": ["2024-01-01T00:00:00+00:00", "x"], "f": "0"}')),
    ]:
        bad(f"garbage-page-token-{label}", LIST_S, list_sessions(page_token=garbage), "page_token")
        bad(f"garbage-page-token-{label}", LIST_M, list_messages(page_token=garbage), "page_token")
    for rpc, build in [
        (LIST_S, list_sessions(page_token=_token("[" * 5000))),
        (LIST_M, list_messages(page_token=_token("[" * 5000))),
    ]:
        bad(
            "deeply-nested-page-token",
            rpc,
            build,
            "page_token",
        )
    # The fingerprint is an unkeyed hash of the filters, so a client can forge a token that passes it.
    unfiltered = ["sessions", None, None, "None", "None"]
    for label, key in [
        ("empty-key", []),
        ("bad-date", ["yesterday", "x"]),
        ("bad-uuid", ["2024-01-01T00:00:00+00:00", "x"]),
    ]:
        bad(
            f"forged-page-token-{label}", LIST_S, list_sessions(page_token=paging.encode(key, unfiltered)), "page_token"
        )
    for label, key in [
        ("year-1-east-of-utc", ["0001-01-01T00:00:00+14:00", UNKNOWN_SID]),
        ("year-9999-west-of-utc", ["9999-12-31T23:59:59-14:00", UNKNOWN_SID]),
    ]:
        bad(
            f"forged-page-token-{label}",
            LIST_S,
            list_sessions(page_token=paging.encode(key, unfiltered)),
            "page_token",
        )
    token_attr = "platform_sessions_token" if side == "Platform" else "merchant_sessions_token"

    def sessions_token_for(token_attr: str = token_attr, **fields: Any) -> Build:
        return lambda e: platform_pb2.ListSessionsRequest(page_token=getattr(e, token_attr), **fields)

    bad("page-token-for-another-merchant-filter", LIST_S, sessions_token_for(merchant_id=SHOP), "page_token")
    bad(
        "page-token-for-another-state-filter",
        LIST_S,
        sessions_token_for(state=common_pb2.SESSION_STATE_OPEN),
        "page_token",
    )

    bad("missing-session-id", LIST_M, list_messages(sid=""), "session_id")
    bad("malformed-session-id", LIST_M, list_messages(sid="0"), "session_id")
    bad("negative-after-seq", LIST_M, list_messages(after_seq=-1), "after_seq")
    bad("page-size-minus-1", LIST_M, list_messages(page_size=-1), "page_size")
    bad("page-size-10000", LIST_M, list_messages(page_size=10_000), "page_size")
    bad(
        "page-token-for-another-after-seq",
        LIST_M,
        lambda e: platform_pb2.ListMessagesRequest(session_id=e.sid, after_seq=1, page_token=e.messages_token),
        "page_token",
    )
    bad(
        "page-token-for-another-session",
        LIST_M,
        lambda e: platform_pb2.ListMessagesRequest(session_id=e.other_sid, page_token=e.messages_token),
        "page_token",
    )
    bad(
        "forged-page-token-with-huge-seq",
        LIST_M,
        lambda e: platform_pb2.ListMessagesRequest(
            session_id=e.sid, page_token=paging.encode([10**30], ["messages", e.sid, 0])
        ),
        "page_token",
    )

# Several bad fields at once: every one is named in the same error.
bad(
    "many-bad-fields",
    OPEN,
    opening(
        text(""),
        image(),
        card(
            items=[item(quantity=0)],
            paid_amount=common_pb2.Money(amount_minor=-5, currency="rmb"),
            detail_url="javascript:x",
        ),
        request_id=LONG_ID,
        merchant_id="",
        category=common_pb2.Category.ValueType(99),
        order_id="bad id",
    ),
    "request_id",
    "merchant_id",
    "category",
    "order_id",
    "messages[0].text.body",
    "messages[1].image",
    "messages[2].order_card.items[0].quantity",
    "messages[2].order_card.paid_amount.amount_minor",
    "messages[2].order_card.paid_amount.currency",
    "messages[2].order_card.detail_url",
)
bad(
    "many-bad-fields",
    SEND,
    send(text("\x07" + TOO_LONG_TEXT), sid="nope", client_msg_id=LONG_ID),
    "session_id",
    "client_msg_id",
    "content.text.body",
)
bad(
    "many-bad-fields",
    REPLY,
    reply(image(url="http://x", width=0, height=10_001), sid="", client_msg_id="a b"),
    "session_id",
    "client_msg_id",
    "content.image.url",
    "content.image.width",
    "content.image.height",
)
bad(
    "many-bad-fields",
    "Merchant.ListMessages",
    list_messages(sid="x", after_seq=-3, page_size=-1),
    "session_id",
    "after_seq",
    "page_size",
)
bad(
    "many-bad-fields",
    "Platform.ListSessions",
    list_sessions(
        merchant_id="a b",
        state=common_pb2.SessionState.ValueType(7),
        page_size=5000,
        open_time_start=timestamp_pb2.Timestamp(seconds=2),
        open_time_end=timestamp_pb2.Timestamp(seconds=1),
    ),
    "merchant_id",
    "state",
    "page_size",
    "open_time_end",
)
bad(
    "many-bad-fields-and-garbage-page-token",
    "Merchant.ListSessions",
    list_sessions(merchant_id="a b", page_size=-1, page_token="garbage"),
    "merchant_id",
    "page_size",
    "page_token",
)
bad(
    "many-bad-fields-and-garbage-page-token",
    "Platform.ListMessages",
    list_messages(after_seq=-1, page_token="garbage"),
    "after_seq",
    "page_token",
)


# --- calling ----------------------------------------------------------------------------------------


async def call(env: Env, rpc: str, request: pb_message.Message) -> pb_message.Message:
    service, method = rpc.split(".")
    stub: Any = env.platform if service == "Platform" else env.merchant
    who = PLATFORM if service == "Platform" else AGENT
    return cast("pb_message.Message", await getattr(stub, method)(request, metadata=who))


def violation_fields(err: grpc.aio.AioRpcError) -> list[str]:
    """Every BadRequest field path, in order and with repeats (failure() folds them into a dict)."""
    pairs = cast("tuple[tuple[str, str | bytes], ...]", tuple(err.trailing_metadata() or ()))
    raw = next(value for key, value in pairs if key == "grpc-status-details-bin")
    assert isinstance(raw, bytes)
    fields: list[str] = []
    for detail in status_pb2.Status.FromString(raw).details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            fields += [v.field for v in bad_request.field_violations]
    return fields


async def refused(env: Env, case: Case) -> list[str]:
    """Calls the case's RPC and checks it is refused as INVALID_FIELDS; returns the named fields."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(env, case.rpc, case.build(env))
    err = caught.value
    assert err.code() not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), (
        f"a client mistake answered {err.code()}: {err.details()}"
    )
    got = failure(err)
    assert (got.code, got.reason, got.domain) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELDS", "escalation"), got
    assert all(got.field_violations.values()), f"every violation needs a description: {got.field_violations}"
    return violation_fields(err)


# --- the tests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
async def test_bad_input_is_invalid_fields_naming_exactly_the_bad_fields(env: Env, case: Case) -> None:
    before = await snapshot(env.pool)
    fields = await refused(env, case)
    assert set(fields) == case.fields, "every bad field is named, and nothing else"
    assert await snapshot(env.pool) == before, "a refused request changed the database"


async def test_missing_content_is_named_once(env: Env) -> None:
    fields = await refused(env, Case("Platform.SendMessage", send(None), frozenset({"content"})))
    assert fields == ["content"]


def good_text_cases() -> list[Any]:
    return [
        pytest.param(MAX_TEXT, MAX_TEXT, id="2000-chars"),
        pytest.param(f"  \n{MAX_TEXT}\t \n", MAX_TEXT, id="2000-chars-surrounded-by-whitespace"),
        pytest.param("line one\nline\ttwo", "line one\nline\ttwo", id="newline-and-tab-inside"),
        pytest.param("  x  ", "x", id="one-char-after-trimming"),
        pytest.param("发货了吗？👍", "发货了吗？👍", id="non-ascii"),
    ]


@pytest.mark.parametrize(("body", "stored"), good_text_cases())
@pytest.mark.parametrize("rpc", ["Platform.SendMessage", "Merchant.Reply"])
async def test_text_just_inside_the_limits_passes_trimmed(env: Env, rpc: str, body: str, stored: str) -> None:
    build = send(text(body)) if rpc == "Platform.SendMessage" else reply(text(body))
    sent = await call(env, rpc, build(env))
    assert isinstance(sent, common_pb2.Message)
    assert sent.content.text.body == stored
    listed = await env.platform.ListMessages(
        platform_pb2.ListMessagesRequest(session_id=env.sid, after_seq=sent.seq - 1, page_size=1), metadata=PLATFORM
    )
    assert listed.messages[0].content.text.body == stored


GOOD: list[Any] = [
    pytest.param("Platform.ListSessions", list_sessions(page_size=0), id="list-sessions-page-size-0-is-default"),
    pytest.param("Merchant.ListSessions", list_sessions(page_size=0), id="merchant-list-sessions-page-size-0"),
    pytest.param("Platform.ListSessions", list_sessions(page_size=1000), id="list-sessions-page-size-1000"),
    pytest.param(
        "Platform.ListMessages", list_messages(page_size=0, after_seq=0), id="list-messages-page-size-0-after-seq-0"
    ),
    pytest.param("Merchant.ListMessages", list_messages(page_size=1000), id="merchant-list-messages-page-size-1000"),
    pytest.param(
        "Platform.ListMessages",
        lambda e: platform_pb2.ListMessagesRequest(session_id=e.sid, page_size=5, page_token=e.messages_token),
        id="page-token-with-another-page-size",
    ),
    pytest.param(
        "Platform.SendMessage",
        send(card(items=[item(product_id=f"p-{i}", quantity=10_000) for i in range(50)])),
        id="order-card-50-items-quantity-10000",
    ),
    pytest.param(
        "Platform.SendMessage",
        send(card(paid_amount=common_pb2.Money(amount_minor=0, currency="USD"), clear=("pay_time", "logistics"))),
        id="order-card-unpaid-zero-amount",
    ),
    pytest.param("Merchant.Reply", reply(image(width=1, height=10_000)), id="image-sides-1-and-10000"),
    pytest.param("Merchant.Reply", reply(emoji("e" * 32)), id="32-char-emoji"),
    pytest.param("Merchant.Reply", reply(text("ok"), client_msg_id="c" * 64), id="64-char-client-msg-id"),
    pytest.param(
        "Platform.OpenSession",
        opening(*[text(f"m{i}") for i in range(10)], request_id="r" * 64),
        id="10-opening-messages-64-char-request-id",
    ),
]


@pytest.mark.parametrize(("rpc", "build"), GOOD)
async def test_values_just_inside_the_limits_pass(env: Env, rpc: str, build: Build) -> None:
    await call(env, rpc, build(env))


async def test_no_bad_request_yields_unknown_or_internal_or_changes_the_database(pool: asyncpg.Pool) -> None:
    """Every case of the table again, against a fresh database from the ``pool`` fixture.

    Every call is INVALID_ARGUMENT — so none is UNKNOWN or INTERNAL — and afterwards the database
    is exactly as before.
    """
    async with running_server(pool) as channel:
        env = await _environment(pool, channel)
        before = await snapshot(pool)
        counts = (before[0], before[1])
        assert counts == (2, 3)
        codes: dict[str, grpc.StatusCode] = {}
        for param in CASES:
            case = cast("Case", param.values[0])
            try:
                await call(env, case.rpc, case.build(env))
                codes[param.id] = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as err:
                codes[param.id] = err.code()
        wrong = {k: v for k, v in codes.items() if v is not grpc.StatusCode.INVALID_ARGUMENT}
        assert wrong == {}
        assert await snapshot(pool) == before
        assert (
            await pool.fetchval("SELECT count(*) FROM sessions"),
            await pool.fetchval("SELECT count(*) FROM messages"),
        ) == counts


# --- random text ---------------------------------------------------------------------------------

CONTROL = st.sampled_from(["\x00", "\x07", "\x1b", "\x7f", "\r", "\x85", "\x1f", "\n", "\t"])
SPACE = st.text(alphabet=st.sampled_from([" ", "\n", "\t", "\u3000", "\xa0", "\u2028"]), max_size=4)
BODIES = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=40),
    st.tuples(SPACE, st.text(max_size=30), CONTROL, st.text(max_size=10), SPACE).map("".join),
    st.tuples(SPACE, st.integers(1995, 2005), SPACE).map(lambda t: t[0] + "字" * t[1] + t[2]),
)


def trim(body: str) -> str:
    """Trims whitespace; a control character is never whitespace here (it must be refused instead)."""
    start, end = 0, len(body)
    while start < end and is_trimmable(body[start]):
        start += 1
    while end > start and is_trimmable(body[end - 1]):
        end -= 1
    return body[start:end]


def is_trimmable(ch: str) -> bool:
    control = ord(ch) < 32 or 127 <= ord(ch) < 160
    return ch in " \t\n\r\x0b\x0c" or (ch.isspace() and not control)


def spec_allows(body: str) -> bool:
    """R4 "Text", as the one pure function states it: the RPC must agree with it on every body."""
    check = Violations()
    check.text("body", body, max_chars=2000)
    return not check and trim(body) == check.text("body", body, max_chars=2000)


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=BODIES)
async def test_random_text_is_stored_trimmed_or_refused_on_the_body(env: Env, body: str) -> None:
    request = platform_pb2.SendMessageRequest(session_id=env.other_sid, content=text(body))
    outcome: common_pb2.Message | grpc.aio.AioRpcError
    try:
        outcome = await env.platform.SendMessage(request, metadata=PLATFORM)
    except grpc.aio.AioRpcError as err:
        outcome = err
    if isinstance(outcome, grpc.aio.AioRpcError):
        got = failure(outcome)
        assert (got.code, got.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELDS"), got
        assert set(violation_fields(outcome)) == {"content.text.body"}
        assert not spec_allows(body), f"refused a valid body: {got.field_violations}"
        event("refused")
    else:
        assert outcome.content.text.body == trim(body)
        assert spec_allows(body), "stored a body the spec forbids"
        event("stored")
