"""gRPC server TLS (optional mTLS) whose certificate files are re-read when they change.

Reload by watching the files, not on SIGHUP: cert-manager, Vault agent and kubelet replace a mounted
Secret's files in place (an atomic symlink swap) and signal nobody, so a process that waits for SIGHUP
keeps serving the old certificate until it expires. grpc's dynamic credentials call our fetcher before
every new handshake; it compares the files' (inode, size, mtime) — a few stat calls — and re-reads them
only when that changed. Connections already open keep the certificate they were made with; a broken
replacement (half-written, key not matching, expired or not yet valid) is logged once per change of the
files and the last good pair stays in use. The files' stamp of a failed replacement is remembered so
later handshakes neither re-read nor warn again; a not-yet-valid one is tried again once its notBefore
has passed (a CA's clock slightly ahead of ours must not strand the pod on the old certificate).
"""

from __future__ import annotations

import datetime
import os
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import structlog

from escalation.observability.metrics import TLS_CERTIFICATE_EXPIRY
from escalation.transport_security import CertificateNotYetValid, GrpcTls, describe, read_ca, read_identity

log = structlog.get_logger(__name__)

Stamp = tuple[tuple[int, int, int], ...]


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _stamp(paths: tuple[Path, ...]) -> Stamp:
    stamps = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            stamps.append((-1, -1, -1))
        else:
            stamps.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(stamps)


class CertificateFiles:
    """The certificate-configuration fetcher grpc calls on each new connection (see module docstring).

    ``clock`` returns the current UTC time (tests move it); a certificate is checked against it.
    """

    def __init__(self, tls: GrpcTls, clock: Callable[[], datetime.datetime] = _utc_now) -> None:
        self._tls = tls
        self._clock = clock
        self._paths = (tls.cert_file, tls.key_file, *((tls.client_ca_file,) if tls.client_ca_file else ()))
        self._lock = threading.Lock()  # grpc may call the fetcher from several core threads
        self._stamp = _stamp(self._paths)
        # The stamp of the last replacement refused, and when to look at it again (None: only when it changes).
        self._failed: tuple[Stamp, datetime.datetime | None] | None = None
        self.initial = self._configuration("grpc.tls_loaded")  # raises ValueError: the caller reports it at start

    def _configuration(self, event: str) -> grpc.ServerCertificateConfiguration:
        identity = read_identity(self._tls.cert_file, self._tls.key_file, self._clock())
        ca = read_ca(self._tls.client_ca_file) if self._tls.client_ca_file else None
        configuration = grpc.ssl_server_certificate_configuration(
            [(identity.private_key, identity.certificate_chain)], ca
        )
        TLS_CERTIFICATE_EXPIRY.set(identity.leaf.not_valid_after_utc.timestamp())
        log.info(event, cert_file=str(self._tls.cert_file), **describe(identity.leaf))
        return configuration

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        """A new configuration when the files changed and are valid; None keeps the current one."""
        with self._lock:
            stamp = _stamp(self._paths)
            if stamp == self._stamp:
                return None
            if self._failed is not None and self._failed[0] == stamp:
                retry_at = self._failed[1]
                if retry_at is None or self._clock() < retry_at:
                    return None  # already refused and logged; the old pair keeps serving
            try:
                configuration = self._configuration("grpc.tls_reloaded")
            except ValueError as exc:
                # Possibly mid-replacement: the next change is looked at, the old pair serves meanwhile.
                retry = exc.not_before if isinstance(exc, CertificateNotYetValid) else None
                self._failed = (stamp, retry)
                log.warning("grpc.tls_reload_failed", error=str(exc), serving="the previous certificate")
                return None
            self._stamp, self._failed = stamp, None
            return configuration


def server_credentials(tls: GrpcTls) -> grpc.ServerCredentials:
    """TLS credentials for ``add_secure_port``; client certificates are required iff a client CA is set.

    Raises ValueError (one line naming the file) when the files are unusable at start.
    """
    files = CertificateFiles(tls)
    return grpc.dynamic_ssl_server_credentials(
        files.initial,
        files,  # type: ignore[arg-type]  # grpc documents None as "no change"; the stub omits it
        require_client_authentication=tls.client_ca_file is not None,
    )
