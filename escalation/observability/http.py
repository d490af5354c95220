"""The /metrics endpoint."""

from __future__ import annotations

import errno

from prometheus_client import start_http_server


class MetricsPortInUse(OSError):
    """The metrics address is taken."""


def start_metrics_server(address: str) -> None:
    """Serves Prometheus metrics on HOST:PORT in a daemon thread; a taken port is a clear error."""
    host, _, port = address.rpartition(":")
    try:
        start_http_server(int(port), addr=host)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise MetricsPortInUse(
                f"metrics address {address} is already in use; set ESCALATION_METRICS_ADDR"
            ) from None
        raise
