"""`escalation platform`: a platform support agent's console on the public API (escalation.client).

Subcommands: ``open`` (text plus an order card from a JSON file or flags), ``send``, ``watch`` (live
until the session ends), ``close --resolved|--escalated``, ``list``, ``show``. Output is for a person,
or one JSON object per line with ``--json``. Exit status: 0 done, 1 the service refused (the error's
code, reason and field violations on stderr), 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from escalation.client import ESCALATED, RESOLVED, ClientError, PlatformClient, TlsOptions
from escalation.consoles import render
from escalation.consoles.refusal import refusal_lines
from escalation.v1 import common_pb2

DEFAULT_TARGET = "localhost:50051"
DEFAULT_ENV_VAR = "PLATFORM_TOKEN"  # what `make run` prints an export line for
EXIT_REFUSED, EXIT_USAGE = 1, 2
CATEGORIES = {
    name.removeprefix("CATEGORY_").lower().replace("_", "-"): value
    for name, value in common_pb2.Category.items()
    if value != common_pb2.CATEGORY_UNSPECIFIED
}


class UsageError(Exception):
    """The command line does not make a valid request; the message says which option."""


def _common() -> argparse.ArgumentParser:
    """The options every subcommand takes (after its name: `escalation platform list --json`)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--target", default=DEFAULT_TARGET, help=f"the service, HOST:PORT (default {DEFAULT_TARGET})")
    parser.add_argument(
        "--token", help=f"the agent's bearer token (role platform); default: ${DEFAULT_ENV_VAR}, see --token-env"
    )
    parser.add_argument(
        "--token-env",
        metavar="NAME",
        default=DEFAULT_ENV_VAR,
        help=f"read the token from environment variable NAME (default {DEFAULT_ENV_VAR}; keeps it out of `ps`)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line (proto field names)")
    parser.add_argument("--tls", action="store_true", help="connect with TLS (the system's trust store)")
    parser.add_argument("--ca-file", type=Path, help="with --tls: PEM CA bundle to trust instead")
    parser.add_argument("--cert-file", type=Path, help="with --tls: PEM client certificate (mTLS)")
    parser.add_argument("--key-file", type=Path, help="with --tls: PEM private key of --cert-file")
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The subcommands of `escalation platform`, each with the common options."""
    common = [_common()]
    sub = parser.add_subparsers(dest="platform_command", required=True, metavar="COMMAND")

    opening = sub.add_parser(
        "open", parents=common, help="open a session with a merchant (prints it with its messages)"
    )
    opening.add_argument("--merchant", required=True, help="the merchant id")
    opening.add_argument("--category", required=True, choices=sorted(CATEGORIES))
    opening.add_argument("--text", help="the opening question")
    opening.add_argument("--order-id", default="", help="the order the session is about (also the card's)")
    opening.add_argument("--request-id", help="idempotency key (default: a new one; retries reuse it)")
    _order_card_arguments(opening)

    send = sub.add_parser("send", parents=common, help="send a text or an order card into a session")
    send.add_argument("session_id")
    send.add_argument("--text")
    send.add_argument("--order-id", default="")
    _order_card_arguments(send)

    watch = sub.add_parser(
        "watch", parents=common, help="print the session's messages live until it ends (Ctrl-C stops)"
    )
    watch.add_argument("session_id")
    watch.add_argument("--after-seq", type=int, default=0, help="only messages after this seq (default: all)")

    close = sub.add_parser(
        "close", parents=common, help="end a session: --resolved (no ticket) or --escalated (a ticket)"
    )
    close.add_argument("session_id")
    outcome = close.add_mutually_exclusive_group(required=True)
    outcome.add_argument("--resolved", action="store_const", const=RESOLVED, dest="resolution")
    outcome.add_argument("--escalated", action="store_const", const=ESCALATED, dest="resolution")

    listing = sub.add_parser("list", parents=common, help="list your sessions, newest first")
    listing.add_argument("--state", choices=["open", "ended"], help="only open or only ended sessions")
    listing.add_argument("--merchant", default="", help="only this merchant's")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")

    show = sub.add_parser("show", parents=common, help="a session with all its messages")
    show.add_argument("session_id")


def _order_card_arguments(parser: argparse.ArgumentParser) -> None:
    card = parser.add_argument_group("order card (a JSON file, or flags; the card is sent when either is given)")
    card.add_argument("--order-card", type=Path, metavar="FILE", help="an escalation.v1.OrderCard as JSON")
    card.add_argument("--order-status", help="e.g. PAID, SHIPPED")
    card.add_argument("--paid", metavar="AMOUNT", help="paid amount in minor units with currency, e.g. 12900CNY")
    card.add_argument(
        "--item",
        action="append",
        default=[],
        metavar="ID:NAME:QTY[:SPEC]",
        help="an order line (repeat for more)",
    )
    card.add_argument("--created", metavar="ISO-TIME", help="when the order was placed (default now)")
    card.add_argument("--paid-at", metavar="ISO-TIME", help="when it was paid (default: unset)")
    card.add_argument("--courier")
    card.add_argument("--tracking")
    card.add_argument("--detail-url", help="https URL of the order's page")


def order_card(args: argparse.Namespace) -> common_pb2.OrderCard | None:
    """The order card the options describe, or None when none is given. Raises UsageError."""
    if args.order_card is not None:
        try:
            return json_format.Parse(args.order_card.read_text(), common_pb2.OrderCard())
        except (OSError, json_format.ParseError) as exc:
            raise UsageError(f"--order-card {args.order_card}: {exc}") from None
    if not (args.order_status or args.item or args.paid or args.detail_url):
        return None
    card = common_pb2.OrderCard(
        order_id=args.order_id, status=args.order_status or "", detail_url=args.detail_url or ""
    )
    if args.paid:
        amount, currency = args.paid[:-3], args.paid[-3:]
        if not amount.isdigit() or not currency.isalpha():
            raise UsageError(f"--paid {args.paid!r}: minor units then the currency, e.g. 12900CNY")
        card.paid_amount.amount_minor, card.paid_amount.currency = int(amount), currency.upper()
    for line in args.item:
        parts = line.split(":", 3)
        if len(parts) < 3 or not parts[2].isdigit():
            raise UsageError(f"--item {line!r}: ID:NAME:QTY[:SPEC]")
        card.items.add(
            product_id=parts[0], name=parts[1], quantity=int(parts[2]), spec=parts[3] if len(parts) > 3 else ""
        )
    card.create_time.FromDatetime(_time(args.created, "--created") if args.created else datetime.now(UTC))
    if args.paid_at:
        card.pay_time.FromDatetime(_time(args.paid_at, "--paid-at"))
    if args.courier or args.tracking:
        card.logistics.courier, card.logistics.tracking_number = args.courier or "", args.tracking or ""
    return card


def _time(text: str, option: str) -> datetime:
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{option} {text!r}: an ISO 8601 time, e.g. 2026-12-01T08:00:00+08:00") from None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def _token(args: argparse.Namespace) -> str:
    token = args.token if args.token is not None else os.environ.get(args.token_env, "")
    if not token:
        raise UsageError(f"no token: pass --token or set {args.token_env}")
    return str(token)


def _tls(args: argparse.Namespace) -> TlsOptions | None:
    if not args.tls:
        if args.ca_file or args.cert_file or args.key_file:
            raise UsageError("--ca-file, --cert-file and --key-file need --tls")
        return None
    try:
        return TlsOptions.from_files(ca=args.ca_file, cert=args.cert_file, key=args.key_file)
    except (OSError, ValueError) as exc:
        raise UsageError(f"TLS: {exc}") from None


Out = Callable[[str], None]


async def _open(client: PlatformClient, args: argparse.Namespace, out: Out) -> None:
    card = order_card(args)
    if args.text is None and card is None:
        raise UsageError("open needs --text, an order card, or both")
    opened = await client.open_session(
        merchant_id=args.merchant,
        category=CATEGORIES[args.category],
        text=args.text,
        order_card=card,
        order_id=args.order_id,
        request_id=args.request_id,
    )
    if args.json:
        out(render.as_json(opened))
        return
    decision = opened.session.assignment
    connected = "connected" if decision.agent_connected else "not connected"
    out(f"opened {render.session(opened.session)}")
    out(f"  assigned to {decision.agent_id} ({connected}) by {decision.rule_version}")
    for msg in opened.messages:
        out(f"  {render.message(msg)}")


async def _send(client: PlatformClient, args: argparse.Namespace, out: Out) -> None:
    card = order_card(args)
    if (args.text is None) == (card is None):
        raise UsageError("send needs exactly one of --text and an order card")
    sent = await client.send(args.session_id, text=args.text, order_card=card)
    out(render.as_json(sent) if args.json else render.message(sent))


async def _watch(client: PlatformClient, args: argparse.Namespace, out: Out) -> None:
    async for frame in client.watch(args.session_id, after_seq=args.after_seq):
        out(render.as_json(frame) if args.json else render.watched(frame))


async def _close(client: PlatformClient, args: argparse.Namespace, out: Out) -> None:
    session = await client.close(args.session_id, resolution=args.resolution)
    out(render.as_json(session) if args.json else f"closed {render.session(session)}")


async def _list(client: PlatformClient, args: argparse.Namespace, out: Out) -> None:
    state = {"open": common_pb2.SESSION_STATE_OPEN, "ended": common_pb2.SESSION_STATE_ENDED}.get(
        args.state or "", common_pb2.SESSION_STATE_UNSPECIFIED
    )
    shown, token = 0, ""
    while shown < args.limit:
        page = await client.list_sessions(
            merchant_id=args.merchant, state=state, page_size=min(args.limit - shown, 1000), page_token=token
        )
        for session in page.sessions[: args.limit - shown]:
            out(render.as_json(session) if args.json else render.session(session))
            shown += 1
        if not (token := page.next_page_token):
            break
    if shown == 0 and not args.json:
        out("no sessions")


async def _show(client: PlatformClient, args: argparse.Namespace, out: Out) -> None:
    session = await client.get_session(args.session_id)
    out(render.as_json(session) if args.json else render.session(session))
    token = ""
    while True:
        page = await client.list_messages(args.session_id, page_token=token)
        for msg in page.messages:
            out(render.as_json(msg) if args.json else f"  {render.message(msg)}")
        if not (token := page.next_page_token):
            return


COMMANDS: dict[str, Callable[[PlatformClient, argparse.Namespace, Out], Coroutine[Any, Any, None]]] = {
    "open": _open,
    "send": _send,
    "watch": _watch,
    "close": _close,
    "list": _list,
    "show": _show,
}


def _refused(err: ClientError, as_json: bool, target: str) -> None:
    if as_json:
        error = {
            "code": err.code.name,
            "reason": err.reason,
            "message": err.message,
            "violations": [{"field": v.field, "description": v.description} for v in err.violations],
            "metadata": err.metadata,
        }
        print(json.dumps({"error": error}, ensure_ascii=False), file=sys.stderr)
        return
    first, *rest = refusal_lines(err, target)
    print(f"escalation platform: {first}", *rest, sep="\n", file=sys.stderr)


def _print_line(line: str) -> None:
    print(line, flush=True)  # flushed: `watch` feeds pipes and people line by line


def run(args: argparse.Namespace) -> int:
    """Runs one subcommand; returns the exit status (0 done, 1 refused by the service, 2 bad usage)."""

    async def main() -> None:
        async with PlatformClient(args.target, _token(args), tls=_tls(args)) as client:
            await COMMANDS[args.platform_command](client, args, _print_line)

    try:
        asyncio.run(main())
    except UsageError as exc:
        print(f"escalation platform {args.platform_command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ClientError as err:
        _refused(err, args.json, args.target)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130
    return 0
