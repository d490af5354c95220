"""`make demo`: the scripted platform agent opens sessions for the demo shop through the SDK, closes
the ones a merchant answered, and the banner tells how to open the workbench as each demo agent."""

from __future__ import annotations

import asyncio
import functools
import os
import stat
import sys
from pathlib import Path

import grpc
import jwt

from escalation.client import ESCALATED, ClientError, PlatformClient
from escalation.devenv import demo, seed
from escalation.devenv.runner import _demo_note
from escalation.v1 import common_pb2, merchant_pb2, merchant_pb2_grpc
from tests.workbench.harness import PLATFORM_AGENT_TOKEN, Service


async def test_the_demo_agent_opens_sessions_for_the_demo_shop_and_closes_answered_ones(service: Service) -> None:
    lines: list[str] = []
    async with PlatformClient(service.target, token=PLATFORM_AGENT_TOKEN) as platform:
        opened = await demo.run(platform, count=3, interval=0, say=lines.append)
        assert len(opened) == 3
        sessions = [await service.session(session_id) for session_id in opened]
        assert {s.merchant_id for s in sessions} == {seed.DEMO_MERCHANT}
        assert {s.assigned_agent_id for s in sessions} <= set(seed.DEMO_AGENTS)
        for session in sessions:
            assert session.state == common_pb2.SESSION_STATE_OPEN
            assert session.HasField("reply_deadline")  # left alone, it times out into a ticket
            kinds = [m.content.WhichOneof("kind") for m in await service.messages(session.session_id)]
            assert kinds == ["text", "order_card"]
        assert len(lines) == 3
        assert all(session.session_id[:8] in line for session, line in zip(sessions, lines, strict=True))
        # One answered by its agent: the demo agent thanks the merchant and closes it RESOLVED.
        answered = sessions[0]
        follower = asyncio.create_task(demo.follow(platform, answered.session_id, lines.append, close_after=0))
        metadata = (("authorization", f"Bearer {service.agent_token(answered.assigned_agent_id)}"),)
        await merchant_pb2_grpc.MerchantServiceStub(service.channel).Reply(
            merchant_pb2.ReplyRequest(
                session_id=answered.session_id,
                client_msg_id="demo-answer",
                content=common_pb2.MessageContent(text=common_pb2.Text(body="Yes, it ships today.")),
            ),
            metadata=metadata,
        )
        async with asyncio.timeout(20):
            await follower
        closed = await service.session(answered.session_id)
        assert closed.state == common_pb2.SESSION_STATE_ENDED
        assert closed.close_reason == common_pb2.CLOSE_REASON_RESOLVED
        assert not closed.ticket_id


def test_the_demo_banner_gives_each_demo_agent_a_workbench_command_and_a_private_token(tmp_path: Path) -> None:
    secret = "s" * 48
    note = _demo_note(secret, tmp_path, "localhost:50051")
    env_file = tmp_path / "demo.env"
    assert stat.S_IMODE(os.stat(env_file).st_mode) == 0o600
    tokens = dict(
        line.removeprefix("export ").split("=", 1) for line in env_file.read_text().splitlines() if line.strip()
    )
    for n, agent in enumerate(seed.DEMO_AGENTS, start=1):
        name = f"DEMO_AGENT_{n}_TOKEN"
        assert f"workbench --target localhost:50051 --token-env {name}   # as {agent}" in note
        claims = jwt.decode(tokens[name], secret, algorithms=["HS256"])
        assert (claims["sub"], claims["role"], claims["merchant_id"]) == (agent, "merchant", seed.DEMO_MERCHANT)
    assert jwt.decode(tokens["DEMO_MAIN_TOKEN"], secret, algorithms=["HS256"])["sub"] == seed.DEMO_MAIN_ACCOUNT
    assert secret not in note
    assert tokens["DEMO_AGENT_1_TOKEN"] not in note


async def test_the_demo_agent_runs_as_the_process_make_demo_starts(service: Service) -> None:
    """`escalation dev --demo` runs `python -m escalation.devenv.demo` with the token in its environment."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "escalation.devenv.demo",
        "--target",
        service.target,
        "--count",
        "2",
        "--interval",
        "0",
        env={**os.environ, demo.JWT_VARIABLE: PLATFORM_AGENT_TOKEN},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    opened = [line for line in out.decode().splitlines() if "opened session" in line]
    assert len(opened) == 2
    assert "demo-order-1" in opened[0]
    assert "demo-order-2" in opened[1]
    sessions = await service.list_open_sessions()
    assert len(sessions) == 2


async def test_the_demo_agent_without_a_token_says_which_variable(service: Service) -> None:
    env = {k: v for k, v in os.environ.items() if k != demo.JWT_VARIABLE}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "escalation.devenv.demo",
        "--target",
        service.target,
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await process.communicate()
    assert process.returncode == 2
    assert demo.JWT_VARIABLE in err.decode()


async def _merchant_replies(service: Service, session: common_pb2.Session, *bodies: str) -> None:
    metadata = (("authorization", f"Bearer {service.agent_token(session.assigned_agent_id)}"),)
    stub = merchant_pb2_grpc.MerchantServiceStub(service.channel)
    for n, body in enumerate(bodies):
        await stub.Reply(
            merchant_pb2.ReplyRequest(
                session_id=session.session_id,
                client_msg_id=f"demo-answer-{n}",
                content=common_pb2.MessageContent(text=common_pb2.Text(body=body)),
            ),
            metadata=metadata,
        )


async def test_the_demo_agent_thanks_only_the_first_merchant_reply(service: Service) -> None:
    """A second merchant message must not make it write into the session it has just closed."""
    async with PlatformClient(service.target, token=PLATFORM_AGENT_TOKEN) as platform:
        (opened,) = await demo.run(platform, count=1, interval=0, say=lambda _: None)
        session = await service.session(opened)
        await _merchant_replies(service, session, "Yes, it ships today.", "Tracking number follows.", "Done.")
        lines: list[str] = []
        async with asyncio.timeout(20):
            await demo.follow(platform, opened, lines.append, close_after=0)  # replays all three replies
        closed = await service.session(opened)
        assert closed.close_reason == common_pb2.CLOSE_REASON_RESOLVED
        thanks = [m for m in await service.messages(opened) if m.sender == common_pb2.SENDER_PLATFORM]
        # After the question and the order card: one thanks, however many merchant messages.
        assert [m.content.text.body for m in thanks][2:] == ["Thank you, I will tell the buyer."]
        assert sum("answered session" in line for line in lines) == 1


async def test_the_demo_agent_takes_a_session_closed_elsewhere_in_its_stride(service: Service) -> None:
    """Closed by another path (timeout, a person) before the thanks: SESSION_CLOSED is not an error."""
    async with PlatformClient(service.target, token=PLATFORM_AGENT_TOKEN) as platform:
        (opened,) = await demo.run(platform, count=1, interval=0, say=lambda _: None)
        await _merchant_replies(service, await service.session(opened), "Yes.")
        await platform.close(opened, resolution=ESCALATED)
        lines: list[str] = []
        async with asyncio.timeout(20):
            await demo.follow(platform, opened, lines.append, close_after=0)
        assert lines[-1].startswith(f"demo platform agent: session {opened[:8]} became ticket ")


async def test_a_failed_follower_is_reported_in_one_line_not_left_unretrieved() -> None:
    lines: list[str] = []

    async def fails() -> None:
        raise ClientError(grpc.StatusCode.NOT_FOUND, "no such session", reason="SESSION_NOT_FOUND")

    task = asyncio.create_task(fails())
    task.add_done_callback(functools.partial(demo.report_failure, "0123456789", lines.append))
    await asyncio.wait([task])
    await asyncio.sleep(0)  # done-callbacks run on the next loop turn
    assert lines == [
        "demo platform agent: stopped following session 01234567: NOT_FOUND SESSION_NOT_FOUND: no such session"
    ]
    cancelled = asyncio.create_task(asyncio.sleep(10))
    cancelled.add_done_callback(functools.partial(demo.report_failure, "x", lines.append))
    cancelled.cancel()
    await asyncio.wait([cancelled])
    await asyncio.sleep(0)
    assert len(lines) == 1
