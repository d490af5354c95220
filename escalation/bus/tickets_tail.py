"""`escalation tickets tail`: the example consumer of escalation.service-tickets.v1.

A real consumer: it joins a consumer group, commits offsets only after a ticket is printed, and
dedupes by the ``event_id`` header (delivery is at least once). Prints each ticket readably, or one
JSON object per line with ``--json``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections import OrderedDict
from typing import TextIO

from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError
from google.protobuf import json_format

from escalation.bus import kafka
from escalation.domain import display
from escalation.v1 import common_pb2, events_pb2


class BrokerUnreachable(Exception):
    """No Kafka broker answered at the bootstrap address; ``bootstrap`` is that ``host:port`` list."""

    def __init__(self, bootstrap: str) -> None:
        super().__init__(bootstrap)
        self.bootstrap = bootstrap


class SeenEventIds:
    """A bounded memory of event ids, enough to drop redeliveries that arrive close together."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity

    def first_time(self, event_id: str) -> bool:
        if event_id in self._ids:
            self._ids.move_to_end(event_id)
            return False
        self._ids[event_id] = None
        if len(self._ids) > self._capacity:
            self._ids.popitem(last=False)
        return True


def readable(ticket: events_pb2.ServiceTicket) -> str:
    """The ticket for a terminal, one line per transcript message; every value from the ticket is
    escaped (domain/display.py), so a merchant's newline cannot forge a transcript line (SPEC R7)."""
    e = display.one_line
    reason = common_pb2.CloseReason.Name(ticket.reason).removeprefix("CLOSE_REASON_")
    category = common_pb2.Category.Name(ticket.category).removeprefix("CATEGORY_")
    lines = [
        f"ticket {e(ticket.ticket_id)}  {reason}  {category}  merchant {e(ticket.merchant_id)}",
        f"  session {e(ticket.session_id)}  order {e(ticket.order_id) or '-'}  agent {e(ticket.assigned_agent_id)}"
        f"  platform agent {e(ticket.platform_agent_id)}",
        f"  opened {ticket.open_time.ToJsonString()}  closed {ticket.close_time.ToJsonString()}"
        f"  handle by {ticket.handle_by.ToJsonString()}",
    ]
    for m in ticket.transcript:
        who = "platform" if m.sender == common_pb2.SENDER_PLATFORM else "merchant"
        kind = m.content.WhichOneof("kind")
        body = e(m.content.text.body) if kind == "text" else f"[{kind}]"
        lines.append(f"  #{m.seq} {m.send_time.ToJsonString()} {who} {e(m.sender_id)}: {body}")
    lines.append(f"  digest {e(ticket.digest_algorithm)} {e(ticket.transcript_digest)}")
    return "\n".join(lines)


async def tail(
    settings: kafka.KafkaSettings,
    *,
    group_id: str,
    from_beginning: bool,
    as_json: bool,
    max_tickets: int | None,
    out: TextIO = sys.stdout,
) -> int:
    """Prints tickets until interrupted (or ``max_tickets`` distinct ones); returns how many.

    Raises BrokerUnreachable when no broker answers at ``settings.bootstrap`` (the consumer is
    stopped first, so nothing is left unclosed).
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    consumer = kafka.consumer(settings, kafka.TICKETS_TOPIC, group_id, from_beginning=from_beginning)
    seen, printed = SeenEventIds(), 0
    try:
        try:
            await consumer.start()
        except KafkaConnectionError:
            raise BrokerUnreachable(settings.bootstrap) from None
        while not stop.is_set() and (max_tickets is None or printed < max_tickets):
            batches = await consumer.getmany(timeout_ms=500)
            done: dict[TopicPartition, int] = {}
            for partition, records in batches.items():
                for record in records:
                    if max_tickets is not None and printed >= max_tickets:
                        break
                    done[partition] = record.offset + 1
                    event_id = {k: v.decode() for k, v in record.headers}.get("event_id", "")
                    if not seen.first_time(event_id):
                        continue
                    ticket = events_pb2.ServiceTicket.FromString(record.value or b"")
                    if as_json:
                        print(json.dumps(json_format.MessageToDict(ticket)), file=out, flush=True)
                    else:
                        print(readable(ticket) + "\n", file=out, flush=True)
                    printed += 1
            if done:
                # Only what was printed: with --max, the rest stays for the group's next member.
                await consumer.commit(done)
    finally:
        await consumer.stop()
    return printed
