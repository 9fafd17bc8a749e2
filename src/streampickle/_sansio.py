"""What every engine and driver shares: the chunks a pickler yields, the requests a loader
makes, and the hooks both report through. Nothing here does I/O or knows about async."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "PIECE_SIZE",
    "BufferCallback",
    "Chunk",
    "Peek",
    "Progress",
    "Read",
    "ReadInto",
    "ReadLine",
    "Request",
    "as_chunk",
]

#: What the incremental pickler yields: ``bytes`` (a frame, or a large ``bytes`` payload) or a
#: read-only ``memoryview`` of a large buffer the object graph holds (``bytearray``, ``str``'s
#: UTF-8 form, a ``PickleBuffer``). Neither is ever reused by the engine.
Chunk = bytes | memoryview

#: ``progress(count)``: called with the bytes written or read so far.
Progress = Callable[[int], object]

#: ``pickle``'s *buffer_callback* (protocol 5 out-of-band buffers).
BufferCallback = Callable[[pickle.PickleBuffer], Any] | None

#: The largest piece of a large payload moved at once, everywhere: a write handed to a stream,
#: a receive asked of one, a claimed payload read while its claim is unproven. Some streams
#: allocate the size they are asked for (``socket.recv``) or copy what they cannot send at
#: once (asyncio's selector transports), so this bounds what one piece costs, and other tasks
#: run between pieces.
PIECE_SIZE = 1 << 20


def as_chunk(data: Any) -> Chunk:
    """Normalise what a pickler wrote into a `Chunk` without copying it."""
    if type(data) is bytes:
        return data
    raw = getattr(data, "raw", None)  # PickleBuffer: a flat byte view even if Fortran-ordered
    view = raw() if raw is not None else memoryview(data)
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    return view.toreadonly()


# ---------------------------------------------------------------------------------------------
# The sans-IO loader's requests: what the unpickler asks its driver for.


@dataclass(frozen=True, slots=True)
class Read:
    """Send back up to *size* bytes; fewer only at end of stream. ``Read(0)`` (answered with
    ``b""``) is where a restricted loader, in the middle of checking a long frame, lets an
    async driver give other tasks a turn."""

    size: int


@dataclass(frozen=True, slots=True)
class ReadInto:
    """Fill *buffer* (a writable byte memoryview) and send back the number of bytes written;
    fewer than ``len(buffer)`` only at end of stream."""

    buffer: memoryview


@dataclass(frozen=True, slots=True)
class ReadLine:
    """Send back the bytes up to and including the next ``b"\\n"`` (all that is left at end of
    stream). With a *limit*, the reply may stop after *limit* bytes without reaching the
    newline (the loader then refuses the line): a driver need not buffer a longer one."""

    limit: int | None = None


@dataclass(frozen=True, slots=True)
class Peek:
    """Send back some bytes (at most *size*) that are next in the stream *without consuming
    them*; the unpickler consumes what it used with later `Read` requests. An empty reply means
    the driver has nothing buffered, or end of stream: the unpickler then falls back to `Read`."""

    size: int


Request = Read | ReadInto | ReadLine | Peek
