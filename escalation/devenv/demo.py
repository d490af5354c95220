"""`make demo`'s scripted platform agent: opens sessions for the demo shop at a gentle pace.

A platform support agent asking the demo shop questions about orders, one every ``--interval`` seconds
(about half a minute, jittered), through the SDK's ``PlatformClient`` like any platform tool. What
happens next is up to the person at the workbench: a session answered there is thanked and closed
``RESOLVED`` (no ticket); one left unanswered times out into a ticket when the reply timeout passes
(`make demo` sets ESCALATION_DEV_OVERRIDE_REPLY_TIMEOUT_SECONDS short so that takes a minute, not three).

Run by `escalation dev --demo` as a supervised child; by hand:
``DEMO_PLATFORM_TOKEN=… python -m escalation.devenv.demo --target localhost:50051``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

from escalation.client import RESOLVED, ClientError, PlatformClient
from escalation.devenv import seed
from escalation.v1 import common_pb2

JWT_VARIABLE = "DEMO_PLATFORM_TOKEN"  # the name of the variable that holds the platform agent's JWT
PLATFORM_AGENT = "platform-demo"
DEFAULT_INTERVAL_SECONDS = 30.0


@dataclass(frozen=True)
class Scenario:
    category: common_pb2.Category.ValueType
    question: str
    items: tuple[tuple[str, str, str, int], ...]  # product id, name, spec, quantity
    amount_minor: int
    currency: str
    status: str
    shipped: bool


SCENARIOS = (
    Scenario(
        common_pb2.CATEGORY_ORDER_OPERATION,
        "The buyer needs this today for a birthday. Can you ship it today?",
        (("p-linen-shirt", "Linen shirt", "white, L", 2), ("p-wool-socks", "Wool socks", "grey", 1)),
        25800,
        "CNY",
        "PAID",
        False,
    ),
    Scenario(
        common_pb2.CATEGORY_REFUND,
        "The buyer says the mug arrived broken and sent a photo. Do you approve a full refund?",
        (("p-mug", "Ceramic mug", "blue", 1),),
        4900,
        "CNY",
        "DELIVERED",
        True,
    ),
    Scenario(
        common_pb2.CATEGORY_LOGISTICS,
        "Tracking has not moved for three days. Can you check with the courier?",
        (("p-kettle", "Electric kettle", "1.7 L", 1),),
        19900,
        "CNY",
        "SHIPPED",
        True,
    ),
    Scenario(
        common_pb2.CATEGORY_EXCHANGE,
        "The buyer wants the size M instead of L. Can you exchange it?",
        (("p-linen-shirt", "Linen shirt", "white, L", 1),),
        12900,
        "CNY",
        "DELIVERED",
        True,
    ),
    Scenario(
        common_pb2.CATEGORY_PRODUCT,
        "Is this tea set dishwasher safe? The buyer asks before confirming.",
        (("p-tea-set", "Tea set", "6 cups", 1),),
        880000,
        "JPY",
        "PAID",
        False,
    ),
)


def order_card(n: int, scenario: Scenario, now: datetime) -> common_pb2.OrderCard:
    """The order the question is about: a snapshot without personal data (SPEC R4)."""

    def at(delta: timedelta) -> Timestamp:
        t = Timestamp()
        t.FromDatetime(now - delta)
        return t

    order_id = f"demo-order-{n}"
    card = common_pb2.OrderCard(
        order_id=order_id,
        status=scenario.status,
        create_time=at(timedelta(days=2, hours=3)),
        pay_time=at(timedelta(days=2, hours=2, minutes=50)),
        paid_amount=common_pb2.Money(amount_minor=scenario.amount_minor, currency=scenario.currency),
        items=[
            common_pb2.OrderItem(product_id=pid, name=name, spec=spec, quantity=qty)
            for pid, name, spec, qty in scenario.items
        ],
        detail_url=f"https://shop.example/orders/{order_id}",
    )
    if scenario.shipped:
        card.logistics.CopyFrom(common_pb2.Logistics(courier="SF Express", tracking_number=f"SF10{n:08d}"))
    return card


async def open_one(platform: PlatformClient, n: int, *, merchant_id: str = seed.DEMO_MERCHANT) -> common_pb2.Session:
    """Opens the ``n``-th scripted session (1-based; the scenarios repeat) and returns it."""
    scenario = SCENARIOS[(n - 1) % len(SCENARIOS)]
    opened = await platform.open_session(
        merchant_id=merchant_id,
        category=scenario.category,
        order_id=f"demo-order-{n}",
        text=scenario.question,
        order_card=order_card(n, scenario, datetime.now(UTC)),
    )
    return opened.session


async def run(
    platform: PlatformClient,
    *,
    count: int | None = None,
    interval: float = DEFAULT_INTERVAL_SECONDS,
    say: Callable[[str], None] = print,
    rng: random.Random | None = None,
) -> list[str]:
    """Opens ``count`` sessions (None: until cancelled), ``interval`` seconds apart ±30 %, and follows
    each (``follow``); returns the ids opened."""
    rng = rng or random.Random()  # noqa: S311  (pacing a demo, not a secret)
    opened: list[str] = []
    followers: set[asyncio.Task[None]] = set()
    try:
        n = 0
        while count is None or n < count:
            n += 1
            session = await open_one(platform, n)
            opened.append(session.session_id)
            say(
                f"demo platform agent: opened session {session.session_id[:8]} about demo-order-{n} "
                f"({SCENARIOS[(n - 1) % len(SCENARIOS)].question[:40]}…), assigned to {session.assigned_agent_id}"
            )
            task = asyncio.create_task(follow(platform, session.session_id, say))
            followers.add(task)
            task.add_done_callback(followers.discard)
            task.add_done_callback(functools.partial(report_failure, session.session_id, say))
            if count is None or n < count:
                await asyncio.sleep(interval * rng.uniform(0.7, 1.3))
    finally:
        for task in list(followers):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    return opened


def report_failure(session_id: str, say: Callable[[str], None], task: asyncio.Task[None]) -> None:
    """A follower's done-callback: retrieves its exception (so asyncio never reports "Task exception was
    never retrieved") and says it in one line; a cancelled follower (the demo stopping) says nothing."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        say(f"demo platform agent: stopped following session {session_id[:8]}: {exc}")


async def follow(
    platform: PlatformClient, session_id: str, say: Callable[[str], None], *, close_after: float = 5.0
) -> None:
    """Watches a session it opened: thanks the merchant's first reply and, ``close_after`` seconds
    later (time to read the thanks at the workbench), closes it RESOLVED; reports how it ended.

    Later merchant messages are left alone: the session is being (or has been) closed. A
    FAILED_PRECONDITION SESSION_CLOSED while thanking or closing is normal (the reply timeout or another
    path closed it first); the watch then ends with ``session_ended`` as usual. Raises ClientError for
    any other failure.
    """
    short = session_id[:8]
    answered = False
    async for frame in platform.watch(session_id):
        kind = frame.WhichOneof("event")
        if kind == "message_added" and frame.message_added.sender == common_pb2.SENDER_MERCHANT and not answered:
            answered = True
            say(f"demo platform agent: {frame.message_added.sender_id} answered session {short}")
            try:
                await platform.send(session_id, text="Thank you, I will tell the buyer.")
                await asyncio.sleep(close_after)
                await platform.close(session_id, resolution=RESOLVED)
            except ClientError as exc:
                if exc.reason != "SESSION_CLOSED":
                    raise
        elif kind == "session_ended":
            ended = frame.session_ended.session
            if ended.ticket_id:
                say(f"demo platform agent: session {short} became ticket {ended.ticket_id}")
            else:
                say(f"demo platform agent: closed session {short} as resolved")
            return


def main(argv: list[str] | None = None) -> int:
    """``python -m escalation.devenv.demo --target HOST:PORT`` with the token in $DEMO_PLATFORM_TOKEN."""
    parser = argparse.ArgumentParser(prog="escalation.devenv.demo", description=__doc__)
    parser.add_argument("--target", default="localhost:50051")
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_SECONDS, help="seconds between opens")
    parser.add_argument("--count", type=int, default=None, help="stop after this many sessions")
    args = parser.parse_args(argv)
    token = os.environ.get(JWT_VARIABLE, "")
    if not token:
        print(f"{parser.prog}: set {JWT_VARIABLE} to a platform agent's token", file=sys.stderr)
        return 2

    async def go() -> None:
        async with PlatformClient(args.target, token=token) as platform:
            await run(platform, count=args.count, interval=args.interval, say=lambda line: print(line, flush=True))

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(go())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
