"""The relay's per-row verdict (SPEC R7, docs/delivery.md "Parked rows"): pure, over fake rows."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotEnoughReplicasError,
    NotLeaderForPartitionError,
    RecordListTooLargeError,
    TopicAuthorizationFailedError,
)

from workers.outbox import _judge


def _rows(*spec: tuple[int, bytes, int]) -> list[Any]:
    return [{"id": i, "message_key": key, "isolated_failures": failures} for i, key, failures in spec]


def _ids(verdict_part: list[Any]) -> list[int]:
    return [r["id"] if isinstance(r, dict) else r[0]["id"] for r in verdict_part]


@pytest.mark.parametrize("error", [MessageSizeTooLargeError(), RecordListTooLargeError()])
def test_a_record_error_parks_at_once_and_later_rows_of_its_key_flow(error: Exception) -> None:
    rows = _rows((1, b"k", 0), (2, b"j", 0), (3, b"k", 0))
    v = _judge(rows, {1: error, 2: None, 3: None}, max_attempts=5)
    assert (_ids(v.parked), _ids(v.published), v.failed, v.held_back) == ([1], [2, 3], [], [])


def test_an_outage_never_parks_even_past_the_attempt_budget() -> None:
    rows = _rows((1, b"k", 9), (2, b"j", 9))
    v = _judge(rows, {1: KafkaConnectionError(), 2: TimeoutError()}, max_attempts=1)
    assert (v.broker_healthy, v.parked, _ids(v.failed)) == (False, [], [1, 2])


@pytest.mark.parametrize(("failures_before", "parked"), [(0, False), (3, False), (4, True), (7, True)])
def test_a_row_failing_while_others_are_acked_is_parked_on_its_fifth_such_failure(
    failures_before: int, parked: bool
) -> None:
    rows = _rows((1, b"k", failures_before), (2, b"j", 0))
    v = _judge(rows, {1: TopicAuthorizationFailedError(), 2: None}, max_attempts=5)
    assert (bool(v.parked), bool(v.failed), _ids(v.published)) == (parked, not parked, [2])


@pytest.mark.parametrize(
    "error",
    [
        NotLeaderForPartitionError(),
        NotEnoughReplicasError(),
        KafkaConnectionError(),
        KafkaTimeoutError(),
        TimeoutError(),
    ],
)
def test_a_retriable_failure_of_one_partition_never_parks_while_others_are_acked(error: Exception) -> None:
    # A partition electing a leader (or short of in-sync replicas) while the others take writes: its rows
    # wait and keep their key's order; parking them would need an operator and let later rows overtake.
    rows = _rows((1, b"k", 99), (2, b"j", 0))
    v = _judge(rows, {1: error, 2: None}, max_attempts=5)
    assert (v.parked, _ids(v.failed), _ids(v.published)) == ([], [1], [2])


def test_a_failed_row_that_stays_pending_holds_back_later_rows_of_its_key_only() -> None:
    rows = _rows((1, b"k", 0), (2, b"k", 0), (3, b"j", 0), (4, b"k", 0))
    v = _judge(rows, {1: KafkaConnectionError(), 2: None, 3: None}, max_attempts=5)  # 4: never sent (time ran out)
    assert (_ids(v.failed), _ids(v.held_back), _ids(v.published)) == ([1], [2, 4], [3])
