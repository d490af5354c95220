"""The SDK's pure parts: the file cursor store's atomic replace, full-jitter backoff, error decoding."""

from __future__ import annotations

import itertools
import os
import random
from pathlib import Path

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from escalation.client import Backoff, FileCursorStore, MemoryCursorStore
from escalation.client.errors import from_rpc_error


@pytest.mark.parametrize("cursors", [[0], [1, 2, 3], [7, 1_000_000, 2**62]])
async def test_file_store_keeps_the_last_saved_cursor_and_no_temporary_file(tmp_path: Path, cursors: list[int]) -> None:
    store = FileCursorStore(tmp_path / "agent.cursor")
    assert await store.load() is None
    for cursor in cursors:
        await store.save(cursor)
    assert await FileCursorStore(tmp_path / "agent.cursor").load() == cursors[-1]
    assert os.listdir(tmp_path) == ["agent.cursor"]


async def test_a_failed_save_leaves_the_previous_cursor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileCursorStore(tmp_path / "agent.cursor")
    await store.save(41)

    def crash(fd: int) -> None:  # the disk fails before the new content is durable
        raise OSError("EIO")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="EIO"):
        await store.save(42)
    monkeypatch.undo()
    assert await store.load() == 41
    assert os.listdir(tmp_path) == ["agent.cursor"]


@pytest.mark.parametrize("content", ["", "abc", "-3", "12 13", "1e3"])
async def test_a_file_that_holds_no_cursor_is_an_error_not_a_fresh_start(tmp_path: Path, content: str) -> None:
    (tmp_path / "agent.cursor").write_text(content)
    with pytest.raises(ValueError, match="does not hold a cursor"):
        await FileCursorStore(tmp_path / "agent.cursor").load()


async def test_memory_store_and_negative_cursor(tmp_path: Path) -> None:
    memory = MemoryCursorStore()
    await memory.save(5)
    assert await memory.load() == 5
    with pytest.raises(ValueError, match="never negative"):
        await FileCursorStore(tmp_path / "c").save(-1)


@pytest.mark.parametrize(("initial", "maximum"), [(0.1, 10.0), (0.5, 2.0), (1.0, 1.0)])
def test_backoff_bound_doubles_to_the_cap_and_delays_are_full_jitter(initial: float, maximum: float) -> None:
    backoff = Backoff(initial=initial, maximum=maximum)
    bounds = [backoff.bound(n) for n in range(12)]
    assert bounds[0] == initial
    assert all(b2 == min(maximum, 2 * b1) for b1, b2 in itertools.pairwise(bounds))
    assert bounds[-1] == maximum
    rng = random.Random(7)
    for attempt in range(12):
        delays = [backoff.delay(attempt, rng=rng) for _ in range(200)]
        assert all(0.0 <= d <= backoff.bound(attempt) for d in delays)
        # Full jitter: spread over the whole interval, not clustered at its end.
        assert min(delays) < 0.1 * backoff.bound(attempt) < 0.9 * backoff.bound(attempt) < max(delays)
    assert backoff.delay(0, at_least=3.0) >= 3.0  # a server's RetryInfo wins


class _Failed(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode, status: status_pb2.Status | None) -> None:
        trailers = (
            grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
            if status is not None
            else grpc.aio.Metadata()
        )
        super().__init__(code, grpc.aio.Metadata(), trailers, details="it failed", debug_error_string="")


def _packed(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def test_error_decodes_reason_violations_metadata_and_retry_delay() -> None:
    status = status_pb2.Status(
        code=8,
        message="it failed",
        details=[
            _packed(error_details_pb2.ErrorInfo(reason="RATE_LIMITED", domain="escalation", metadata={"limit": "5"})),
            _packed(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field="a", description="bad a"),
                        error_details_pb2.BadRequest.FieldViolation(field="b.c", description="bad c"),
                    ]
                )
            ),
            _packed(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=1, nanos=500_000_000))),
        ],
    )
    err = from_rpc_error(_Failed(grpc.StatusCode.RESOURCE_EXHAUSTED, status))
    assert (err.code, err.reason, err.domain, err.metadata) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RATE_LIMITED",
        "escalation",
        {"limit": "5"},
    )
    assert [(v.field, v.description) for v in err.violations] == [("a", "bad a"), ("b.c", "bad c")]
    assert err.retry_delay == 1.5
    assert err.transient
    bare = from_rpc_error(_Failed(grpc.StatusCode.PERMISSION_DENIED, None))
    assert (bare.reason, bare.violations, bare.retry_delay, bare.transient) == ("", (), None, False)
