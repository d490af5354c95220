"""`escalation COMMAND --help` says what each command does and which variables it needs (issue 9 §10)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest

from escalation import cli, config


class _Recording(Mapping[str, str]):
    """An environment that remembers every variable name ``config.load`` asks for."""

    def __init__(self, values: dict[str, str]) -> None:
        self._values = values
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def test_the_variable_table_lists_exactly_what_load_reads() -> None:
    read: set[str] = set()
    for values in ({}, {"ESCALATION_JWT_SECRET": "s" * 32}):  # JWT details are read once JWT is configured
        env = _Recording(values)
        config.load(env)
        read |= env.read
    assert {v.name for v in config.VARIABLES} == read


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as caught:
        cli.main([*argv, "--help"])
    assert caught.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "needed"),
    [
        (["serve"], ["ESCALATION_DATABASE_URL", "ESCALATION_JWT_SECRET", "ESCALATION_GRPC_ADDR"]),
        (["migrate"], ["ESCALATION_DATABASE_URL"]),
        (["worker"], ["ESCALATION_DATABASE_URL", "ESCALATION_KAFKA_BOOTSTRAP", "ESCALATION_WARNING_MIN_SESSIONS"]),
        (["tickets", "tail"], ["ESCALATION_KAFKA_BOOTSTRAP"]),
    ],
)
def test_help_lists_the_variables_the_command_needs(
    argv: list[str], needed: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    text = _help(argv, capsys)
    for name in needed:
        assert name in text


def test_migrate_help_lists_no_variable_it_does_not_read(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(["migrate"], capsys)
    assert "ESCALATION_JWT_SECRET" not in text
    assert "ESCALATION_KAFKA_BOOTSTRAP" not in text


def test_worker_help_says_what_each_worker_does(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(["worker"], capsys)
    for name, does in [("deadlines", "reply deadline"), ("outbox", "Kafka"), ("warnings", "timeliness")]:
        line = next(line for line in text.splitlines() if line.strip().startswith(name))
        assert does in line or does in text.split(line, 1)[1].splitlines()[0]
