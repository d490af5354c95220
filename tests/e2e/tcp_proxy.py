"""A TCP proxy for tests that lose a connection at a chosen instant: hold the server's answers, then cut.

``hold_answers()`` stops forwarding server → client bytes (they are dropped with the connection later);
``cut()`` closes every proxied connection at once and forwards normally again; ``refusing = True``
closes every new connection at once (a server that is down). So a test can let a
request reach the server, see it committed, and make the client lose the answer on the way back.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType


class TcpProxy:
    """Listens on 127.0.0.1:<free port> (``addr``) and forwards to ``upstream`` (host:port)."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.rpartition(":")
        self._upstream = (host, int(port))
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._holding = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections = 0
        self.refusing = False
        self.addr = ""

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.addr = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def hold_answers(self) -> None:
        self._holding = True

    def cut(self) -> None:
        self._holding = False
        for writer in list(self._writers):
            writer.transport.abort()  # an RST, as a dropped connection looks to the peers
        self._writers.clear()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            client_writer.transport.abort()
            return
        self.connections += 1
        server_reader, server_writer = await asyncio.open_connection(*self._upstream)
        self._writers.update((client_writer, server_writer))
        up = asyncio.create_task(self._pump(client_reader, server_writer, answers=False))
        down = asyncio.create_task(self._pump(server_reader, client_writer, answers=True))
        self._tasks.update((up, down))
        with contextlib.suppress(Exception):
            await asyncio.gather(up, down)
        self._tasks.difference_update((up, down))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, answers: bool) -> None:
        try:
            while data := await reader.read(65536):
                if answers and self._holding:
                    continue
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()
