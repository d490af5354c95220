"""Child-process plumbing shared by the embedded PostgreSQL and broker.

Both services run as direct children in their own session so that a terminal Ctrl-C reaches only the
supervisor, which then stops them in order instead of racing them.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_LOG_TAIL_BYTES = 4000


class StartupError(RuntimeError):
    """An embedded service did not become ready; the message carries the tail of its log."""


def log_tail(path: Path | None, max_bytes: int = _LOG_TAIL_BYTES) -> str:
    """Return the end of a log so startup errors show the service's own explanation."""
    if path is None:
        return ""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except OSError:
        return ""
    return data.decode("utf-8", errors="replace").strip()


def with_log(message: str, path: Path | None) -> str:
    tail = log_tail(path)
    if not tail:
        return message
    return f"{message}\n--- last lines of {path} ---\n{tail}"


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """Build a preexec_fn that SIGKILLs the child when this process dies, even by SIGKILL.

    Without it a killed test run or dev runner leaves PostgreSQL and the broker holding their ports.

    Why this is safe together with ``Popen(user=...)``: the kernel clears ``pdeath_signal`` whenever the
    credentials change (commit_creds), but CPython's ``_posixsubprocess`` calls setgroups/setregid/setreuid
    *before* ``preexec_fn``, so the signal is armed with the final credentials. The later execve of a
    non-setuid binary does not change credentials again, so it survives. Verified on this machine: a
    child started with ``user="postgres"`` dies when its parent is SIGKILLed.

    The death signal fires when the parent *thread* exits, not the process. Arming it from a worker
    thread (``asyncio.to_thread``, an executor) would kill the service when that thread is retired, so
    it is only armed from the main thread; elsewhere we accept possible orphans instead.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux/glibc: no parent-death signal available
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
        # The parent may have died between fork and prctl; then nobody would ever signal us.
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def spawn(
    argv: Sequence[str],
    *,
    log_path: Path | None,
    user: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str = "/",
    inherit_output: bool = False,
    stderr_path: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a service child in its own session with output appended to ``log_path``.

    ``inherit_output`` lets a child write to our own stdout/stderr instead (the dev runner's server).
    ``stderr_path`` keeps stderr apart from stdout (tests read them separately); by default it joins stdout.

    The parent's copy of the log handle is closed right away: the child keeps its own descriptor, and
    nothing is left for the garbage collector to warn about.
    """
    uid: int | None = None
    gid: int | None = None
    groups: list[int] | None = None
    if user is not None:
        pw = pwd.getpwnam(user)
        uid, gid = pw.pw_uid, pw.pw_gid
        # Without extra_groups the child would keep root's supplementary groups.
        groups = os.getgrouplist(user, gid)
    preexec = _pdeathsig_preexec()
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
    stdout = log_path.open("ab") if log_path is not None else None
    stderr = stderr_path.open("ab") if stderr_path is not None else None
    try:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else (None if inherit_output else subprocess.DEVNULL),
            stderr=stderr if stderr is not None else (None if inherit_output and stdout is None else subprocess.STDOUT),
            start_new_session=True,
            preexec_fn=preexec,  # see _pdeathsig_preexec
            env=dict(env) if env is not None else None,
            cwd=cwd,
            user=uid,
            group=gid,
            extra_groups=groups,
        )
    finally:
        for handle in (stdout, stderr):
            if handle is not None:
                handle.close()


def stop_process(proc: subprocess.Popen[bytes], sig: signal.Signals, timeout: float) -> int:
    """Ask politely with ``sig``, then SIGKILL; always reap so no zombie or ResourceWarning remains."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()
