"""gRPC server TLS (optional mTLS) whose certificate files are re-read when they change.

Reload by watching the files, not on SIGHUP: cert-manager, Vault agent and kubelet replace a mounted
Secret's files in place (an atomic symlink swap) and signal nobody, so a process that waits for SIGHUP
keeps serving the old certificate until it expires. grpc's dynamic credentials call our fetcher before
every new handshake; it compares the files' (inode, size, mtime) — a few stat calls — and re-reads them
only when that changed. Connections already open keep the certificate they were made with; a broken
replacement (half-written, key not matching) is logged and the last good pair stays in use.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import grpc
import structlog

from escalation.transport_security import GrpcTls, read_ca, read_identity

log = structlog.get_logger(__name__)


def _stamp(paths: tuple[Path, ...]) -> tuple[tuple[int, int, int], ...]:
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
    """The certificate-configuration fetcher grpc calls on each new connection (see module docstring)."""

    def __init__(self, tls: GrpcTls) -> None:
        self._tls = tls
        self._paths = (tls.cert_file, tls.key_file, *((tls.client_ca_file,) if tls.client_ca_file else ()))
        self._lock = threading.Lock()  # grpc may call the fetcher from several core threads
        self._stamp = _stamp(self._paths)
        self.initial = self._configuration()  # raises ValueError: the caller reports it at start

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        identity = read_identity(self._tls.cert_file, self._tls.key_file)
        ca = read_ca(self._tls.client_ca_file) if self._tls.client_ca_file else None
        return grpc.ssl_server_certificate_configuration([(identity.private_key, identity.certificate_chain)], ca)

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        """A new configuration when the files changed and are valid; None keeps the current one."""
        with self._lock:
            stamp = _stamp(self._paths)
            if stamp == self._stamp:
                return None
            try:
                configuration = self._configuration()
            except ValueError as exc:
                # Possibly mid-replacement: the next handshake looks again, the old pair serves meanwhile.
                log.warning("grpc.tls_reload_failed", error=str(exc))
                return None
            self._stamp = stamp
            log.info("grpc.tls_reloaded", cert_file=str(self._tls.cert_file))
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
