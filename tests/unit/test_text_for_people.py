"""SPEC R7/§3 downstream safety: text from users reaches people's terminals as one escaped line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from google.protobuf import timestamp_pb2

from escalation.bus.tickets_tail import readable
from escalation.domain.display import one_line
from escalation.v1 import common_pb2, events_pb2

HOSTILE = [
    "yes\n  #9 2026-01-01T00:00:00Z platform pa-1: refund approved",
    "yes\r\n  #9 forged",
    "yes\rforged",
    "a\u2028b",
    "a\u2029b",
    "a\x85b",  # NEL
    "a\x0bb\x0cc",  # vertical tab, form feed
    "\x1b[2J\x1b[1;1Hcleared",  # ANSI: clear screen, move cursor
    "\u202eevil\u202c",  # right-to-left override
    "\u2066isolate\u2069",
    "\u200fmark",
    "nul\x00byte",
    "del\x7f",
    "zero\u200bwidth",
    "bom\ufeff",
]
SAFE = ["ship today?", "发货了吗？", "👍🏽 👨\u200d👩\u200d👧", "می\u200cخواهم", "tab-free, quotes \"' and 100%"]
_BREAKS_AND_MOVERS = {"\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\x1b"}


def _no_raw_movers(text: str) -> bool:
    bidi = {chr(c) for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C]}
    return not any(ch in _BREAKS_AND_MOVERS | bidi or (ord(ch) < 0x20 and ch != " ") for ch in text)


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_text_becomes_one_escaped_line(text: str) -> None:
    shown = one_line(text)
    assert _no_raw_movers(shown)
    assert len(shown.splitlines()) == 1


@pytest.mark.parametrize("text", SAFE)
def test_ordinary_text_in_any_script_is_unchanged(text: str) -> None:
    assert one_line(text) == text


def test_escapes_cannot_be_confused_with_text_that_looks_like_one() -> None:
    assert one_line("a\nb") != one_line("a\\nb")
    assert one_line("a\\nb") == "a\\\\nb"


def _ticket(body: str, sender_id: str = "shop-a-sub-1") -> events_pb2.ServiceTicket:
    ts = timestamp_pb2.Timestamp(seconds=1_700_000_000)
    return events_pb2.ServiceTicket(
        ticket_id="t-1",
        session_id="s-1",
        merchant_id="shop-a",
        transcript=[
            common_pb2.Message(
                seq=1,
                sender=common_pb2.SENDER_PLATFORM,
                sender_id="pa-1",
                content=common_pb2.MessageContent(text=common_pb2.Text(body="Can you ship today?")),
                send_time=ts,
            ),
            common_pb2.Message(
                seq=2,
                sender=common_pb2.SENDER_MERCHANT,
                sender_id=sender_id,
                content=common_pb2.MessageContent(text=common_pb2.Text(body=body)),
                send_time=ts,
            ),
        ],
    )


@pytest.mark.parametrize("body", HOSTILE)
def test_tickets_tail_prints_one_line_per_message_whatever_the_text(body: str) -> None:
    lines = readable(_ticket(body)).split("\n")
    transcript = [line for line in lines if line.startswith("  #")]
    assert len(transcript) == 2
    assert all(_no_raw_movers(line) for line in lines)
    assert len(lines) == 6  # 3 header lines, the 2 messages, the digest


def test_tickets_tail_escapes_ids_from_the_topic_too() -> None:
    # The topic is another system's input: its ids are not trusted to be identifiers.
    lines = readable(_ticket("ok", sender_id="pa-1\n  #3 forged")).split("\n")
    assert sum(line.startswith("  #") for line in lines) == 2


_LOG = """
import structlog
from escalation.observability import logging
logging.configure(log_format="{fmt}", level="info")
structlog.get_logger("t").info("reply {{}}".format({body!r}), body={body!r}, n=3)
"""


@pytest.mark.parametrize("fmt", ["console", "json"])
@pytest.mark.parametrize("body", HOSTILE[:10])
def test_log_lines_escape_logged_text(fmt: str, body: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _LOG.format(fmt=fmt, body=body)], capture_output=True, text=True, check=True
    )
    out = done.stderr.rstrip("\n")
    assert "\n" not in out, out
    assert _no_raw_movers(out), out
    if fmt == "json":
        assert json.loads(out)["body"] == body  # escaped on the wire, the same text when read back
