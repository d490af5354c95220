"""Entry point: ``python -m tests.bench [--quick]``."""

import os

# The bench forks service processes while its own gRPC client is active; gRPC's fork handlers are
# not needed (every child execs at once) and would only print a warning.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from tests.bench.main import main

if __name__ == "__main__":
    main()
