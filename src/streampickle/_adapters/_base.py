"""What every stream adapter is: a `Writer` that `adump` writes chunks with, and a `Source`
that the load driver pulls bytes from. Adapters know streams, not pickles."""

from __future__ import annotations

from typing import Protocol

from .._sansio import PIECE_SIZE, Chunk

__all__ = ["Source", "SurplusHolder", "Writer"]


class Writer(Protocol):
    """One kind of stream, as `adump` writes to it: ``write`` awaits until the stream took
    *data* (its backpressure)."""

    async def write(self, data: Chunk, /) -> None: ...


class Source:
    """How the load driver pulls bytes from one kind of stream.

    ``receive`` returns 1 to *max_bytes* bytes, or ``b""`` at end of stream, and never more than
    asked, so exact reads lose nothing. Sources with ``can_unread`` take back what was read
    past a pickle (`unread`), so the driver may read ahead on them.
    """

    can_unread = False

    async def prepare(self) -> None:
        """Called once before the first load (files find out whether they can seek)."""

    async def receive(self, max_bytes: int) -> bytes:
        raise NotImplementedError

    async def receive_ahead(self, buffer: bytearray, max_bytes: int) -> int:
        """Append what one ``receive(max_bytes)`` returns to *buffer*; return its length (0 at
        end of stream). Sources that buffer the stream themselves append in one copy."""
        data = await self.receive(max_bytes)
        buffer += data
        return len(data)

    async def receive_into(self, view: memoryview) -> int:
        """Fill a prefix of *view*; return its length (0 at end of stream). The default
        receives a piece and copies it, so a payload is never held twice whole."""
        data = await self.receive(min(len(view), PIECE_SIZE))
        view[: len(data)] = data
        return len(data)

    async def receive_line(self, limit: int | None) -> bytes:
        """Bytes up to and including ``b"\\n"`` (all that is left at end of stream), without
        reading past it, and at most *limit* of them: one byte per receive, for sources with
        no better way."""
        line = bytearray()
        while not line.endswith(b"\n") and len(line) != limit:
            byte = await self.receive(1)
            if not byte:
                break
            line += byte
        return bytes(line)

    async def unread(self, data: bytes) -> None:
        raise NotImplementedError

    def take_surplus(self) -> bytes:
        """Take the bytes received from the stream but not yet returned (the rest of a chunk
        longer than asked), which the driver keeps for the stream's next load."""
        return b""


class SurplusHolder:
    """A transport adapter that may hold the rest of a chunk it received (a websocket
    message longer than a receive asked for), for whoever reads the stream next."""

    def take_surplus(self) -> bytes:
        raise NotImplementedError
