"""Messages and order cards as the workbench draws them (Rich renderables, no Textual).

Everything that came from another person (message text, names, order fields, URLs) is escaped for the
terminal by escalation.domain.display and put in ``rich.text.Text`` as plain text, never as markup: a
message reading ``[red]refund[/]`` shows those characters, and a newline, an ANSI escape or a bidi
override cannot forge a line or repaint the screen.
"""

from __future__ import annotations

from datetime import UTC, tzinfo

from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.text import Text

from escalation.domain.display import one_line
from escalation.domain.money import format_minor
from escalation.v1 import common_pb2


def local_time(ts: Timestamp, tz: tzinfo | None, fmt: str = "%H:%M:%S") -> str:
    """A protobuf timestamp in ``tz`` (None: this machine's zone)."""
    return ts.ToDatetime(tzinfo=UTC).astimezone(tz).strftime(fmt)


def lines(text: str) -> str:
    """Message text keeps its line breaks (R4 allows them); every other control is escaped per line."""
    return "\n".join(one_line(part) for part in text.split("\n"))


def card_rows(card: common_pb2.OrderCard, tz: tzinfo | None) -> list[tuple[str, str]]:
    """The order card as (label, value) rows, values escaped (SPEC R4: items, the paid amount in the
    currency's minor units, logistics, the detail link). Pure; unit-tested."""
    rows = [("Status", one_line(card.status)), ("Created", local_time(card.create_time, tz, "%Y-%m-%d %H:%M"))]
    for item in card.items:
        spec = f" ({one_line(item.spec)})" if item.spec else ""
        rows.append(("Item", f"{item.quantity} × {one_line(item.name)}{spec} [{one_line(item.product_id)}]"))
    paid = format_minor(card.paid_amount.amount_minor, card.paid_amount.currency)
    if card.HasField("pay_time"):
        paid += f" on {local_time(card.pay_time, tz, '%Y-%m-%d %H:%M')}"
    else:
        paid += " (not paid yet)"
    rows.append(("Paid", paid))
    if card.HasField("logistics"):
        rows.append(("Shipping", f"{one_line(card.logistics.courier)} {one_line(card.logistics.tracking_number)}"))
    rows.append(("Details", one_line(card.detail_url)))
    return rows


def order_card(card: common_pb2.OrderCard, tz: tzinfo | None) -> Panel:
    """The order card as a bordered card titled with its order id."""
    rows = card_rows(card, tz)
    width = max(len(label) for label, _ in rows)
    body = Text()
    for n, (label, value) in enumerate(rows):
        if n:
            body.append("\n")
        body.append(f"{label:<{width}}  ", style="bold")
        body.append(value, style="underline" if label == "Details" else "")
    return Panel(body, title=Text(f"Order {one_line(card.order_id)}"), title_align="left", expand=False)


def content(message: common_pb2.Message, tz: tzinfo | None) -> RenderableType:
    """The body of one message: text, an order card, an image link or an emoji code."""
    kind = message.content.WhichOneof("kind")
    c = message.content
    if kind == "text":
        return Text(lines(c.text.body))
    if kind == "order_card":
        return order_card(c.order_card, tz)
    if kind == "image":
        return Text(f"[image {c.image.width}×{c.image.height}] {one_line(c.image.url)}", style="italic")
    if kind == "emoji":
        return Text(one_line(c.emoji.code))
    return Text("(a kind of message this workbench does not know)", style="dim")


def message(
    message: common_pb2.Message,
    tz: tzinfo | None,
    *,
    me: str,
    template_titles: dict[str, str] | None = None,
) -> Group:
    """One message under a header: time, who sent it (``you`` for this agent) and the quick reply used
    (its title when known)."""
    platform = message.sender == common_pb2.SENDER_PLATFORM
    who = "platform " if platform else ""
    who += "you" if message.sender_id == me and not platform else one_line(message.sender_id)
    header = Text(f"{local_time(message.send_time, tz)}  ", style="dim")
    header.append(who, style="bold cyan" if platform else "bold green")
    if message.template_id:
        title = (template_titles or {}).get(message.template_id, message.template_id)
        header.append(f"  quick reply “{one_line(title)}”", style="dim")
    return Group(header, content(message, tz))
