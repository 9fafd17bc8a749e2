"""The stream kinds of the registry, as static types: `AsyncWriter` (what `adump` writes to)
and `AsyncReader` (what `aload`/`aiter_load` read from).

Each is a union of the nominal stream types and of protocols for the duck-typed kinds, so that
``mypy --strict`` accepts every kind the registry takes and rejects what it refuses at run time:
a synchronous file (its ``write``/``read`` return a value, not an awaitable), a reader given
for a writer, a writer for a reader. The registry in ``__init__`` decides at run time; these
only describe it, and test_typing.py holds the two in step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable
from typing import Protocol, TypeAlias

from anyio.abc import ByteReceiveStream, ByteSendStream, ObjectReceiveStream, ObjectSendStream

__all__ = ["AsyncReader", "AsyncWriter"]


class _SendAll(Protocol):
    """A trio ``SendStream`` (``trio.SocketStream``, ``trio.SSLStream``...)."""

    def send_all(self, data: bytes, /) -> Awaitable[object]: ...


class _AsyncWrite(Protocol):
    """An async ``write`` (aiofiles and anyio binary files, aiohttp ``StreamResponse``,
    fsspec async files)."""

    def write(self, data: bytes, /) -> Awaitable[object]: ...


class _WriteDrain(Protocol):
    """A ``write`` with an async ``drain`` (asyncio ``StreamWriter`` look-alikes)."""

    def write(self, data: bytes, /) -> object: ...

    def drain(self) -> Awaitable[object]: ...


class _AsyncSend(Protocol):
    """An async ``send`` of one message (a websockets connection)."""

    def send(self, message: bytes, /) -> Awaitable[object]: ...


class _ReceiveSome(Protocol):
    """A trio ``ReceiveStream``."""

    def receive_some(self, max_bytes: int, /) -> Awaitable[bytes | bytearray]: ...


class _AsyncRead(Protocol):
    """An async ``read(n)`` (aiofiles and anyio binary files, aiohttp's ``StreamReader``,
    fsspec async files)."""

    def read(self, size: int, /) -> Awaitable[bytes]: ...


#: What `adump` writes to.
AsyncWriter: TypeAlias = (
    asyncio.StreamWriter
    | ByteSendStream
    | ObjectSendStream[bytes]
    | _SendAll
    | _WriteDrain
    | _AsyncWrite
    | _AsyncSend
)


class _WebSocket(Protocol):
    """A websockets connection: an async iterable of messages, text or binary (a text
    message is refused at run time: pickles are bytes)."""

    def recv(self) -> Awaitable[str | bytes]: ...

    def __aiter__(self) -> AsyncIterator[str | bytes]: ...


#: What `aload` and `aiter_load` read from.
AsyncReader: TypeAlias = (
    asyncio.StreamReader
    | ByteReceiveStream
    | ObjectReceiveStream[bytes]
    | _ReceiveSome
    | _AsyncRead
    | AsyncIterable[bytes | bytearray | memoryview]
    | _WebSocket
)
