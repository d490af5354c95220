"""The limit variables (SPEC §3 "Limits"): defaults, RATE/UNIT,BURST values, bad values all reported at once."""

from __future__ import annotations

import pytest

from escalation import config
from escalation.api import server
from escalation.domain.token_bucket import Rate


def test_defaults_cap_streams_and_rates() -> None:
    limits = config.load({}).limits
    assert limits.connect_streams_per_identity == 5
    assert limits.max_concurrent_streams == 100
    assert limits.reply_per_sender == Rate(per_second=2, burst=20)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("5/s,50", Rate(5, 50)), ("30/m, 5", Rate(0.5, 5)), ("36/h,1", Rate(0.01, 1)), ("0.5/s,2", Rate(0.5, 2))],
)
def test_a_rate_is_an_amount_per_unit_and_a_burst(raw: str, expected: Rate) -> None:
    assert config.load({"ESCALATION_RATE_REPLY_PER_SENDER": raw}).limits.reply_per_sender == expected


def test_every_bad_limit_is_named_in_one_line() -> None:
    bad = {
        "ESCALATION_RATE_OPEN_SESSION_PER_AGENT": "5,50",
        "ESCALATION_RATE_OPEN_SESSION_PER_MERCHANT": "0/s,5",
        "ESCALATION_RATE_SEND_MESSAGE_PER_SENDER": "5/s,0",
        "ESCALATION_RATE_REPLY_PER_SENDER": "nan/s,1",
        "ESCALATION_CONNECT_STREAMS_PER_IDENTITY": "0",
        "ESCALATION_WATCH_STREAMS_PER_IDENTITY": "1000001",
        "ESCALATION_UNAUTHENTICATED_STREAMS": "-1",
        "ESCALATION_GRPC_MAX_CONCURRENT_STREAMS": "many",
    }
    with pytest.raises(config.ConfigError) as caught:
        config.load(bad)
    message = str(caught.value)
    assert "\n" not in message
    assert all(name in message for name in bad), message


@pytest.mark.parametrize("streams", [1, 100, 5000])
def test_the_server_announces_max_concurrent_streams(streams: int) -> None:
    settings = config.load({"ESCALATION_GRPC_MAX_CONCURRENT_STREAMS": str(streams)})
    assert ("grpc.max_concurrent_streams", streams) in server._options(settings)
