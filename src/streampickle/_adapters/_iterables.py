"""Streams that hand over chunks of their own size, or an async ``read(n)``: async iterables
of bytes (httpx ``response.aiter_bytes()``/``aiter_raw()``, Starlette ``request.stream()``,
websockets connections), anyio object receive streams of bytes (``MemoryObjectReceiveStream``),
and objects with an async ``read(n)`` (aiohttp's ``StreamReader``: client ``resp.content``,
server ``request.content``; fsspec async files)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from anyio import EndOfStream
from anyio.abc import ObjectReceiveStream

from ._base import Source

__all__ = ["AsyncReadSource", "ChunkSource"]


def _as_bytes(chunk: Any, stream: object) -> bytes:
    if type(chunk) is bytes:
        return chunk
    if isinstance(chunk, str):
        raise TypeError(
            f"{type(stream).__name__} gave a str (a websocket text message?): pickles are "
            "bytes; send them as binary messages"
        )
    try:
        return bytes(memoryview(chunk))
    except TypeError:
        raise TypeError(
            f"{type(stream).__name__} gave a {type(chunk).__name__}, not a bytes-like chunk"
        ) from None


class ChunkSource(Source):
    """A stream of chunks: each receive takes up to what is asked from the current chunk; the
    rest of a chunk stays here (`take_surplus`) for the next receive, and for the next load of the
    stream once this one ends (the driver keeps it)."""

    def __init__(self, stream: Any, next_chunk: Callable[[], Awaitable[Any]]) -> None:
        """*next_chunk* returns the next chunk, or None at the end of the stream."""
        self.stream = stream
        self._next = next_chunk
        self._chunk = b""  # the current chunk; bytes before _pos were handed out
        self._pos = 0

    @classmethod
    def of_iterable(cls, stream: Any) -> ChunkSource:
        """For an async iterable of chunks (its end is the end of the stream)."""
        iterator: AsyncIterator[Any] = stream.__aiter__()

        async def next_chunk() -> Any:
            try:
                return await iterator.__anext__()
            except StopAsyncIteration:
                return None

        return cls(stream, next_chunk)

    @classmethod
    def of_object_stream(cls, stream: ObjectReceiveStream[Any]) -> ChunkSource:
        """For an anyio object receive stream of bytes (``EndOfStream`` is the end)."""

        async def next_chunk() -> Any:
            try:
                return await stream.receive()
            except EndOfStream:
                return None

        return cls(stream, next_chunk)

    async def receive(self, max_bytes: int) -> bytes:
        while self._pos == len(self._chunk):  # empty chunks (an empty message) carry nothing
            chunk = await self._next()
            if chunk is None:
                return b""
            self._chunk, self._pos = _as_bytes(chunk, self.stream), 0
        start, chunk = self._pos, self._chunk
        if start == 0 and max_bytes >= len(chunk):
            self._pos = len(chunk)
            return chunk  # the whole chunk, uncopied
        self._pos = min(start + max_bytes, len(chunk))
        return chunk[start : self._pos]  # a copy of what is asked only, not of the rest

    def take_surplus(self) -> bytes:
        data = self._chunk[self._pos :]
        self._chunk, self._pos = b"", 0
        return data


class AsyncReadSource(Source):
    """An async ``read(n)`` that returns at most *n* bytes, ``b""`` at the end."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    async def receive(self, max_bytes: int) -> bytes:
        return _as_bytes(await self.stream.read(max_bytes), self.stream)
