"""`escalation platform` end to end against a real `escalation serve` (issue 15 §3): open with an order
card, watch the merchant's reply arrive live, close; as a person reads it and as JSON for scripts."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest

from escalation.client import MerchantClient
from escalation.devenv.ports import free_port
from tests.e2e import harness, replicas
from tests.integration.grpc_harness import token
from tests.integration.sessions_harness import make_shop

pytestmark = pytest.mark.e2e

SHOP = "shop-a"
PLATFORM = (*harness.ESCALATION, "platform")
CARD = {
    "order_id": "order-7",
    "status": "SHIPPED",
    "create_time": "2026-11-30T08:00:00Z",
    "pay_time": "2026-11-30T08:01:00Z",
    "paid_amount": {"amount_minor": "25800", "currency": "CNY"},
    "items": [{"product_id": "p-1", "name": "Tea cup", "spec": "blue", "quantity": 2}],
    "logistics": {"courier": "SF Express", "tracking_number": "SF1234567890"},
    "detail_url": "https://shop.example.com/orders/order-7",
}


async def _wait_for_line(process: harness.Process, text: str, within: float = 20.0) -> None:
    async with asyncio.timeout(within):
        while text not in process.stdout():
            assert process.alive, process.output()
            await asyncio.sleep(0.05)


async def test_console_opens_with_an_order_card_sees_the_reply_live_and_closes(
    database_url: str, tmp_path: Path
) -> None:
    with replicas.serving(database_url, tmp_path, count=1) as (server,):
        await replicas.wait_serving(server)
        async with grpc.aio.insecure_channel(server.grpc_addr) as channel:
            await make_shop(channel, agents={f"{SHOP}-sub-1": 50})
        env = harness.clean_env(PLATFORM_TOKEN=token("platform", "pa-1"))
        where = ("--target", server.grpc_addr)
        card = tmp_path / "card.json"
        card.write_text(json.dumps(CARD))

        opened = harness.run(
            [*PLATFORM, "open", *where, "--json", "--merchant", SHOP, "--category", "order-operation",
             "--order-id", "order-7", "--text", "Can you ship today?", "--order-card", str(card)],
            env,
        )  # fmt: skip
        assert opened.returncode == 0, opened.stderr
        answer = json.loads(opened.stdout)
        sid, agent = answer["session"]["session_id"], answer["session"]["assigned_agent_id"]
        assert [list(m["content"]) for m in answer["messages"]] == [["text"], ["order_card"]]
        assert answer["messages"][1]["content"]["order_card"]["logistics"]["tracking_number"] == "SF1234567890"

        with harness.started([*PLATFORM, "watch", sid, *where, "--json"], env, tmp_path, "watch") as watch:
            await _wait_for_line(watch, '"seq": "2"')  # the replay: both opening messages
            async with MerchantClient(server.grpc_addr, token("merchant", agent, SHOP)) as merchant:
                stream = asyncio.create_task(anext(merchant.events()))  # read receipts travel on the stream
                await merchant.mark_read(sid, 2)
                await _wait_for_line(watch, '"read_receipt"')
                await merchant.reply(sid, text="Yes, it leaves at 5 pm.")
                stream.cancel()
            await _wait_for_line(watch, "Yes, it leaves at 5 pm.")
            closed = harness.run([*PLATFORM, "close", sid, "--resolved", *where, "--json"], env)
            assert closed.returncode == 0, closed.stderr
            assert json.loads(closed.stdout)["close_reason"] == "CLOSE_REASON_RESOLVED"
            assert watch.proc.wait(20) == 0, watch.output()
        frames = [json.loads(line) for line in watch.stdout().splitlines()]
        assert [m["message_added"]["sender"] for m in frames if "message_added" in m] == [
            "SENDER_PLATFORM",
            "SENDER_PLATFORM",
            "SENDER_MERCHANT",
        ]
        assert frames[-1]["session_ended"]["session"]["close_reason"] == "CLOSE_REASON_RESOLVED"

        # For a person: an order card from flags, the amount in the currency, the list with the end.
        second = harness.run(
            [*PLATFORM, "open", *where, "--merchant", SHOP, "--category", "refund", "--order-id", "order-8",
             "--order-status", "PAID", "--paid", "12900CNY", "--item", "p-2:Mug:3:red",
             "--detail-url", "https://shop.example.com/orders/order-8"],
            env,
        )  # fmt: skip
        assert second.returncode == 0, second.stderr
        assert "[order order-8 PAID, 129.00 CNY: 3× Mug (red)]" in second.stdout
        assert f"assigned to {agent}" in second.stdout
        listed = harness.run([*PLATFORM, "list", *where, "--state", "ended"], env)
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.splitlines() == [
            f"{sid}  {SHOP} → {agent}  order-operation  order order-7  ENDED RESOLVED  (3 messages)"
        ]


async def test_console_reports_a_refusal_with_reason_and_fields_and_exit_status_1(
    database_url: str, tmp_path: Path
) -> None:
    with replicas.serving(database_url, tmp_path, count=1) as (server,):
        await replicas.wait_serving(server)
        env = harness.clean_env(PLATFORM_TOKEN=token("platform", "pa-1"))
        refused = harness.run(
            [*PLATFORM, "send", "not-a-session", "--target", server.grpc_addr, "--json", "--text", "hi"], env
        )
        assert refused.returncode == 1
        error = json.loads(refused.stderr)["error"]
        assert (error["code"], error["reason"]) == ("INVALID_ARGUMENT", "INVALID_FIELDS")
        assert [v["field"] for v in error["violations"]] == ["session_id"]
        # As a person reads it: the field violation once (the message states it; no second line).
        refused = harness.run([*PLATFORM, "send", "not-a-session", "--target", server.grpc_addr, "--text", "hi"], env)
        assert refused.returncode == 1
        assert refused.stderr.startswith("escalation platform: INVALID_ARGUMENT INVALID_FIELDS: "), refused.stderr
        assert refused.stderr.count("session_id") == 1, refused.stderr
        no_token = harness.run([*PLATFORM, "list", "--target", server.grpc_addr], harness.clean_env())
        assert no_token.returncode == 2
        assert "PLATFORM_TOKEN" in no_token.stderr


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
@pytest.mark.parametrize("command", [["list"], ["send", "3f2a9c1e-0000-4000-8000-000000000000", "--text", "hi"]])
def test_console_without_a_service_names_the_address_and_the_option(host: str, command: list[str]) -> None:
    target = f"{host}:{free_port()}"  # nothing listens there
    env = harness.clean_env(PLATFORM_TOKEN=token("platform", "pa-1"))
    refused = harness.run([*PLATFORM, *command, "--target", target], env)
    assert refused.returncode == 1
    assert refused.stderr == f"escalation platform: cannot reach {target} — is the service running? (--target)\n"
