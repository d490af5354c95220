"""The warnings worker's settings: ESCALATION_WARNING_* parsed, defaulted, and refused with one clear line."""

from __future__ import annotations

from datetime import timedelta

import pytest

from escalation import cli, config
from escalation.domain.timeliness import WarningRule


def test_defaults_are_the_spec_thresholds() -> None:
    worker = cli._warnings_config(config.load({}))
    assert worker.rule == WarningRule(reply_rate_threshold=0.8, min_sessions=5, average_response=timedelta(seconds=90))
    assert worker.interval == 300.0


def test_every_threshold_comes_from_the_environment() -> None:
    settings = config.load(
        {
            "ESCALATION_WARNING_REPLY_RATE_THRESHOLD": "0.9",
            "ESCALATION_WARNING_MIN_SESSIONS": "20",
            "ESCALATION_WARNING_AVERAGE_RESPONSE_SECONDS": "45.5",
            "ESCALATION_WARNING_INTERVAL_SECONDS": "60",
        }
    )
    worker = cli._warnings_config(settings)
    assert worker.rule == WarningRule(0.9, 20, timedelta(seconds=45.5))
    assert worker.interval == 60.0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ESCALATION_WARNING_REPLY_RATE_THRESHOLD", "80"),
        ("ESCALATION_WARNING_REPLY_RATE_THRESHOLD", "-0.1"),
        ("ESCALATION_WARNING_REPLY_RATE_THRESHOLD", "nan"),
        ("ESCALATION_WARNING_MIN_SESSIONS", "0"),
        ("ESCALATION_WARNING_MIN_SESSIONS", "5.5"),
        ("ESCALATION_WARNING_AVERAGE_RESPONSE_SECONDS", "0"),
        ("ESCALATION_WARNING_AVERAGE_RESPONSE_SECONDS", "inf"),
        ("ESCALATION_WARNING_INTERVAL_SECONDS", "0"),
        ("ESCALATION_WARNING_INTERVAL_SECONDS", "soon"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(config.ConfigError) as caught:
        config.load({name: value})
    message = str(caught.value)
    assert message.startswith(f"{name}={value!r} is invalid")
    assert "\n" not in message
