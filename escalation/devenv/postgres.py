"""A real PostgreSQL server run from the distribution's binaries, for the dev runner and tests.

initdb and postgres refuse to run as root, and CI runs as root, so as root both run as the
``postgres`` OS user (via Popen's own setuid support, so our signals reach postgres directly).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from escalation.devenv.ports import ensure_free
from escalation.devenv.process import StartupError, spawn, stop_process, with_log

__all__ = ["EmbeddedPostgres", "PostgresNotFoundError", "find_pg_bin", "make_data_dir"]

PG_BIN_ENV = "ESCALATION_PG_BIN"
PG_OS_USER = "postgres"
_SUPERUSER = "postgres"
_CONF_NAME = "escalation.conf"
_INCLUDE_LINE = f"include_if_exists = '{_CONF_NAME}'"
# sun_path is 108 bytes; leave room for ".s.PGSQL.NNNNN.lock" checks postgres does itself.
_MAX_SOCKET_PATH = 100


class PostgresNotFoundError(RuntimeError):
    pass


def _has_server(bin_dir: Path) -> bool:
    return all(os.access(bin_dir / name, os.X_OK) for name in ("initdb", "postgres", "pg_isready"))


def find_pg_bin() -> Path:
    """Locate the directory holding initdb/postgres/pg_isready.

    Debian keeps the server binaries out of PATH under /usr/lib/postgresql/<version>/bin, so that is
    searched (newest first) before PATH. ``ESCALATION_PG_BIN`` wins when set.
    """
    override = os.environ.get(PG_BIN_ENV)
    if override:
        path = Path(override)
        if _has_server(path):
            return path
        raise PostgresNotFoundError(
            f"{PG_BIN_ENV}={override} does not contain executable initdb, postgres and pg_isready"
        )
    versions: list[tuple[int, Path]] = []
    for candidate in Path("/usr/lib/postgresql").glob("*/bin"):
        match = re.fullmatch(r"\d+", candidate.parent.name)
        if match and _has_server(candidate):
            versions.append((int(candidate.parent.name), candidate))
    if versions:
        return max(versions)[1]
    on_path = shutil.which("initdb")
    if on_path and _has_server(Path(on_path).parent):
        return Path(on_path).parent
    raise PostgresNotFoundError(
        "PostgreSQL server binaries (initdb, postgres, pg_isready) not found in /usr/lib/postgresql/*/bin "
        f"or PATH; install them with `apt-get install postgresql` or set {PG_BIN_ENV} to their directory"
    )


def _as_root() -> bool:
    return os.geteuid() == 0


def _pg_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PG_OS_USER)
    except KeyError:
        raise PostgresNotFoundError(
            f"running as root, but PostgreSQL refuses to run as root and there is no '{PG_OS_USER}' "
            "OS user to run it as; `apt-get install postgresql` creates it"
        ) from None


def _can_traverse(st: os.stat_result, uid: int, gids: set[int]) -> bool:
    # Unix checks exactly one class: owner bits if the owner matches, else group bits, else other.
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in gids:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _check_traversable(path: Path) -> None:
    """Fail early with the offending directory instead of postgres's own opaque permission error."""
    if not _as_root():
        return
    pw = _pg_user()
    gids = set(os.getgrouplist(pw.pw_name, pw.pw_gid))
    for parent in path.absolute().parents:
        if not _can_traverse(parent.stat(), pw.pw_uid, gids):
            raise PermissionError(
                f"the '{PG_OS_USER}' OS user cannot traverse {parent} (mode "
                f"{stat.filemode(parent.stat().st_mode)}), so PostgreSQL cannot reach its data directory "
                f"{path}; put the data directory elsewhere (see make_data_dir()) or `chmod o+x {parent}`"
            )


def _chown_to_pg(path: Path) -> None:
    if _as_root():
        pw = _pg_user()
        os.chown(path, pw.pw_uid, pw.pw_gid)


def make_data_dir(base: Path | None = None) -> Path:
    """Create an empty directory PostgreSQL can own and reach, for a throwaway cluster.

    With no ``base`` it goes under the system temp dir (world-traversable), which is what tests want
    as root: pytest's own tmp_path sits below a 0700 directory the postgres user cannot enter. The
    caller removes it (``shutil.rmtree``) when done.
    """
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="escalation-pg-", dir=base))
    _check_traversable(path)
    _chown_to_pg(path)
    return path


class EmbeddedPostgres:
    """One PostgreSQL cluster in ``data_dir``, run as a foreground child of this process.

    ``fast=True`` trades durability for speed (fsync, synchronous_commit and full_page_writes off): use
    it for throwaway test clusters only, never for the dev runner's persistent data.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int,
        host: str = "127.0.0.1",
        log_path: Path | None = None,
        *,
        fast: bool = False,
        bin_dir: Path | None = None,
    ) -> None:
        self.data_dir = data_dir.absolute()
        self.port = port
        self.host = host
        self.log_path = (log_path or self.data_dir.with_name(self.data_dir.name + ".log")).absolute()
        self.fast = fast
        self._bin_dir = bin_dir
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp_socket_dir: Path | None = None

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = find_pg_bin()
        return self._bin_dir

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def dsn(self, database: str = "postgres") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"postgresql://{_SUPERUSER}@{host}:{self.port}/{database}"

    @property
    def _user(self) -> str | None:
        return PG_OS_USER if _as_root() else None

    def init(self) -> None:
        """Create the cluster if missing, then (re)write our settings so a changed ``fast`` applies."""
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        conf = self.data_dir / "postgresql.conf"
        text = conf.read_text()
        if _INCLUDE_LINE not in text:
            conf.write_text(f"{text.rstrip()}\n\n# escalation dev/test settings\n{_INCLUDE_LINE}\n")
        lines = [
            "# Written by escalation.devenv on every start; edits are overwritten.",
            f"listen_addresses = '{self.host}'",
            "max_connections = 300",
        ]
        if self.fast:
            lines += ["fsync = off", "synchronous_commit = off", "full_page_writes = off"]
        ours = self.data_dir / _CONF_NAME
        ours.write_text("\n".join(lines) + "\n")
        _chown_to_pg(ours)

    def _initdb(self) -> None:
        if _as_root():
            _pg_user()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        _check_traversable(self.data_dir)
        if any(self.data_dir.iterdir()):
            raise StartupError(f"{self.data_dir} is not empty but holds no PostgreSQL cluster (PG_VERSION)")
        self.data_dir.chmod(0o700)
        _chown_to_pg(self.data_dir)
        argv = [
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "-U",
            _SUPERUSER,
            "--no-instructions",
        ]
        if self.fast:
            argv.append("--no-sync")
        proc = spawn(argv, log_path=self.log_path, user=self._user)
        if proc.wait() != 0:
            raise StartupError(with_log(f"initdb failed with status {proc.returncode}", self.log_path))

    def _socket_dir(self) -> Path:
        if len(str(self.data_dir / f".s.PGSQL.{self.port}.lock")) <= _MAX_SOCKET_PATH:
            return self.data_dir
        self._tmp_socket_dir = Path(tempfile.mkdtemp(prefix="pgsock-"))
        self._tmp_socket_dir.chmod(0o755)
        _chown_to_pg(self._tmp_socket_dir)
        return self._tmp_socket_dir

    def _clear_stale_pidfile(self) -> None:
        """Remove a postmaster.pid left by a killed run when its pid now belongs to another process.

        PostgreSQL itself ignores a lock file whose pid is dead, but if that pid was reused (common in
        containers), kill(pid, 0) succeeds or gives EPERM and postgres refuses to start.
        """
        pidfile = self.data_dir / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return
        try:
            exe = Path(os.readlink(f"/proc/{pid}/exe")).name
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:
            return  # dead (or not Linux): postgres's own check handles it
        if exe.startswith(("postgres", "postmaster")) and cwd == self.data_dir.resolve():
            raise StartupError(f"PostgreSQL (pid {pid}) is already running on {self.data_dir}; stop it first")
        pidfile.unlink()

    def start(self, timeout: float = 30) -> None:
        """Initialise if needed, start postgres and return once it accepts connections."""
        if self.is_running:
            raise RuntimeError(f"PostgreSQL is already running (pid {self.pid})")
        ensure_free(self.host, self.port, "PostgreSQL", "")
        self.init()
        self._clear_stale_pidfile()
        argv = [
            str(self.bin_dir / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-h",
            self.host,
            "-k",
            str(self._socket_dir()),
        ]
        self._proc = spawn(argv, log_path=self.log_path, user=self._user)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        argv = [
            str(self.bin_dir / "pg_isready"),
            "-q",
            "-h",
            self.host,
            "-p",
            str(self.port),
            "-U",
            _SUPERUSER,
            "-d",
            "postgres",
            "-t",
            "2",
        ]
        while True:
            if self._proc.poll() is not None:
                message = f"postgres exited with status {self._proc.returncode} during startup"
                raise StartupError(with_log(message, self.log_path))
            if subprocess.run(argv, stdin=subprocess.DEVNULL, check=False).returncode == 0:
                return
            if time.monotonic() >= deadline:
                raise StartupError(with_log(f"postgres not accepting connections after {timeout:.0f}s", self.log_path))
            time.sleep(0.05)

    def stop(self, timeout: float = 30, *, immediate: bool = False) -> None:
        """Fast shutdown (SIGINT: roll back sessions, checkpoint), SIGKILL if it hangs.

        ``immediate`` is ``pg_ctl stop -m immediate`` (SIGQUIT: no checkpoint, crash recovery at the
        next start), which fault-injection tests use to crash the server.
        """
        if self._proc is not None:
            stop_process(self._proc, signal.SIGQUIT if immediate else signal.SIGINT, timeout)
            self._proc = None
        if self._tmp_socket_dir is not None:
            shutil.rmtree(self._tmp_socket_dir, ignore_errors=True)
            self._tmp_socket_dir = None

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
