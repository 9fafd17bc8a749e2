"""Stream adapters: one module per stream family, each holding its reader and writer halves,
and the registry that picks the adapter for a stream.

A kind of stream is one `Kind` in `WRITERS` and/or `SOURCES`: a test of the stream (by type
first; then, for duck types, by the methods it has) and the adapter class that wraps it. The
first entry whose test passes wins, so the order matters: specific types before the duck
types that they would also satisfy.
"""

from __future__ import annotations

import asyncio
import inspect
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from anyio.abc import ByteReceiveStream, ByteSendStream, ObjectReceiveStream, ObjectSendStream
from anyio.streams.buffered import BufferedByteReceiveStream

from ._anyio import AnyioSource, BufferedSource, ByteSendWriter, ObjectSendWriter, TransportSource
from ._asyncio import AsyncioByteStream, DrainWriter, StreamReaderSource
from ._base import Source, Writer
from ._files import AwaitWriter, FileSource
from ._iterables import AsyncReadSource, ChunkSource
from ._trio import SendAllWriter, TrioByteStream, TrioSource
from ._types import AsyncReader, AsyncWriter
from ._websockets import WebSocketByteStream

__all__ = [
    "SOURCES",
    "WRITERS",
    "AsyncReader",
    "AsyncWriter",
    "AsyncioByteStream",
    "Kind",
    "Source",
    "TransportSource",
    "TrioByteStream",
    "WebSocketByteStream",
    "Writer",
    "source_for",
    "underlying",
    "writer_for",
]


@dataclass(frozen=True)
class Kind:
    """A registry entry: streams that *accepts* takes are wrapped in *adapter*. Entries that
    go by the methods a stream has (duck types) test for coroutine methods, so a synchronous
    file or socket, which has methods of the same names, never matches them."""

    accepts: Callable[[Any], bool]
    adapter: Callable[[Any], Any]


def _is(kind: type) -> Callable[[Any], bool]:
    return lambda stream: isinstance(stream, kind)


def _has(*names: str) -> Callable[[Any], bool]:
    return lambda stream: all(hasattr(stream, name) for name in names)


def _all(*tests: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda stream: all(test(stream) for test in tests)


def _async(name: str) -> Callable[[Any], bool]:
    """A stream whose method *name* is a coroutine function: known to be async before it is
    called, so a synchronous look-alike is refused before a byte is written to it."""
    return lambda stream: inspect.iscoroutinefunction(getattr(stream, name, None))


#: Writers, in the order they are tried.
WRITERS: list[Kind] = [
    Kind(_is(ByteSendStream), ByteSendWriter),
    Kind(_is(asyncio.StreamWriter), DrainWriter),
    Kind(_is(ObjectSendStream), ObjectSendWriter),
    Kind(_async("send_all"), SendAllWriter),
    Kind(_all(_has("write"), _async("drain")), DrainWriter),  # StreamWriter-likes, aiohttp
    Kind(_async("write"), AwaitWriter),
    Kind(_async("send"), ObjectSendWriter),
]
#: Sources, in the order they are tried.
SOURCES: list[Kind] = [
    Kind(_is(BufferedByteReceiveStream), BufferedSource),
    Kind(_is(ByteReceiveStream), AnyioSource),
    Kind(_is(asyncio.StreamReader), StreamReaderSource),
    Kind(_is(ObjectReceiveStream), ChunkSource.of_object_stream),
    Kind(_async("receive_some"), TrioSource),
    Kind(_all(_async("read"), _async("seek"), _has("readinto")), FileSource),
    Kind(_async("read"), AsyncReadSource),  # aiohttp StreamReader, fsspec async files
    Kind(_has("__aiter__"), ChunkSource.of_iterable),  # httpx, Starlette, websockets
]

_WRITERS_LOOKED_FOR = (
    "an asyncio.StreamWriter, an anyio ByteSendStream or ObjectSendStream, or an object with "
    "an async send_all(), write() or send() method, or a write() with an async drain()"
)
_SOURCES_LOOKED_FOR = (
    "an asyncio StreamReader, an anyio ByteReceiveStream or ObjectReceiveStream of bytes, a "
    "trio ReceiveStream, an async binary file (aiofiles, anyio.open_file), an object with an "
    "async read(n), or an async iterable of bytes-like chunks"
)


def writer_for(stream: object) -> Writer:
    """The adapter that writes to *stream* (the first `WRITERS` entry that accepts it).

    Raises ``TypeError`` for a synchronous file (use `streampickle.dump`) or an object with none
    of the methods looked for.
    """
    found = _lookup(WRITERS, stream)
    if found is not None:
        adapter: Writer = found(stream)
        return adapter
    kind = type(stream).__name__
    if isinstance(stream, io.IOBase):
        raise TypeError(
            f"{kind} is a synchronous file; use streampickle.dump() for it, "
            f"or give adump {_WRITERS_LOOKED_FOR}"
        )
    for name in ("write", "send_all", "send"):
        if callable(getattr(stream, name, None)):
            raise TypeError(
                f"{kind}.{name}() is not a coroutine function (and {kind} has no drain()): "
                "it looks synchronous; use streampickle.dump() for a synchronous file, or "
                f"give adump {_WRITERS_LOOKED_FOR}"
            )
    raise TypeError(f"cannot write to {type(stream).__name__}: adump needs {_WRITERS_LOOKED_FOR}")


def source_for(reader: object) -> Source:
    """The `Source` for *reader* (the first `SOURCES` entry that accepts it).

    Raises ``TypeError`` for a synchronous file (use `streampickle.load`) or anything else.
    """
    found = _lookup(SOURCES, reader)
    if found is not None:
        source: Source = found(reader)
        return source
    if isinstance(reader, io.IOBase):
        raise TypeError(
            f"{type(reader).__name__} is a synchronous file; use streampickle.load() for it, "
            f"or give aload {_SOURCES_LOOKED_FOR}"
        )
    raise TypeError(f"cannot read from {type(reader).__name__}: aload needs {_SOURCES_LOOKED_FOR}")


def _lookup(kinds: list[Kind], stream: object) -> Any:
    """The adapter of the first entry that accepts *stream*, or None."""
    for kind in kinds:
        if kind.accepts(stream):
            return kind.adapter
    return None


def underlying(transport: object, role: str) -> object:
    """The user's stream object under a `PickleStream`'s *transport* for *role* (``"aload"``:
    reading, ``"adump"``: writing): the one ``aload``/``adump`` take, whose ownership state
    (`streampickle._ownership`) every `PickleStream` over it shares with them."""
    if isinstance(transport, AsyncioByteStream):
        return transport.reader if role == "aload" else transport.writer
    if isinstance(transport, TrioByteStream):
        return transport.stream
    if isinstance(transport, WebSocketByteStream):
        return transport.connection
    return transport
