"""trio streams: ``SendStream`` (``send_all``), ``ReceiveStream`` (``receive_some``), and an
anyio ``ByteStream`` over a trio ``Stream`` for `PickleStream`. trio is imported only when a
trio stream is used."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from anyio import BrokenResourceError, ClosedResourceError, EndOfStream
from anyio.abc import ByteStream

from .._sansio import Chunk
from ._anyio import socket_attributes
from ._base import Source

__all__ = ["SendAllWriter", "TrioByteStream", "TrioSource"]


class SendAllWriter:
    """trio ``SendStream`` (``send_all``), whose contract accepts any bytes-like object."""

    __slots__ = ("stream",)

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    async def write(self, data: Chunk) -> None:
        await self.stream.send_all(data)


class TrioSource(Source):
    """trio ``ReceiveStream``: ``receive_some(n)`` returns at most *n*: read exactly."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    async def receive(self, max_bytes: int) -> bytes:
        data: bytes = await self.stream.receive_some(max_bytes)
        return data


@dataclass(eq=False)
class TrioByteStream(ByteStream):
    """An anyio ``ByteStream`` over a trio ``Stream``; trio's resource errors become anyio's."""

    stream: Any

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        """The ``SocketAttribute`` s of the socket under the stream: a ``trio.SocketStream``'s,
        or that of the transport under wrappers such as ``trio.SSLStream`` (none for memory
        streams)."""
        inner = self.stream
        while inner is not None and not hasattr(inner, "socket"):
            inner = getattr(inner, "transport_stream", None)
        return socket_attributes(None if inner is None else inner.socket)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        import trio

        try:
            data: bytes = await self.stream.receive_some(max_bytes)
        except trio.ClosedResourceError as exc:
            raise ClosedResourceError from exc
        except trio.BrokenResourceError as exc:
            raise BrokenResourceError from exc
        if not data:
            raise EndOfStream
        return data

    async def send(self, item: bytes) -> None:
        import trio

        try:
            await self.stream.send_all(item)
        except trio.ClosedResourceError as exc:
            raise ClosedResourceError from exc
        except trio.BrokenResourceError as exc:
            raise BrokenResourceError from exc

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()
