"""Async reading: `aload` and `aiter_load` drive the sans-IO loader from an async byte stream.

The engine's unpickler asks for bytes with `Read`/`ReadInto`/`ReadLine`/`Peek` requests; a
`Loader` answers them from its own buffer, refilled from one small *source* adapter per kind of
stream. Two facts shape it:

* **Leftovers.** With `Peek` answered from a read-ahead buffer the C unpickler parses straight
  from it (no request per opcode) but the buffer then holds bytes past the pickle's STOP. Only
  sources that can take bytes back (anyio ``BufferedByteReceiveStream``, seekable files, an
  asyncio ``StreamReader`` through its internal buffer, `PickleStream`'s own buffer) ever read
  ahead; the others (plain anyio and trio receive streams, pipes opened as files) are read
  exactly, which never loses a byte.
* **Limits before allocation.** A length header inside read-ahead data is parsed and its
  buffer allocated by the C unpickler before it asks for the payload, so it cannot be checked
  in time. Protocol 4 and 5 pickles (what streaming producers write) therefore get no read-ahead:
  `Peek` is answered empty, the unpickler reads each top-level opcode with ``Read(1)`` and its
  length with ``Read(4|8)``, and a length is checked right there, before the reply lets the
  unpickler allocate. Frames are read whole, so that costs a few requests per 64 KiB frame.
  Protocols 0-3 have no frames and would cost a request per opcode that way, so on sources that
  can take bytes back they get read-ahead; their length claims are then checked when the
  payload is requested (see `aload` for what that leaves open).
"""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import AsyncIterator, Callable, Generator, Iterable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from anyio import EndOfStream
from anyio.abc import ByteReceiveStream
from anyio.streams.buffered import BufferedByteReceiveStream

from ._engine import Peek, Read, ReadInto, Request
from ._pickler import iter_loads
from ._policy import (
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_MAX_LINE_LENGTH,
    DEFAULT_MAX_OBJECT_SIZE,
    AllowSpec,
    Limits,
    RestrictedLimitOptions,
    restricted_options,
)
from ._writers import Progress

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "DEFAULT_MAX_LINE_LENGTH",
    "DEFAULT_MAX_OBJECT_SIZE",
    "Limits",
    "aiter_load",
    "aload",
]


#: Read-ahead per receive, for sources that may read ahead.
READ_AHEAD = 1 << 16
#: The largest single receive: some streams allocate the whole size they are asked for
#: (``socket.recv``), so payloads are received in pieces of at most this much.
MAX_RECEIVE = 1 << 20
#: Payload pieces of at least this many bytes are received from an asyncio ``StreamReader``'s
#: transport straight into their buffer, at most `MAX_DIRECT` at a time (progress is reported
#: after each piece).
DIRECT_MIN = 1 << 18
MAX_DIRECT = 1 << 24

_PROTO = 0x80
# Opcodes followed by a little-endian length: opcode -> (name, width of the length, signed).
# FRAME's length is a frame; the others announce a payload the unpickler allocates or reads.
_FRAME = 0x95
_LENGTH_OPCODES: dict[int, tuple[str, int, bool]] = {
    _FRAME: ("frame", 8, False),
    0x8E: ("BINBYTES8 payload", 8, False),
    0x8D: ("BINUNICODE8 payload", 8, False),
    0x96: ("BYTEARRAY8 payload", 8, False),
    0x42: ("BINBYTES payload", 4, False),
    0x58: ("BINUNICODE payload", 4, False),
    0x54: ("BINSTRING payload", 4, True),
    0x8B: ("LONG4 payload", 4, True),
}


# ---------------------------------------------------------------------------------------------
# Sources: one small adapter per kind of stream.


class Source:
    """How a `Loader` pulls bytes from one kind of stream.

    ``receive`` returns 1 to *max_bytes* bytes, or ``b""`` at end of stream, and never more than
    asked, so exact reads lose nothing. Sources with ``can_unread`` take back what was read
    past a pickle (`unread`), so the loader may read ahead on them.
    """

    can_unread = False

    async def prepare(self) -> None:
        """Called once before the first load (files find out whether they can seek)."""

    async def receive(self, max_bytes: int) -> bytes:
        raise NotImplementedError

    async def receive_into(self, view: memoryview) -> int:
        """Fill a prefix of *view*; return its length (0 at end of stream). The default
        receives a piece and copies it, so a payload is never held twice whole."""
        data = await self.receive(min(len(view), MAX_RECEIVE))
        view[: len(data)] = data
        return len(data)

    async def receive_line(self, limits: Limits) -> bytes:
        """Bytes up to and including ``b"\\n"`` (all that is left at end of stream), without
        reading past it: one byte per receive, for sources with no better way."""
        line = bytearray()
        while not line.endswith(b"\n"):
            limits.check("line", len(line) + 1, "max_line_length")
            byte = await self.receive(1)
            if not byte:
                break
            line += byte
        return bytes(line)

    async def unread(self, data: bytes) -> None:
        raise NotImplementedError


class _StreamReaderSource(Source):
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

    async def receive_line(self, limits: Limits) -> bytes:
        # readuntil() stops at the newline; past the reader's own ``limit`` it leaves the
        # bytes buffered and says how many can be taken, so long lines work on small limits.
        line = b""
        while True:
            try:
                rest = await self.reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:  # end of stream
                rest = exc.partial
            except asyncio.LimitOverrunError as exc:
                limits.check("line", len(line) + exc.consumed + 1, "max_line_length")
                line += await self.reader.read(max(exc.consumed, 1))
                continue
            limits.check("line", len(line) + len(rest), "max_line_length")
            return line + rest


def _has_internals(reader: asyncio.StreamReader) -> bool:
    """Whether *reader* has the internals `_StreamReaderSource` uses (CPython 3.10-3.13's)."""
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
        self._spill = bytearray(sizehint if sizehint > 0 else READ_AHEAD)
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


class _AnyioSource(Source):
    """anyio ``ByteReceiveStream`` (sockets, process stdout, ...): read exactly."""

    def __init__(self, stream: ByteReceiveStream) -> None:
        self.stream = stream

    async def receive(self, max_bytes: int) -> bytes:
        try:
            return await self.stream.receive(max_bytes)
        except EndOfStream:
            return b""


class _BufferedSource(_AnyioSource):
    """anyio ``BufferedByteReceiveStream``: leftovers go back into its buffer."""

    can_unread = True
    stream: BufferedByteReceiveStream

    async def unread(self, data: bytes) -> None:
        # feed_data() appends, so first take out what the stream still buffers (served from
        # its buffer, without I/O) and put it back behind *data*.
        pending = len(self.stream.buffer)
        rest = await self.stream.receive_exactly(pending) if pending else b""
        self.stream.feed_data(data + rest)


class _TrioSource(Source):
    """trio ``ReceiveStream``: ``receive_some(n)`` returns at most *n*: read exactly."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    async def receive(self, max_bytes: int) -> bytes:
        data: bytes = await self.stream.receive_some(max_bytes)
        return data


class _FileSource(Source):
    """aiofiles binary files and anyio ``AsyncFile``: a seekable file takes leftovers back by
    seeking; a pipe cannot, so it is read exactly."""

    def __init__(self, file: Any) -> None:
        self.file = file
        # read1() returns what one raw read gives: read(n) on a pipe would wait for all n.
        self._read = getattr(file, "read1", file.read)

    async def prepare(self) -> None:
        try:
            await self.file.seek(0, os.SEEK_CUR)
        except (OSError, ValueError):  # io.UnsupportedOperation is both
            self.can_unread = False
        else:
            self.can_unread = True

    async def receive(self, max_bytes: int) -> bytes:
        data: bytes = await self._read(max_bytes)
        return data

    async def receive_into(self, view: memoryview) -> int:
        count: int = await self.file.readinto(view)
        return count

    async def unread(self, data: bytes) -> None:
        await self.file.seek(-len(data), os.SEEK_CUR)


_KINDS = (
    "an asyncio StreamReader, an anyio ByteReceiveStream, a trio ReceiveStream, or an async "
    "binary file (aiofiles, anyio.open_file)"
)


def source_for(reader: object) -> Source:
    """The `Source` for *reader*, by type first, then by its methods.

    Raises ``TypeError`` for a synchronous file (use `streampickle.load`) or anything else.
    """
    if isinstance(reader, BufferedByteReceiveStream):
        return _BufferedSource(reader)
    if isinstance(reader, ByteReceiveStream):
        return _AnyioSource(reader)
    if isinstance(reader, asyncio.StreamReader):
        return _StreamReaderSource(reader)
    if isinstance(reader, io.IOBase):
        raise TypeError(
            f"{type(reader).__name__} is a synchronous file; use streampickle.load() for it, "
            f"or give aload {_KINDS}"
        )
    if hasattr(reader, "receive_some"):
        return _TrioSource(reader)
    if all(hasattr(reader, name) for name in ("read", "readinto", "seek")):
        return _FileSource(reader)
    raise TypeError(f"cannot read from {type(reader).__name__}: aload needs {_KINDS}")


# ---------------------------------------------------------------------------------------------
# The driver.


class Loader:
    """Answers a loader's requests from a `Source` through a buffer, enforcing `Limits`.

    One `Loader` serves any number of consecutive pickles; between them its buffer holds what
    was read ahead (see `give_back`). Use it from one task at a time.
    """

    def __init__(self, source: Source, limits: Limits) -> None:
        self.source = source
        self.limits = limits
        self._buffer = bytearray()
        self._pos = 0
        #: Bytes the current pickle has consumed; 0 after an error means none were.
        self.consumed = 0
        self.eof = False
        self._peeking = False
        self._last: int | None = None  # the byte the last Read(1) returned
        self._progress: Progress | None = None
        self._reported = 0  # the last count given to _progress

    @property
    def buffered(self) -> int:
        """Bytes read ahead and not yet consumed."""
        return len(self._buffer) - self._pos

    async def load(
        self, requests: Generator[Request, Any, Any], progress: Progress | None = None
    ) -> Any:
        """Run *requests* to completion and return the object; always closes *requests*.

        ``progress(n)`` is called whenever more of the pickle was read: *n* is the number of
        its bytes read so far (strictly increasing; pieces of a large payload count as read).

        Raises what the unpickler raises (``EOFError`` at end of stream before the first byte,
        ``UnpicklingError``/``EOFError`` for a truncated pickle), `LimitExceeded`, and the
        source's errors.
        """
        self.consumed, self.eof, self._peeking, self._last = 0, False, False, None
        self._progress, self._reported = progress, 0
        reply: Any = None
        try:
            while True:
                request = requests.send(reply)
                # Most requests are answered from the buffer, without a coroutine.
                reply = self._answer_buffered(request)
                if reply is None:
                    reply = await self._answer(request)
        except StopIteration as stop:
            return stop.value
        finally:
            requests.close()

    async def give_back(self) -> None:
        """Hand what was read past the last pickle back to the source."""
        if self.buffered:
            data = bytes(self._buffer[self._pos :])
            self._buffer.clear()
            self._pos = 0
            await self.source.unread(data)

    def _answer_buffered(self, request: Request) -> bytes | int | None:
        if isinstance(request, Peek):
            if not self._peeking:
                return b""
            return self._take(min(request.size, self.buffered), consume=False) or None
        if isinstance(request, Read):
            self._check_object(request.size)
            if self.buffered < request.size:
                return None
            return self._consumed(self._take(request.size))
        if isinstance(request, ReadInto):
            return None
        limit = self.limits.max_line_length
        end = self._buffer.find(b"\n", self._pos, None if limit is None else self._pos + limit)
        if end < 0:
            return None
        return self._consumed(self._take(end + 1 - self._pos), line=True)

    async def _answer(self, request: Request) -> bytes | int:
        if isinstance(request, Peek):
            await self._fill()
            return self._take(min(request.size, self.buffered), consume=False)
        if isinstance(request, Read):
            return self._consumed(await self._read(request.size))
        if isinstance(request, ReadInto):
            return await self._read_into(request.buffer)
        return self._consumed(await self._read_line(), line=True)

    # -- consuming, and the checks that go with it --------------------------------------------

    def _check_object(self, size: int) -> None:
        self.limits.check("pickle", self.consumed + size, "max_object_size")

    def _consumed(self, data: bytes, *, line: bool = False) -> bytes:
        """Account for *data* handed to the unpickler and vet a `Read` reply (see the module
        docstring)."""
        if line:
            self._last = None
        elif not self._peeking:
            if len(data) == 1:
                self._choose_mode(data[0])
                self._last = data[0]
            else:
                self._check_length(data)
                self._last = None
        self.consumed += len(data)
        self._report()
        return data

    def _report(self, pending: int = 0) -> None:
        """Tell the progress hook that ``consumed + pending`` bytes were read (*pending*: of a
        payload still being received, so a large one shows progress as it arrives)."""
        count = self.consumed + pending
        if self._progress is not None and count > self._reported:
            self._reported = count
            self._progress(count)

    def _choose_mode(self, byte: int) -> None:
        # Read ahead only for pickles that do not start with PROTO 4 or 5 (see module doc).
        first = self.consumed == 0 and byte != _PROTO
        proto = self.consumed == 1 and self._last == _PROTO and byte < 4
        if first or proto:
            self._peeking = self.source.can_unread

    def _check_length(self, data: bytes) -> None:
        # The request after Read(1) of a length opcode is Read(width): its length header. The
        # pairing is unambiguous: a 1-byte *argument* read is followed by the next opcode or
        # by a read of the argument's value, and all these opcodes are >= 0x42, never 4 or 8.
        spec = _LENGTH_OPCODES.get(self._last) if self._last is not None else None
        if spec is None or len(data) != spec[1]:
            return
        name, width, signed = spec
        size = int.from_bytes(data, "little", signed=signed)
        if self._last == _FRAME:
            self.limits.check(name, size, "max_frame_size")
        self.limits.check(name, size, "max_object_size")
        self._check_object(width + size)

    # -- the buffer -----------------------------------------------------------------------------

    def _take(self, size: int, *, consume: bool = True) -> bytes:
        start = self._pos
        data = bytes(self._buffer[start : start + size])
        if consume:
            self._pos += size
            if self._pos == len(self._buffer):
                self._buffer.clear()
                self._pos = 0
        return data

    async def _fill(self) -> int:
        """Receive once into the buffer (read-ahead sources only); 0 at end of stream."""
        if self._pos and self._pos >= len(self._buffer) // 2:
            del self._buffer[: self._pos]  # compact: keep the buffer about one receive long
            self._pos = 0
        data = await self.source.receive(READ_AHEAD)
        self.eof = not data
        self._buffer += data
        return len(data)

    async def _read(self, size: int) -> bytes:
        if self.source.can_unread and size - self.buffered < READ_AHEAD:
            while self.buffered < size and await self._fill():
                pass
            return self._take(min(size, self.buffered))
        pieces = [self._take(self.buffered)]
        remaining = size - len(pieces[0])
        while remaining:
            piece = await self.source.receive(min(remaining, MAX_RECEIVE))
            if not piece:
                self.eof = True
                break
            pieces.append(piece)
            remaining -= len(piece)
            if remaining:  # the last piece is reported once the reply is consumed
                self._report(size - remaining)
        return b"".join(pieces)

    async def _read_into(self, buffer: memoryview) -> int:
        size = len(buffer)
        self._check_object(size)
        self._last = None
        filled = min(size, self.buffered)
        buffer[:filled] = self._take(filled)
        while filled < size:
            count = await self.source.receive_into(buffer[filled:])
            if not count:
                self.eof = True
                break
            filled += count
            if filled < size:
                self._report(filled)
        self.consumed += filled
        self._report()
        return filled

    async def _read_line(self) -> bytes:
        if not self.source.can_unread:  # an exact source never has anything buffered
            return await self.source.receive_line(self.limits)
        while (end := self._buffer.find(b"\n", self._pos)) < 0:
            self.limits.check("line", self.buffered + 1, "max_line_length")
            if not await self._fill():
                return self._take(self.buffered)
        self.limits.check("line", end + 1 - self._pos, "max_line_length")
        return self._take(end + 1 - self._pos)


# ---------------------------------------------------------------------------------------------
# The public API.


def new_requests(
    fix_imports: bool,
    encoding: str,
    errors: str,
    buffers: Iterable[Any] | None,
    unpickler_class: Callable[..., Any] | None,
    allow: AllowSpec = None,
    limits: Limits | None = None,
) -> Generator[Request, Any, Any]:
    """A fresh incremental loader with ``pickle.load``'s options (the default unpickler when
    *unpickler_class* is ``None``), restricted by *allow* within *limits* if *allow* is given.
    """
    options: dict[str, Any] = (
        {} if unpickler_class is None else {"unpickler_class": unpickler_class}
    )
    if allow is not None:
        options.update(asdict(limits or Limits()), allow=allow)
    return iter_loads(
        fix_imports=fix_imports, encoding=encoding, errors=errors, buffers=buffers, **options
    )


async def aload(
    reader: object,
    *,
    fix_imports: bool = True,
    encoding: str = "ASCII",
    errors: str = "strict",
    buffers: Iterable[Any] | None = None,
    unpickler_class: Callable[..., Any] | None = None,
    max_frame_size: int | None = DEFAULT_MAX_FRAME_SIZE,
    max_object_size: int | None = DEFAULT_MAX_OBJECT_SIZE,
    max_line_length: int | None = DEFAULT_MAX_LINE_LENGTH,
    progress: Progress | None = None,
    allow: AllowSpec = None,
    **limits: Unpack[RestrictedLimitOptions],
) -> Any:
    """Read exactly one pickle from the async byte stream *reader* and return the object.

    The C unpickler (or *unpickler_class*, any ``pickle.Unpickler`` subclass) runs as the bytes
    arrive; *fix_imports*, *encoding*, *errors* and *buffers* are those of ``pickle.load``.

    Readers: an asyncio ``StreamReader``, an anyio ``ByteReceiveStream`` (sockets, process
    stdout) or ``BufferedByteReceiveStream``, a trio ``ReceiveStream``, or an aiofiles / anyio
    ``AsyncFile`` binary file; else ``TypeError``. No byte past the pickle's STOP is lost: the
    next ``aload`` on the same reader starts right after it. Streams that cannot take bytes back
    (all but ``BufferedByteReceiveStream``, seekable files and asyncio ``StreamReader``) are
    read exactly what the unpickler asks for: protocol 4/5 pickles cost a few receives per
    64 KiB frame, but protocols 0-3 cost a receive per opcode. To read many protocol 0-3
    pickles from such a stream, wrap it in ``anyio.streams.buffered.BufferedByteReceiveStream``
    (and keep using the wrapper) or use `PickleStream`. Large ``bytes``/``bytearray`` payloads
    are read into their final buffer: ``readinto`` on files, ``recv_into`` by the transport of
    an asyncio ``StreamReader`` (asyncio, uvloop, TLS), piecewise copies of at most
    `MAX_RECEIVE` bytes on other streams. (The ``StreamReader`` paths use its private buffer
    and transport, as CPython 3.10-3.13 and uvloop have them; a reader without them is read
    through its public API, exactly.)

    Limits (``None`` disables one; each raises `LimitExceeded`, naming it, before the bytes are
    read or a buffer of the claimed size is allocated): *max_frame_size* for a protocol 4/5
    frame, *max_object_size* for the bytes the whole pickle spans, *max_line_length* for a
    line of the text opcodes. In a protocol 0-3 pickle (or one without a PROTO opcode) read
    ahead from a ``BufferedByteReceiveStream``, a ``StreamReader`` or a seekable file, a
    ``BINBYTES``/``BINBYTES8``/``BYTEARRAY8`` header is parsed by the C unpickler from the
    read-ahead data, so the unpickler allocates the claimed size (``MemoryError`` if
    impossible) before the payload read is refused; frames are a protocol-4 feature and are
    only checked in protocol 4/5 pickles, and in-frame lengths are only checked when their
    payload is read.

    ``progress(bytes_read)`` is called as the pickle is read, with the number of its bytes read
    so far (strictly increasing: after each frame or opcode the unpickler takes, and after each
    piece of a large payload), as `adump`'s *progress* is called with the bytes written. The
    receiver cannot know the total in advance (the sender only knows it once pickling ends); the
    last call's count is the pickle's size. An exception raised by *progress* aborts the load.

    *allow* (an `Allowlist` or pairs) restricts loading as in `streampickle.Unpickler`, whose
    ``iter_load`` then runs (*unpickler_class*, if given, must be a subclass of it): only the
    listed globals resolve, the opcodes are vetted before the unpickler acts on them, and the
    other `Limits` apply too (*max_payload_size*, *max_memo_size*, *max_opcodes*,
    *max_stack_depth*, *max_expansion*, with `Limits`' defaults; passing one without *allow* is a
    ``TypeError``). The restricted unpickler never peeks, so the read-ahead caveat above does
    not apply to it. Bad data then raises only ``UnpicklingError`` (a subclass for a refusal:
    `ForbiddenGlobal`, `PolicyViolation`, `LimitExceeded`) or ``EOFError``.

    Errors: ``EOFError`` if the stream ends before the first byte (as ``pickle.load``);
    ``UnpicklingError`` or ``EOFError`` if it ends inside the pickle or the data is bad;
    `LimitExceeded`; the stream's own errors. After an error or a cancellation the unpickler
    has been unwound and the reader is positioned somewhere inside the pickle (bytes it had
    read ahead are dropped): treat it as broken.
    """
    options = restricted_options(allow, limits)
    loader = await _open_loader(
        reader, Limits(max_frame_size, max_object_size, max_line_length, **options)
    )
    requests = new_requests(
        fix_imports, encoding, errors, buffers, unpickler_class, allow, loader.limits
    )
    obj = await loader.load(requests, progress)
    await loader.give_back()
    return obj


async def aiter_load(
    reader: object,
    *,
    fix_imports: bool = True,
    encoding: str = "ASCII",
    errors: str = "strict",
    buffers: Iterable[Any] | None = None,
    unpickler_class: Callable[..., Any] | None = None,
    max_frame_size: int | None = DEFAULT_MAX_FRAME_SIZE,
    max_object_size: int | None = DEFAULT_MAX_OBJECT_SIZE,
    max_line_length: int | None = DEFAULT_MAX_LINE_LENGTH,
    progress: Progress | None = None,
    allow: AllowSpec = None,
    **limits: Unpack[RestrictedLimitOptions],
) -> AsyncIterator[Any]:
    """Yield the objects pickled back to back in *reader* until a clean end of stream.

    Each object is read as by `aload` (same arguments, readers, *allow* and limits, per pickle;
    *buffers* is shared by all the pickles; each pickle gets a fresh unpickler, so one pickle's
    memo never resolves another's references). The stream ending before a pickle's first byte
    ends the iteration; ending inside one raises ``UnpicklingError`` or ``EOFError``.
    Read-ahead bytes are given back to the reader before each object is yielded, so breaking
    out of the loop leaves the reader right after the last object yielded.
    ``progress(bytes_read)`` counts the bytes of all the pickles read so far, from the first.
    """
    options = restricted_options(allow, limits)
    loader = await _open_loader(
        reader, Limits(max_frame_size, max_object_size, max_line_length, **options)
    )
    done = 0  # bytes of the pickles already read: progress counts the whole stream
    while True:
        requests = new_requests(
            fix_imports, encoding, errors, buffers, unpickler_class, allow, loader.limits
        )
        try:
            obj = await loader.load(requests, _offset(progress, done))
        except EOFError:
            if loader.consumed == 0 and loader.eof:
                return
            raise
        done += loader.consumed
        await loader.give_back()
        yield obj


async def _open_loader(reader: object, limits: Limits) -> Loader:
    """A `Loader` for *reader* (``TypeError`` for an unsupported one), ready to load."""
    loader = Loader(source_for(reader), limits)
    await loader.source.prepare()
    return loader


def _offset(progress: Progress | None, base: int) -> Progress | None:
    """*progress*, called with *base* added to each count."""
    if progress is None or not base:
        return progress
    return lambda count: progress(base + count)
