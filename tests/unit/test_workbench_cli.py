"""`escalation workbench`'s command line: who the token names, where the cursor is kept, bad usage."""

from __future__ import annotations

from pathlib import Path

import jwt
import pytest

from escalation import auth, cli
from escalation.workbench.main import claims, default_cursor_file

SECRET = "s" * 48


def mint(role: auth.Role, sub: str, merchant_id: str | None = None) -> str:
    return auth.mint(key=SECRET, algorithm="HS256", subject=sub, role=role, merchant_id=merchant_id, ttl_seconds=60)


def test_the_token_names_the_agent_and_the_shop() -> None:
    assert claims(mint(auth.Role.MERCHANT, "demo-agent-1", "demo-shop")) == ("demo-agent-1", "demo-shop")
    for not_an_agent in (mint(auth.Role.PLATFORM, "pa-1"), "not-a-jwt", ""):
        with pytest.raises(ValueError, match="token"):
            claims(not_an_agent)


def test_the_cursor_file_is_per_service_shop_and_agent_under_the_state_directory() -> None:
    env = {"XDG_STATE_HOME": "/state"}
    path = default_cursor_file("localhost:50051", "demo-shop", "demo-agent-1", env)
    assert path == Path("/state/escalation/workbench/localhost_50051/demo-shop/demo-agent-1.cursor")
    assert default_cursor_file("prod.example:443", "demo-shop", "demo-agent-1", env) != path
    assert default_cursor_file("localhost:50051", "demo-shop", "demo-agent-2", env) != path
    # Nothing from the command line or the token climbs out of the directory.
    for parts in (("../../etc", "../x", "a/../../b"), ("..", "..", ".."), (".", "", "/")):
        hostile = default_cursor_file(*parts, env)
        assert hostile.parent.parent.parent == Path("/state/escalation/workbench")
        assert not {".", ".."} & set(hostile.relative_to("/state").parts)
    assert default_cursor_file("t", "m", "a", {}).is_relative_to(Path.home() / ".local" / "state")


def test_an_unset_token_variable_is_bad_usage(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("WB_TEST_TOKEN", raising=False)
    with pytest.raises(SystemExit) as caught:
        cli.main(["workbench", "--token-env", "WB_TEST_TOKEN"])
    assert caught.value.code == 2
    assert "WB_TEST_TOKEN" in capsys.readouterr().err
    with pytest.raises(SystemExit) as caught:
        cli.main(["workbench", "--token", mint(auth.Role.PLATFORM, "pa-1")])
    assert caught.value.code == 2
    assert "merchant agent" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("token", "said"),
    [
        (
            mint(auth.Role.PLATFORM, "pa-1"),
            "this token has no merchant_id claim (role platform): the workbench needs a merchant agent's token",
        ),
        (
            mint(auth.Role.OPS, "ops-1"),
            "this token has no merchant_id claim (role ops): the workbench needs a merchant agent's token",
        ),
        (
            jwt.encode({"merchant_id": "demo-shop", "role": "merchant"}, SECRET),
            "this token has no sub claim (role merchant): the workbench needs a merchant agent's token",
        ),
        (
            jwt.encode({}, SECRET),
            "this token has no sub and no merchant_id claims: the workbench needs a merchant agent's token",
        ),
    ],
)
def test_a_token_without_a_shop_says_which_claim_is_missing(token: str, said: str) -> None:
    with pytest.raises(ValueError, match="claim") as caught:
        claims(token)
    assert str(caught.value) == said
