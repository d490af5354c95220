"""Real PostgreSQL and a Kafka-protocol broker as child processes, for ``make run`` and the tests.

Everything here is synchronous (startup blocks until the service answers a real client request), so the
same calls serve a plain supervisor and pytest fixtures, sync or async.
"""

from escalation.devenv.broker import EmbeddedBroker, TansuNotFoundError, find_tansu_bin
from escalation.devenv.ports import PortInUseError, ensure_free, free_port, wait_for_port
from escalation.devenv.postgres import EmbeddedPostgres, PostgresNotFoundError, find_pg_bin, make_data_dir
from escalation.devenv.process import StartupError

__all__ = [
    "EmbeddedBroker",
    "EmbeddedPostgres",
    "PortInUseError",
    "PostgresNotFoundError",
    "StartupError",
    "TansuNotFoundError",
    "ensure_free",
    "find_pg_bin",
    "find_tansu_bin",
    "free_port",
    "make_data_dir",
    "wait_for_port",
]
