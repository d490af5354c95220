"""`escalation tickets tail` with no broker at ESCALATION_KAFKA_BOOTSTRAP: one line saying so, exit 1."""

from __future__ import annotations

import pytest

from escalation.devenv.ports import free_port
from tests.e2e.harness import ESCALATION, clean_env, run


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_tickets_tail_without_a_broker_says_so_in_one_line(host: str) -> None:
    bootstrap = f"{host}:{free_port()}"  # nothing listens there
    done = run((*ESCALATION, "tickets", "tail", "--max", "1"), clean_env(ESCALATION_KAFKA_BOOTSTRAP=bootstrap))
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "Unclosed" not in done.stderr, "the consumer must be stopped"
    assert done.stderr.strip() == (
        f"escalation tickets tail: cannot reach Kafka at {bootstrap} (ESCALATION_KAFKA_BOOTSTRAP)"
        " — is `make run` running?"
    ), done.stderr
    assert done.stdout == ""
