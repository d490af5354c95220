"""The `make run` banner says what is in force (issue 9 §10)."""

from __future__ import annotations

import pytest

from escalation.devenv.runner import _idle_timeout_note, _reply_timeout_note


@pytest.mark.parametrize("override", ["2", "15", "0.5", "600"])
def test_with_an_override_the_banner_states_it_and_suggests_no_other_value(override: str) -> None:
    note = _reply_timeout_note(override)
    assert f"after {override} s" in note
    assert f"ESCALATION_DEV_OVERRIDE_REPLY_TIMEOUT_SECONDS={override}" in note
    assert "restart with" not in note


def test_without_an_override_the_banner_says_how_to_set_one() -> None:
    note = _reply_timeout_note(None)
    assert "180 s" in note
    assert "ESCALATION_DEV_OVERRIDE_REPLY_TIMEOUT_SECONDS=15 make run" in note


@pytest.mark.parametrize("override", ["3", "30", "0.5"])
def test_the_banner_states_an_idle_override_in_force(override: str) -> None:
    note = _idle_timeout_note(override)
    assert f"after {override} s" in note
    assert f"ESCALATION_DEV_OVERRIDE_IDLE_TIMEOUT_SECONDS={override} overrides" in note
    assert "restart with" not in note


def test_without_an_idle_override_the_banner_says_how_to_set_one() -> None:
    note = _idle_timeout_note(None)
    assert "30 min" in note
    assert "ESCALATION_DEV_OVERRIDE_IDLE_TIMEOUT_SECONDS=30" in note
