"""The SQL that applies R5 and R12 with the database clock agrees with the pure state machine."""

from __future__ import annotations

import random
import uuid
from datetime import timedelta

import asyncpg
import pytest

from escalation.auth import Identity, Role
from escalation.domain.session import Kind, Sender, SessionClock, State, after_message
from escalation.services import directory, sessions
from escalation.v1 import common_pb2

pytestmark = pytest.mark.integration

PLATFORM = Identity("pa-1", Role.PLATFORM)
AGENT = Identity("main", Role.MERCHANT, "shop")
POLICY = sessions.SessionPolicy(remind_before=timedelta(seconds=60))


def _text(body: str) -> sessions.NewMessage:
    return sessions.NewMessage(
        Kind.TEXT, common_pb2.MessageContent(text=common_pb2.Text(body=body)).SerializeToString()
    )


async def test_sql_deadlines_match_the_pure_rule_on_random_conversations(pool: asyncpg.Pool) -> None:
    await directory.upsert_merchant(pool, merchant_id="shop", display_name="", main_account_id="main", disabled=False)
    rng = random.Random(7)
    for conversation in range(15):
        # R12: the merchant's idle timeout (5–120 min) as stored, changed between conversations.
        idle_timeout = rng.choice([300, 1800, 7200])
        await pool.execute("UPDATE reception_settings SET idle_timeout_seconds = $1", idle_timeout)
        opened = await sessions.open_session(
            pool,
            PLATFORM,
            sessions.OpenRequest(f"r{conversation}", b"h", "shop", "REFUND", None, [_text("hello")]),
            POLICY,
        )
        sid = opened.session["session_id"]
        sent = [(Sender.PLATFORM, opened.messages[0]["send_time"])]
        for step in range(rng.randint(1, 12)):
            who = rng.choice([PLATFORM, AGENT])
            row = await sessions.add_message(pool, who, sid, _text(f"m{step}"), POLICY)
            sent.append((Sender(row["sender"]), row["send_time"]))
        expected = SessionClock(State.OPEN, 0, None, None)
        for sender, at in sent:
            expected = after_message(
                expected,
                sender,
                at,
                reply_timeout=timedelta(seconds=180),
                remind_before=POLICY.remind_before,
                idle_timeout=timedelta(seconds=idle_timeout),
            )
        row = await pool.fetchrow(
            "SELECT last_seq, reply_deadline, remind_time, idle_deadline FROM sessions WHERE session_id = $1", sid
        )
        assert row is not None
        assert (row["last_seq"], row["reply_deadline"], row["remind_time"], row["idle_deadline"]) == (
            expected.last_seq,
            expected.reply_deadline,
            expected.remind_time,
            expected.idle_deadline,
        ), f"conversation {conversation}: {[s for s, _ in sent]}"
        assert isinstance(sid, uuid.UUID)
