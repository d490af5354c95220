"""Fuzz every method of every service: zero UNKNOWN/INTERNAL (SPEC §3, issue 9 "Done when").

Raw bytes (random, and valid messages truncated or with a byte flipped) and generated messages go to
every method from the service descriptors, so a new RPC is covered automatically. Bytes protobuf refuses
must be INVALID_ARGUMENT / MALFORMED_REQUEST. ``ESCALATION_TEST_FUZZ_CALLS`` sets the number of calls
(default 3,000 in ``make test``; ``make chaos`` runs more); the seed is printed on failure.
"""

from __future__ import annotations

import asyncio
import os
import random

import asyncpg
import grpc
import pytest
from google.protobuf import descriptor
from google.protobuf import message as pb_message

from tests.integration.grpc_harness import running_server
from tests.integration.sessions_harness import make_shop
from tests.integration.wire_harness import SHOP, Method, all_methods, call_raw, decodes

pytestmark = pytest.mark.integration

CALLS = int(os.environ.get("ESCALATION_TEST_FUZZ_CALLS", "3000"))
_F = descriptor.FieldDescriptor
_STRINGS = ["", SHOP, f"{SHOP}-sub-1", "00000000-0000-0000-0000-000000000000", "x" * 300, "\u202e\u200b", "é\x00\n"]
_INTS = [0, 1, -1, 2**31 - 1, -(2**31), 7, 1000]


def generated(rng: random.Random, message: pb_message.Message, depth: int = 3) -> None:
    """Fills ``message`` with random values of the right types (ids, extremes, odd text, unknown enums)."""
    for field in message.DESCRIPTOR.fields:
        if rng.random() < 0.4:
            continue
        repeated = field.is_repeated
        for _ in range(rng.randint(0, 3) if repeated else 1):
            if field.type == _F.TYPE_MESSAGE:
                if depth == 0 or field.message_type is None or field.message_type.GetOptions().map_entry:
                    break
                target = getattr(message, field.name)
                child = target.add() if repeated else target
                generated(rng, child, depth - 1)
                if not repeated:
                    child.SetInParent()
                continue
            value: object
            if field.type == _F.TYPE_STRING:
                value = rng.choice([*_STRINGS, "".join(chr(rng.randint(1, 12287)) for _ in range(rng.randint(1, 20)))])
            elif field.type == _F.TYPE_BYTES:
                value = rng.randbytes(rng.randint(0, 20))
            elif field.type == _F.TYPE_BOOL:
                value = rng.random() < 0.5
            elif field.type == _F.TYPE_ENUM:
                value = rng.choice([v.number for v in (field.enum_type.values if field.enum_type else ())] + [99])
            elif field.type in (_F.TYPE_DOUBLE, _F.TYPE_FLOAT):
                value = rng.choice([0.0, -1.0, 1e300, 0.5])
            elif field.type in (_F.TYPE_UINT32, _F.TYPE_UINT64, _F.TYPE_FIXED32, _F.TYPE_FIXED64):
                value = rng.choice([0, 1, 2**32 - 1])
            else:
                value = rng.choice(_INTS)
            if repeated:
                getattr(message, field.name).append(value)
            else:
                setattr(message, field.name, value)


def payload(rng: random.Random, method: Method) -> bytes:
    message = method.request_type()
    generated(rng, message)
    raw: bytes = message.SerializeToString()
    kind = rng.randrange(4)
    if kind == 0:
        return rng.randbytes(rng.randint(0, 40))
    if kind == 1 and raw:
        return raw[: rng.randrange(len(raw))]
    if kind == 2 and raw:
        i = rng.randrange(len(raw))
        return raw[:i] + bytes([rng.randrange(256)]) + raw[i + 1 :]
    return raw


async def test_fuzzed_requests_never_get_unknown_or_internal(pool: asyncpg.Pool) -> None:
    seed = int(os.environ.get("ESCALATION_TEST_FUZZ_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    methods = all_methods()
    wrong: list[str] = []
    async with running_server(pool) as channel:
        await make_shop(channel, SHOP, agents={f"{SHOP}-sub-1": 10})

        async def one(method: Method, raw: bytes) -> None:
            # A stream that stays silent is fine for a valid request; a malformed one must end with an error.
            got = await call_raw(channel, method, [raw], quiet=0.2 if decodes(method, raw) else 10.0)
            reason = got.failure.reason if got.failure else None
            if got.code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL) or (
                not decodes(method, raw) and reason != "MALFORMED_REQUEST"
            ):
                wrong.append(f"{method} {raw!r}: {got.code.name} {reason}")

        for start in range(0, CALLS, 16):
            batch = [rng.choice(methods) for _ in range(min(16, CALLS - start))]
            await asyncio.gather(*(one(m, payload(rng, m)) for m in batch))
    assert not wrong, f"seed {seed}:\n" + "\n".join(wrong[:30])
