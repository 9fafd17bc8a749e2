"""asyncio streams: ``StreamWriter`` and ``StreamReader`` (also uvloop's), and an anyio
``ByteStream`` over the pair for `PickleStream`."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from anyio import BrokenResourceError, EndOfStream
from anyio.abc import ByteStream

from .._sansio import Chunk
from ._anyio import socket_attributes
from ._base import Source

__all__ = ["DIRECT_MIN", "MAX_DIRECT", "AsyncioByteStream", "DrainWriter", "StreamReaderSource"]

#: Payload pieces of at least this many bytes are received from an asyncio ``StreamReader``'s
#: transport straight into their buffer, at most `MAX_DIRECT` at a time (progress is reported
#: after each piece).
DIRECT_MIN = 1 << 18
MAX_DIRECT = 1 << 24
#: What `_DirectReceive` hands out for bytes that arrive once its view is full.
_SPILL = 1 << 16


class DrainWriter:
    """asyncio ``StreamWriter`` (and look-alikes): ``write`` buffers in the transport, ``drain``
    waits while it is paused. Transports accept memoryviews. A look-alike whose ``write``
    returns an awaitable (aiohttp's ``StreamResponse``, whose ``drain`` is deprecated) has
    that awaited instead: it is the write."""

    __slots__ = ("stream",)

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    async def write(self, data: Chunk) -> None:
        pending = self.stream.write(data)
        if inspect.isawaitable(pending):
            await pending
        else:
            await self.stream.drain()


class StreamReaderSource(Source):
    """asyncio ``StreamReader`` (also uvloop's connections).

    Its public API can neither look at nor give back buffered bytes, and ``read(n)`` copies
    every piece into new objects: on 1 GB of arrays, ``read`` in pieces made glibc hand the
    churned 256 KiB blocks back and fault them in again (~2.5 GB of page faults), and `aload`
    was slower than ``readexactly`` + ``pickle.loads``. So where the reader has the internals
    CPython 3.10-3.13 give it (``_buffer``, the bytearray ``read`` consumes; ``_wait_for_data``;
    ``_maybe_resume_transport``; ``_transport``), this source works as ``read`` does, on them:

    * leftovers go back to the front of ``_buffer`` (``can_unread``: the loader may read ahead);
    * a large payload is received straight into its final buffer: while it arrives the
      transport's protocol is a `_DirectReceive` (a public ``BufferedProtocol``, which asyncio,
      its SSL transport and uvloop all ``recv_into``), then the reader's protocol is back.

    Otherwise the reader is read exactly through the public API (``read(n)`` returns at most
    *n*, without waiting when buffered).
    """

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.can_unread = _has_internals(reader)

    async def receive(self, max_bytes: int) -> bytes:
        return await self.reader.read(max_bytes)

    async def receive_into(self, view: memoryview) -> int:
        if not self.can_unread:
            return await super().receive_into(view)
        reader: Any = self.reader
        if (exception := reader.exception()) is not None:
            raise exception
        if not reader._buffer and not reader.at_eof():
            transport = self._transport() if len(view) >= DIRECT_MIN else None
            if transport is not None:
                return await self._receive_direct(transport, view[:MAX_DIRECT])
            await reader._wait_for_data("readinto")
        buffer: bytearray = reader._buffer
        count = min(len(buffer), len(view))
        with memoryview(buffer) as data:
            view[:count] = data[:count]
        del buffer[:count]
        reader._maybe_resume_transport()
        return count

    async def receive_ahead(self, buffer: bytearray, max_bytes: int) -> int:
        if not self.can_unread:
            return await super().receive_ahead(buffer, max_bytes)
        reader: Any = self.reader
        if (exception := reader.exception()) is not None:
            raise exception
        if not reader._buffer and not reader.at_eof():
            await reader._wait_for_data("read")
        pending: bytearray = reader._buffer
        count = min(len(pending), max_bytes)
        with memoryview(pending) as data:
            buffer += data[:count]  # one copy, where read() copies out and the caller again
        del pending[:count]
        reader._maybe_resume_transport()
        return count

    def _transport(self) -> asyncio.BaseTransport | None:
        """The reader's transport, if it feeds the reader through a ``StreamReaderProtocol``
        (a ``StreamReader`` fed by hand has none; a subprocess pipe another protocol)."""
        transport: Any = getattr(self.reader, "_transport", None)
        # Duck-typed: uvloop's transports do not derive from asyncio's classes.
        if not callable(getattr(transport, "set_protocol", None)):
            return None
        protocol = transport.get_protocol()
        feeds_reader = getattr(protocol, "_stream_reader", None) is self.reader
        if isinstance(protocol, asyncio.StreamReaderProtocol) and feeds_reader:
            return transport  # type: ignore[no-any-return]
        return None

    async def _receive_direct(self, transport: asyncio.BaseTransport, view: memoryview) -> int:
        reader: Any = self.reader
        reader._maybe_resume_transport()  # its buffer is empty: it may have paused reading
        direct = _DirectReceive(transport, view)
        try:
            await direct.done
        finally:
            direct.restore()
        if not direct.count and (exception := reader.exception()) is not None:
            raise exception
        return direct.count

    async def unread(self, data: bytes) -> None:
        buffer: bytearray = self.reader._buffer  # type: ignore[attr-defined]
        buffer[:0] = data

    async def receive_line(self, limit: int | None) -> bytes:
        # readuntil() stops at the newline; past the reader's own ``limit`` it leaves the
        # bytes buffered and says how many can be taken, so long lines work on small limits.
        line = b""
        while limit is None or len(line) < limit:
            try:
                rest = await self.reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:  # end of stream
                rest = exc.partial
            except asyncio.LimitOverrunError as exc:
                take = max(exc.consumed, 1)
                line += await self.reader.read(
                    take if limit is None else min(take, limit - len(line))
                )
                continue
            return line + rest
        return line


def _has_internals(reader: asyncio.StreamReader) -> bool:
    """Whether *reader* has the internals `StreamReaderSource` uses (CPython 3.10-3.13's)."""
    return (
        type(getattr(reader, "_buffer", None)) is bytearray
        and callable(getattr(reader, "_wait_for_data", None))
        and callable(getattr(reader, "_maybe_resume_transport", None))
    )


class _DirectReceive(asyncio.BufferedProtocol):
    """Stands in for a ``StreamReader``'s protocol while the transport fills *view*, then
    puts it back (`restore`): at once when *view* is full, at end of stream, or when the
    connection is lost, handing those on to it. ``done`` is then set. Bytes that still reach
    it once *view* is full go on to the reader: a transport may finish the chunk it has with
    the protocol it began with (3.10's SSL transport does)."""

    def __init__(self, transport: asyncio.BaseTransport, view: memoryview) -> None:
        self.transport, self.view = transport, view
        self.protocol: Any = transport.get_protocol()
        self.count = 0
        self.done = asyncio.get_running_loop().create_future()
        self._spill: bytearray | None = None  # handed out by get_buffer once view is full
        transport.set_protocol(self)

    def restore(self) -> None:
        if self.transport.get_protocol() is self:
            self.transport.set_protocol(self.protocol)
        if not self.done.done():
            self.done.set_result(None)

    def get_buffer(self, sizehint: int) -> memoryview | bytearray:
        if self.count < len(self.view):
            return self.view[self.count :]
        self._spill = bytearray(sizehint if sizehint > 0 else _SPILL)
        return self._spill

    def buffer_updated(self, nbytes: int) -> None:
        if self._spill is not None:
            data, self._spill = bytes(self._spill[:nbytes]), None
            self.protocol.data_received(data)
            return
        self.count += nbytes
        if self.count == len(self.view):
            self.restore()

    def data_received(self, data: bytes) -> None:
        """For transports that do not use ``get_buffer`` (pipes): the rest of *data*, past the
        end of *view*, goes to the reader."""
        take = min(len(data), len(self.view) - self.count)
        self.view[self.count : self.count + take] = data[:take]
        if take:
            self.buffer_updated(take)
        if take < len(data):
            self.protocol.data_received(data[take:])

    def eof_received(self) -> bool | None:
        self.restore()
        keep_open: bool | None = self.protocol.eof_received()
        return keep_open

    def connection_lost(self, exc: Exception | None) -> None:
        self.restore()
        self.protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        self.protocol.pause_writing()

    def resume_writing(self) -> None:
        self.protocol.resume_writing()


@dataclass(eq=False)
class AsyncioByteStream(ByteStream):
    """An anyio ``ByteStream`` over an asyncio ``StreamReader``/``StreamWriter`` pair."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    _source: StreamReaderSource = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._source = StreamReaderSource(self.reader)

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        """The ``SocketAttribute`` s of the writer's socket (none for a pipe)."""
        return socket_attributes(self.writer.get_extra_info("socket"))

    async def receive(self, max_bytes: int = 65536) -> bytes:
        data = await self.reader.read(max_bytes)
        if not data:
            raise EndOfStream
        return data

    async def receive_ahead(self, buffer: bytearray, max_bytes: int) -> int:
        """Append at most *max_bytes* to *buffer* (0 at end of stream), copied once from the
        reader's buffer as `StreamReaderSource` does for `aload`."""
        return await self._source.receive_ahead(buffer, max_bytes)

    async def receive_into(self, view: memoryview) -> int:
        """Fill a prefix of *view* (0 at end of stream): a large payload is received by the
        transport straight into place, as `StreamReaderSource` does for `aload`."""
        return await self._source.receive_into(view)

    async def send(self, item: bytes) -> None:
        if self.writer.is_closing():
            raise BrokenResourceError("the asyncio transport is closing")
        self.writer.write(item)
        await self.writer.drain()

    async def send_eof(self) -> None:
        self.writer.write_eof()

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):  # a reset connection is closed all the same
            await self.writer.wait_closed()
