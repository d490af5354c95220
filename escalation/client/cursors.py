"""Where a MerchantClient keeps the cursor of the last event its caller processed (SPEC R8).

The cursor is what ``Hello.last_cursor`` resumes from after a reconnect or a restart, so a store must
never report a cursor the caller did not finish processing. ``FileCursorStore`` survives a crash at any
instant: it writes a temporary file, fsyncs it, renames it over the old one and fsyncs the directory, so
the file holds either the old cursor or the new one, never a torn write.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Protocol

__all__ = ["CursorStore", "FileCursorStore", "MemoryCursorStore"]


class CursorStore(Protocol):
    """Loads and saves one merchant stream's cursor (an int ≥ 0; None: nothing processed yet)."""

    async def load(self) -> int | None: ...

    async def save(self, cursor: int) -> None: ...


class MemoryCursorStore:
    """Keeps the cursor in this process only: a restart starts from live events (and a resync)."""

    def __init__(self, cursor: int | None = None) -> None:
        self.cursor = cursor

    async def load(self) -> int | None:
        return self.cursor

    async def save(self, cursor: int) -> None:
        self.cursor = cursor


class FileCursorStore:
    """Keeps the cursor in a small text file, replaced atomically (temp file + fsync + rename + dir fsync).

    ``path``: the file (its directory must exist). A missing file means no cursor; a file that does not
    hold a decimal integer raises ValueError on ``load`` rather than silently starting over.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    async def load(self) -> int | None:
        return await asyncio.to_thread(self._load)

    async def save(self, cursor: int) -> None:
        if cursor < 0:
            raise ValueError(f"a cursor is never negative, got {cursor}")
        await asyncio.to_thread(self._save, cursor)

    def _load(self) -> int | None:
        try:
            text = self.path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None
        if not text.isdigit():
            raise ValueError(f"{self.path} does not hold a cursor: {text[:40]!r}")
        return int(text)

    def _save(self, cursor: int) -> None:
        directory = self.path.parent
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as out:
                out.write(f"{cursor}\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        # The rename is durable only once the directory entry is on disk.
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
