from __future__ import annotations

import socket

import pytest

from escalation.devenv.ports import PortInUseError, ensure_free, free_port


def test_ensure_free_names_port_and_env_var_when_taken() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(PortInUseError) as info:
            ensure_free("127.0.0.1", port, "PostgreSQL", "ESCALATION_DEV_PG_PORT")
    message = str(info.value)
    assert "\n" not in message
    assert f"port {port} (PostgreSQL)" in message
    assert "ESCALATION_DEV_PG_PORT" in message
    assert info.value.port == port


def test_ensure_free_accepts_a_free_port() -> None:
    ensure_free("127.0.0.1", free_port(), "PostgreSQL", "ESCALATION_DEV_PG_PORT")


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
