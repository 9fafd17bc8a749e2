"""Async writing: `adump` streams a pickle into any async byte stream.

The engine (`iter_dumps` / `Pickler.iter_dump`) yields chunks synchronously; this module moves
them into a stream. Each kind of stream gets one small adapter with a single ``write`` coroutine:
backpressure comes from awaiting the stream, fairness from a checkpoint after every write, and
bounded memory from never holding more than one chunk (large chunks are cut into memoryview
slices of at most `MAX_WRITE` bytes, never copied whole).
"""

from __future__ import annotations

import asyncio
import inspect
import io
import pickle
from collections.abc import Callable, Generator, Iterator
from typing import Any, Protocol

import anyio.lowlevel
from anyio.abc import ByteSendStream, ObjectSendStream

from ._engine import Chunk
from ._pickler import BufferCallback, iter_dumps

__all__ = ["MAX_WRITE", "adump"]

#: The largest single write `adump` hands a stream. Bigger chunks (large buffers pickled out of
#: band of the frames) are cut into memoryview slices of this size, so a transport that copies
#: what it cannot send at once (asyncio's selector transports) buffers at most this much extra,
#: and other tasks run between slices.
MAX_WRITE = 1 << 20

Progress = Callable[[int], object]


class _Writer(Protocol):
    async def write(self, data: Chunk, /) -> None: ...


class _DrainWriter:
    """asyncio ``StreamWriter`` (and look-alikes): ``write`` buffers in the transport, ``drain``
    waits while it is paused. Transports accept memoryviews."""

    __slots__ = ("stream",)

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    async def write(self, data: Chunk) -> None:
        self.stream.write(data)
        await self.stream.drain()


class _SendAllWriter:
    """trio ``SendStream`` (``send_all``), whose contract accepts any bytes-like object."""

    __slots__ = ("stream",)

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    async def write(self, data: Chunk) -> None:
        await self.stream.send_all(data)


class _ByteSendWriter:
    """anyio ``ByteSendStream``: sockets, TLS, process stdin, file streams. Every anyio
    implementation sends a memoryview as it sends ``bytes``."""

    __slots__ = ("stream",)

    def __init__(self, stream: ByteSendStream) -> None:
        self.stream = stream

    async def write(self, data: Chunk) -> None:
        await self.stream.send(data)  # type: ignore[arg-type]  # annotated bytes, takes buffers


class _ObjectSendWriter:
    """An object stream (anyio memory object streams, anything else with ``send``): it keeps the
    item it is given, so it gets ``bytes`` (a copy of at most `MAX_WRITE` bytes), never a view
    into the caller's buffers."""

    __slots__ = ("stream",)

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    async def write(self, data: Chunk) -> None:
        await self.stream.send(bytes(data))


class _AwaitWriter:
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


_LOOKED_FOR = (
    "an asyncio.StreamWriter, an anyio ByteSendStream or ObjectSendStream, or an object with "
    "an awaitable send_all(), write() (optionally with drain()) or send() method"
)


def writer_for(stream: object) -> _Writer:
    """The adapter that writes to *stream*: by type first, then by the methods it has.

    Raises ``TypeError`` for a synchronous file (use `streampickle.dump`) or an object with none
    of the methods looked for.
    """
    if isinstance(stream, ByteSendStream):
        return _ByteSendWriter(stream)
    if isinstance(stream, asyncio.StreamWriter):
        return _DrainWriter(stream)
    if isinstance(stream, ObjectSendStream):
        return _ObjectSendWriter(stream)
    if isinstance(stream, io.IOBase):
        raise TypeError(
            f"{type(stream).__name__} is a synchronous file; use streampickle.dump() for it, "
            f"or give adump {_LOOKED_FOR}"
        )
    if hasattr(stream, "send_all"):
        return _SendAllWriter(stream)
    if hasattr(stream, "write"):
        return _DrainWriter(stream) if hasattr(stream, "drain") else _AwaitWriter(stream)
    if hasattr(stream, "send"):
        return _ObjectSendWriter(stream)
    raise TypeError(f"cannot write to {type(stream).__name__}: adump needs {_LOOKED_FOR}")


def _slices(chunk: Chunk) -> Iterator[Chunk]:
    """*chunk* itself, or memoryview slices of it of at most `MAX_WRITE` bytes (no copy)."""
    if len(chunk) <= MAX_WRITE:
        yield chunk
        return
    view = memoryview(chunk)
    for start in range(0, len(view), MAX_WRITE):
        yield view[start : start + MAX_WRITE]


async def write_chunks(
    chunks: Generator[Chunk, None, None], stream: object, progress: Progress | None = None
) -> int:
    """Write the engine's *chunks* to *stream*; return the number of bytes written.

    The stream is checked (``TypeError``, see `writer_for`) before the first chunk is pickled.
    *chunks* is always closed on exit, so an error or a cancellation unwinds the pickler.
    """
    written = 0
    try:
        writer = writer_for(stream)
        for chunk in chunks:  # pickling runs here, synchronously: at most about one frame
            for piece in _slices(chunk):
                await writer.write(piece)
                written += len(piece)
                if progress is not None:
                    progress(written)
                # drain() returns without yielding while the transport is not paused, and
                # some streams never yield: the checkpoint lets other tasks run between writes.
                await anyio.lowlevel.checkpoint()
    finally:
        chunks.close()
    return written


async def adump(
    obj: Any,
    writer: object,
    protocol: int | None = None,
    *,
    fix_imports: bool = True,
    buffer_callback: BufferCallback = None,
    pickler_class: Callable[..., pickle.Pickler] | None = None,
    progress: Progress | None = None,
) -> int:
    """Pickle *obj* into the async byte stream *writer*, frame by frame; return the byte count.

    The bytes written are exactly ``pickle.dumps(obj, protocol, fix_imports=fix_imports,
    buffer_callback=buffer_callback)``. *writer* is an asyncio ``StreamWriter`` (``write`` then
    ``await drain()``), an anyio ``ByteSendStream`` (``send``), a trio ``SendStream``
    (``send_all``), an aiofiles binary file or anyio ``AsyncFile`` (awaitable ``write``), or an
    object stream / anything else with an awaitable ``send`` (which then gets ``bytes``).
    Anything else raises ``TypeError`` before pickling starts. *pickler_class* is any
    ``pickle.Pickler`` subclass (see `iter_dumps`); ``progress(bytes_written)`` is called
    after each write.

    Streaming needs frames: at protocols 4 and 5 each write is one frame (about 64 KiB) or a
    slice of at most `MAX_WRITE` bytes of a large buffer, passed as a memoryview without a
    copy. At protocols 0-3 there are no frames: the C pickler writes what it has only at the
    end (and when it meets a large ``bytes`` at protocols 1-3), so the loop is blocked for the
    whole pickling and memory holds the whole pickle. At 4 and 5, pickling runs synchronously
    between writes: the event loop is blocked for at most about one frame's worth of pickling.
    Each write is awaited (the stream's backpressure suspends pickling) and followed by a
    checkpoint, so other tasks run even on a stream that never pushes back. The pickled
    buffers must not be mutated until ``adump`` returns; a transport may hold views of them
    until it has flushed (asyncio selector transports do on Python 3.12+), so close the
    writer first if you mean to mutate them.

    Errors: pickling errors (``PicklingError``, ``TypeError``, ``RecursionError``, ...) are the
    ones ``pickle.dump`` raises, from the object that caused them; the stream's errors
    (``ConnectionResetError``, ``BrokenPipeError``, anyio/trio ``BrokenResourceError``, ...)
    and cancellation propagate unchanged. In every such case the pickler is unwound before the
    exception leaves ``adump``, and the stream holds a *partial pickle*: a prefix of the bytes
    above, ending after the last complete frame on a pickling error, possibly mid-frame on a
    stream error or a cancellation. It is not loadable; close the stream or treat it as broken.
    """
    chunks = iter_dumps(
        obj,
        protocol,
        fix_imports=fix_imports,
        buffer_callback=buffer_callback,
        pickler_class=pickle.Pickler if pickler_class is None else pickler_class,
    )
    return await write_chunks(chunks, writer, progress)
