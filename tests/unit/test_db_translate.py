"""The one driver-error translation (store/db.py): outages are UNAVAILABLE, bugs are not (SPEC §3)."""

from __future__ import annotations

import asyncpg
import pytest

from escalation import errors
from escalation.store import db


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.InterfaceError("connection is closed"),
        asyncpg.exceptions.InternalClientError("cannot switch to state 15; another operation (2) is in progress"),
        ConnectionResetError(),
        TimeoutError(),
    ],
)
def test_a_lost_connection_is_database_unavailable(exc: BaseException) -> None:
    assert isinstance(db.translate(exc), errors.DatabaseUnavailable)


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.exceptions._base.DataError("invalid input for query argument $1: 99999999999 (out of int32 range)"),
        ValueError("not a database error"),
        KeyError("bug"),
    ],
)
def test_an_argument_the_driver_cannot_encode_is_a_bug_not_an_outage(exc: BaseException) -> None:
    # The driver's DataError (not the server's asyncpg.DataError, SQLSTATE 22000) subclasses
    # InterfaceError; retrying it would fail the same way forever.
    assert db.translate(exc) is None
