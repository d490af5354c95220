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


def test_make_run_refuses_a_port_its_workers_would_serve_metrics_on() -> None:
    """`make run` starts the workers with the metrics port + 1, + 2, + 3: those are checked up front too,
    so a clash is one clear line naming the variable, not a worker dying after start."""
    from escalation.devenv.runner import WORKERS, DevPorts

    for offset in range(1, len(WORKERS) + 1):
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            taken = holder.getsockname()[1]
            # The ports below the taken one must be free for the check to reach it (they almost always are).
            for below in range(taken - offset, taken):
                ensure_free("127.0.0.1", below, "test", "-")
            ports = DevPorts(
                postgres=free_port(),
                kafka=free_port(),
                grpc_addr=f"127.0.0.1:{free_port()}",
                metrics_addr=f"127.0.0.1:{taken - offset}",
            )
            with pytest.raises(PortInUseError) as info:
                ports.check_free()
        assert info.value.port == taken
        assert "ESCALATION_METRICS_ADDR" in str(info.value)
