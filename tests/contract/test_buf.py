"""The ticketing team's schema contract: buf lint is clean and nothing broke since the released baseline.

The baseline is proto/baseline.binpb, a buf image of the protos as last released (`make proto-baseline`
at each release); committed, so a fresh clone without tags checks the same thing (docs/tickets.md).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from google.rpc import status_pb2

from tests.contract.tools import ROOT, run

BASELINE = ROOT / "proto" / "baseline.binpb"


def _rules(result_stdout: str) -> set[str]:
    """The rule ids of buf's --error-format=json output (one JSON object per line)."""
    return {json.loads(line)["type"] for line in result_stdout.splitlines() if line.strip()}


def _breaking(*, cwd: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    """`buf breaking` of the proto module in cwd against the released baseline."""
    return run("buf", "breaking", "proto", "--against", str(BASELINE), "--error-format=json", cwd=cwd, cache=cache)


def _workspace_copy(tmp_path: Path) -> Path:
    """A copy of everything buf reads, to change without touching the checkout."""
    copy = tmp_path / "ws"
    copy.mkdir()
    shutil.copy(ROOT / "buf.yaml", copy / "buf.yaml")
    shutil.copytree(ROOT / "proto", copy / "proto")
    shutil.copytree(ROOT / "third_party", copy / "third_party")
    return copy


def test_buf_lint_is_clean(tmp_path: Path) -> None:
    result = run("buf", "lint", "--error-format=json", cwd=ROOT, cache=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_no_breaking_change_since_the_released_baseline(tmp_path: Path) -> None:
    result = _breaking(cwd=ROOT, cache=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# (file, text as released, changed text, a rule id buf must report)
BREAKING_CHANGES = [
    # A Kafka consumer would read merchant_id from a field that no longer carries it.
    ("events.proto", "string merchant_id = 3;", "string merchant_id = 30;", "FIELD_NO_DELETE"),
    ("events.proto", "int64 sessions = 6;", "int32 sessions = 6;", "FIELD_SAME_TYPE"),
    ("events.proto", "string order_id = 6;", "string order_ref = 6;", "FIELD_SAME_NAME"),
    ("events.proto", "KIND_SLOW_AVERAGE_RESPONSE = 2;", "", "ENUM_VALUE_NO_DELETE"),
    ("events.proto", "repeated Message transcript = 9;", "Message transcript = 9;", "FIELD_SAME_CARDINALITY"),
    ("ops.proto", "rpc ListWarnings(ListWarningsRequest) returns (ListWarningsResponse);", "", "RPC_NO_DELETE"),
]


@pytest.mark.parametrize(("file", "released", "changed", "rule"), BREAKING_CHANGES)
def test_a_breaking_change_is_reported(tmp_path: Path, file: str, released: str, changed: str, rule: str) -> None:
    copy = _workspace_copy(tmp_path)
    proto = copy / "proto" / "escalation" / "v1" / file
    text = proto.read_text()
    assert text.count(released) == 1, f"{released!r} is no longer in {file}: pick another example"
    proto.write_text(text.replace(released, changed))

    result = _breaking(cwd=copy, cache=tmp_path)

    assert result.returncode != 0
    assert rule in _rules(result.stdout), result.stdout + result.stderr


def test_adding_a_field_is_not_breaking(tmp_path: Path) -> None:
    copy = _workspace_copy(tmp_path)
    proto = copy / "proto" / "escalation" / "v1" / "events.proto"
    text = proto.read_text()
    last = "google.protobuf.Timestamp create_time = 15;"
    assert text.count(last) == 1
    # A number far above the used ones, so that fields added since (16: assignment_history) do not collide.
    proto.write_text(text.replace(last, last + "\n  string escalation_note = 1000;"))

    result = _breaking(cwd=copy, cache=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr


def test_vendored_google_rpc_status_defines_what_googleapis_common_protos_ships(tmp_path: Path) -> None:
    # buf reads third_party/googleapis; protoc (make proto) and the runtime read the PyPI package.
    image = tmp_path / "image.binpb"
    built = run("buf", "build", "--exclude-source-info", "-o", str(image), cwd=ROOT, cache=tmp_path)
    assert built.returncode == 0, built.stderr
    files = descriptor_pb2.FileDescriptorSet.FromString(image.read_bytes()).file
    vendored = next(f for f in files if f.name == "google/rpc/status.proto")
    shipped = descriptor_pb2.FileDescriptorProto()
    status_pb2.DESCRIPTOR.CopyToProto(shipped)
    for message in vendored.message_type:  # the runtime descriptor leaves out the derived json_name
        for field in message.field:
            field.ClearField("json_name")
    assert list(vendored.message_type) == list(shipped.message_type)
    assert vendored.package == shipped.package
    assert list(vendored.dependency) == list(shipped.dependency)


def test_the_baseline_holds_the_released_api_and_kafka_values() -> None:
    # An empty or truncated baseline would let `buf breaking` pass whatever changed.
    files = {f.name: f for f in descriptor_pb2.FileDescriptorSet.FromString(BASELINE.read_bytes()).file}
    ours = {name for name in files if name.startswith("escalation/v1/")}
    released = ("admin", "common", "events", "merchant", "ops", "platform")
    assert {f"escalation/v1/{name}.proto" for name in released} <= ours
    assert {"ServiceTicket", "MerchantWarning"} <= {m.name for m in files["escalation/v1/events.proto"].message_type}
    services = {s.name for name in ours for s in files[name].service}
    assert services >= {"PlatformService", "MerchantService", "MerchantAdminService", "OpsService"}
