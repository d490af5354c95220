"""Port checks done before starting a service, so a clash is one readable line instead of a log dig.

Tansu in particular exits with status 0 after panicking on ``Address in use``, and a readiness probe
would happily talk to whatever already holds the port; checking first is the only reliable signal.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from escalation.devenv.process import StartupError, with_log

__all__ = ["PortInUseError", "ensure_free", "free_port", "wait_for_port"]


class PortInUseError(Exception):
    def __init__(self, host: str, port: int, what: str, env_var: str) -> None:
        self.host = host
        self.port = port
        self.what = what
        self.env_var = env_var
        hint = f"set {env_var}" if env_var else "choose another port"
        super().__init__(f"port {port} ({what}) is already in use on {host}; stop whatever holds it or {hint}")


def _bind_probe(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    # The services themselves bind with SO_REUSEADDR, so a lingering TIME_WAIT connection does not
    # block them and must not be reported as a clash either.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def ensure_free(host: str, port: int, what: str, env_var: str) -> None:
    """Raise PortInUseError if ``host:port`` cannot be bound; ``env_var`` names the override to suggest."""
    try:
        _bind_probe(host, port).close()
    except OSError as exc:
        raise PortInUseError(host, port, what, env_var) from exc


def free_port(host: str = "127.0.0.1") -> int:
    """Pick a port the kernel considers free right now (another process may still take it before use)."""
    with _bind_probe(host, 0) as sock:
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(
    host: str,
    port: int,
    timeout: float,
    proc: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
) -> None:
    """Block until something accepts TCP connections on ``host:port``.

    Fails fast with StartupError if ``proc`` exits first, instead of waiting out the whole timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise StartupError(
                with_log(
                    f"process {proc.pid} exited with status {proc.returncode} before listening on {host}:{port}",
                    log_path,
                )
            )
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() >= deadline:
            raise StartupError(with_log(f"nothing listening on {host}:{port} after {timeout:.0f}s", log_path))
        time.sleep(0.02)
