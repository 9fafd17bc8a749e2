"""websockets connections (the ``websockets`` library's asyncio API): an anyio ``ByteStream``
over one, so that a `PickleStream` can run over a websocket. ``aload``/``adump`` need no
wrapper: a connection is an async iterable of messages and has an async ``send``.

Each chunk of a pickle goes as one binary message, and received messages are read as one
stream of bytes: a message carries a chunk, not an object, so pickles of any size fit within
the connection's ``max_size`` per message (chunks are at most about 1 MiB)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from anyio import BrokenResourceError, EndOfStream
from anyio.abc import ByteStream

from ._anyio import socket_attributes
from ._base import SurplusHolder

__all__ = ["WebSocketByteStream"]


@dataclass(eq=False)
class WebSocketByteStream(ByteStream, SurplusHolder):
    """An anyio ``ByteStream`` over a websockets connection: binary messages in, one binary
    message per ``send``. A text message received is a ``TypeError``. The peer closing the
    connection normally is the end of the stream; abnormally, ``BrokenResourceError``. A
    websocket cannot half-close: ``send_eof`` closes the connection."""

    connection: Any
    _surplus: bytes = field(init=False, default=b"", repr=False)

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        transport = getattr(self.connection, "transport", None)
        sock = None if transport is None else transport.get_extra_info("socket")
        return socket_attributes(sock)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK

        while not self._surplus:
            try:
                message = await self.connection.recv()
            except ConnectionClosedOK:
                raise EndOfStream from None
            except ConnectionClosedError as exc:
                raise BrokenResourceError(f"the websocket closed abnormally: {exc}") from exc
            if isinstance(message, str):
                raise TypeError("a websocket text message: pickles travel as binary messages")
            self._surplus = bytes(message)
        data, self._surplus = self._surplus[:max_bytes], self._surplus[max_bytes:]
        return data

    def take_surplus(self) -> bytes:
        """The rest of the last message received, handed over (see `TransportSource`)."""
        data, self._surplus = self._surplus, b""
        return data

    async def send(self, item: bytes) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            await self.connection.send(item)
        except ConnectionClosed as exc:
            raise BrokenResourceError(f"the websocket is closed: {exc}") from exc

    async def send_eof(self) -> None:
        await self.connection.close()

    async def aclose(self) -> None:
        await self.connection.close()
