"""anyio streams: ``ByteSendStream``/``ByteReceiveStream`` (sockets, TLS, process pipes, file
streams), ``BufferedByteReceiveStream``, object streams, and the read-ahead source a
`PickleStream` reads its transport through."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from anyio import EndOfStream
from anyio.abc import AnyByteStream, ByteReceiveStream, ByteSendStream, SocketAttribute
from anyio.streams.buffered import BufferedByteReceiveStream

from .._sansio import Chunk
from ._base import Source, SurplusHolder

__all__ = [
    "AnyioSource",
    "BufferedSource",
    "ByteSendWriter",
    "ObjectSendWriter",
    "TransportSource",
    "socket_attributes",
]


class ByteSendWriter:
    """anyio ``ByteSendStream``: sockets, TLS, process stdin, file streams. Every anyio
    implementation sends a memoryview as it sends ``bytes``."""

    __slots__ = ("stream",)

    def __init__(self, stream: ByteSendStream) -> None:
        self.stream = stream

    async def write(self, data: Chunk) -> None:
        await self.stream.send(data)  # type: ignore[arg-type]  # annotated bytes, takes buffers


class ObjectSendWriter:
    """An object stream (anyio memory object streams, anything else with ``send``): it keeps the
    item it is given, so it gets ``bytes`` (a copy of at most one piece), never a view
    into the caller's buffers."""

    __slots__ = ("stream",)

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    async def write(self, data: Chunk) -> None:
        await self.stream.send(bytes(data))


class AnyioSource(Source):
    """anyio ``ByteReceiveStream`` (sockets, process stdout, ...): read exactly."""

    def __init__(self, stream: ByteReceiveStream) -> None:
        self.stream = stream

    async def receive(self, max_bytes: int) -> bytes:
        try:
            return await self.stream.receive(max_bytes)
        except EndOfStream:
            return b""


class BufferedSource(AnyioSource):
    """anyio ``BufferedByteReceiveStream``: leftovers go back into its buffer."""

    can_unread = True
    stream: BufferedByteReceiveStream

    async def unread(self, data: bytes) -> None:
        # feed_data() appends, so first take out what the stream still buffers (served from
        # its buffer, without I/O) and put it back behind *data*.
        pending = len(self.stream.buffer)
        rest = await self.stream.receive_exactly(pending) if pending else b""
        self.stream.feed_data(data + rest)


class TransportSource(Source):
    """A `PickleStream` reads its transport through this source, its loader always reading
    ahead: leftovers stay in the loader's buffer for the next object, or are taken from it
    (`take_surplus` here) by the next reader of the same stream."""

    can_unread = True

    def __init__(self, stream: AnyByteStream) -> None:
        self.stream = stream
        self._surplus = b""  # an object stream's chunk can be longer than asked for

    async def receive(self, max_bytes: int) -> bytes:
        data = self._surplus
        if not data:
            try:
                if isinstance(self.stream, ByteReceiveStream):
                    data = await self.stream.receive(max_bytes)
                else:
                    data = await self.stream.receive()
            except EndOfStream:
                return b""
        self._surplus = data[max_bytes:]
        return data[:max_bytes]

    async def receive_ahead(self, buffer: bytearray, max_bytes: int) -> int:
        receive_ahead = getattr(self.stream, "receive_ahead", None)
        if not self._surplus and receive_ahead is not None:
            count: int = await receive_ahead(buffer, max_bytes)  # one copy (asyncio streams)
            return count
        return await super().receive_ahead(buffer, max_bytes)

    async def receive_into(self, view: memoryview) -> int:
        receive_into = getattr(self.stream, "receive_into", None)
        if not self._surplus and receive_into is not None:
            count: int = await receive_into(view)  # straight into place
            return count
        return await super().receive_into(view)

    def take_surplus(self) -> bytes:
        data, self._surplus = self._surplus, b""
        if isinstance(self.stream, SurplusHolder):
            data += self.stream.take_surplus()
        return data


def socket_attributes(sock: Any) -> dict[Any, Callable[[], Any]]:
    """anyio's ``SocketAttribute`` values for the socket *sock* (a ``socket.socket``, asyncio's
    ``TransportSocket``, a trio socket; ``None`` gives none), as anyio's own socket streams
    report them: IPv6 addresses as ``(host, port)``, ports only for IP sockets."""
    if sock is None:
        return {}
    attributes: dict[Any, Callable[[], Any]] = {
        SocketAttribute.family: lambda: sock.family,
        SocketAttribute.local_address: lambda: _address(sock.getsockname()),
        SocketAttribute.raw_socket: lambda: sock,
    }
    try:
        peer = sock.getpeername()
    except OSError:  # not connected (any longer)
        peer = None
    if peer is not None:
        attributes[SocketAttribute.remote_address] = lambda: _address(peer)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        attributes[SocketAttribute.local_port] = lambda: sock.getsockname()[1]
        if peer is not None:
            attributes[SocketAttribute.remote_port] = lambda: peer[1]
    return attributes


def _address(address: Any) -> Any:
    # IPv6 addresses come with flow info and scope id, which anyio leaves out.
    if isinstance(address, tuple) and len(address) == 4:
        return address[:2]
    return address
