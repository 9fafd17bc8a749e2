"""Async files: aiofiles binary files and anyio ``AsyncFile`` (an awaitable ``write``; ``read``,
``readinto``, ``seek``), and pipes opened as such files."""

from __future__ import annotations

import inspect
import os
from typing import Any

from .._sansio import Chunk
from ._base import Source

__all__ = ["AwaitWriter", "FileSource"]


class AwaitWriter:
    """An awaitable ``write`` (aiofiles binary files, anyio ``AsyncFile``): file ``write``
    methods take any bytes-like object."""

    __slots__ = ("stream",)

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    async def write(self, data: Chunk) -> None:
        pending = self.stream.write(data)
        if not inspect.isawaitable(pending):
            raise TypeError(
                f"{type(self.stream).__name__}.write() returned "
                f"{type(pending).__name__}, not an awaitable; adump needs an async stream"
            )
        await pending


class FileSource(Source):
    """aiofiles binary files and anyio ``AsyncFile``: a seekable file takes leftovers back by
    seeking; a pipe cannot, so it is read exactly."""

    def __init__(self, file: Any) -> None:
        self.file = file
        # read1() returns what one raw read gives: read(n) on a pipe would wait for all n.
        self._read = getattr(file, "read1", file.read)

    async def prepare(self) -> None:
        try:
            await self.file.seek(0, os.SEEK_CUR)
        except (OSError, ValueError):  # io.UnsupportedOperation is both
            self.can_unread = False
        else:
            self.can_unread = True

    async def receive(self, max_bytes: int) -> bytes:
        data: bytes = await self._read(max_bytes)
        return data

    async def receive_into(self, view: memoryview) -> int:
        count: int = await self.file.readinto(view)
        return count

    async def unread(self, data: bytes) -> None:
        await self.file.seek(-len(data), os.SEEK_CUR)
