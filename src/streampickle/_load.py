"""The async load driver: a `Loader` answers an incremental loader's requests from a stream.

The engine's unpickler asks for bytes with `Read`/`ReadInto`/`ReadLine`/`Peek` requests; a
`Loader` answers them from its own buffer, refilled from the stream's `Source` adapter. Limits
are not its business: they are checked on the loader's side of the requests (the byte guard,
or a restricted loader's vetting reader), so every driver, sync or async, enforces the same.
What shapes the driver is leftovers: with `Peek` answered from a read-ahead buffer the C
unpickler parses straight from it (no request per opcode) but the buffer then holds bytes past
the pickle's STOP. Sources that can take bytes back (anyio ``BufferedByteReceiveStream``,
seekable files, an asyncio ``StreamReader`` through its internal buffer, `PickleStream`'s own
buffer) always read ahead and get the surplus back. On the others (plain anyio and trio receive
streams, pipes opened as files, chunked streams) a framed pickle is read exactly, and a
protocol 0-3 one (an opcode at a time: a receive per opcode otherwise) is read ahead, its
surplus handed to the caller (`give_back`), which keeps it for the stream's next load.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Generator
from typing import Any

from . import _collector
from ._adapters import Source, source_for
from ._opcodes import FRAME, PICKLE_STARTS, framed
from ._sansio import PIECE_SIZE, Peek, Progress, Read, ReadInto, Request
from ._turns import Turns

__all__ = ["READ_AHEAD", "Loader", "open_loader"]

#: Read-ahead per receive, for sources that may read ahead.
READ_AHEAD = 1 << 16
#: How many of a pickle's first bytes a `Loader` keeps (its mode, and error messages).
HEAD = 16
#: Each time a load has handed the unpickler this many bytes (about a frame) it may let other
#: tasks run (an anyio checkpoint, when `streampickle._turns.Turns` says one is due): answered
#: from read-ahead data, or by a source that had them buffered, a load would otherwise never
#: wait.
YIELD_EVERY = 1 << 16
#: The largest frame a `Peek` is answered with whole (see `Loader._frame_span`).
PEEK_FRAME_MAX = 1 << 20
#: A small framed pickle is read whole, up to this many bytes, before its unpickler starts
#: (see `Loader._read_frames`).
WHOLE_MAX = 1 << 18
#: How a framed pickle starts: PROTO 4 or 5, then FRAME.
_FRAMED_STARTS = (b"\x80\x04", b"\x80\x05")
_STOP = pickle.STOP[0]


class Loader:
    """Answers a loader's requests from a `Source` through a buffer, and reports progress.

    One `Loader` serves any number of consecutive pickles; between them its buffer holds what
    was read ahead (see `give_back`). Use it from one task at a time.

    It reads ahead (one receive of `READ_AHEAD` bytes for several small requests, and `Peek`
    answered from the buffer) only when its source can take bytes back. Otherwise it reads
    exactly what is asked: a chunked source then holds the rest of its current chunk, which
    `give_back` returns (with anything a driver preloaded and was not used) for the driver to
    keep for the stream's next load.
    """

    def __init__(self, source: Source) -> None:
        self.source = source
        self._buffer = bytearray()
        self._pos = 0
        #: Bytes the current pickle has consumed; 0 after an error means none were.
        self.consumed = 0
        self.eof = False
        self._progress: Progress | None = None
        self._reported = 0  # the last count given to _progress
        self._head = b""  # the current pickle's first `HEAD` bytes, once consumed
        self._ahead = source.can_unread  # may receive more than asked (see `load`)
        self._peek = source.can_unread  # may answer Peek with data
        self._guarded = False
        self._owned = False
        self._peeked = b""  # the last Peek's reply, kept while unconsumed (see _answer_peek)
        self._peeked_at = -1  # where it starts: a count of the pickle's bytes consumed
        self._boundary = 0  # a count of consumed bytes known to end at a frame's end
        self._unyielded = 0  # bytes handed on since the current load last let others run

    @property
    def buffered(self) -> int:
        """Bytes read ahead and not yet consumed."""
        return len(self._buffer) - self._pos

    async def load(
        self,
        requests: Generator[Request, Any, Any] | Callable[[], Generator[Request, Any, Any]],
        progress: Progress | None = None,
        *,
        guarded: bool = False,
        owned: bool = False,
    ) -> Any:
        """Run *requests* to completion and return the object; always closes *requests*.

        *requests* come from a loader whose limits are checked on its side of the requests
        (`streampickle._limits.guard`, or a restricted loader's vetting reader): this driver
        only reads what it is asked for, and a bounded line when a `ReadLine` has a limit.
        Given instead the function that makes them (the engine's own loader: no guard, no
        allowlist), it first receives a small framed pickle whole (`_read_frames`), where
        it reads ahead, and makes the loader then: a stream still waiting for its bytes
        holds no unpickler, a pickle that has arrived is unpickled without a wait.

        Reading ahead: on a source that can take bytes back, always. On the others, a framed
        pickle (PROTO 4 or 5: the unpickler reads whole frames) is read exactly, so nothing
        past its STOP leaves the stream; any other pickle (protocols 0-3: an opcode at a time)
        is read ahead, a receive of `READ_AHEAD` bytes serving many opcodes, and what is read
        past its STOP is what `give_back` returns, for the caller to keep for the stream's
        next load. `Peek` is answered with read-ahead data then too, unless *guarded* (the
        byte guard's requests: in peeked data the C unpickler would allocate for a length
        before the guard sees it), in which case it reads ahead but answers every `Read`.
        *owned*: the caller reads the stream to its end (`aiter_load`), so every pickle is
        read ahead, framed or not.
        ``progress(n)`` is called whenever more of the pickle was read: *n* is the number of
        its bytes read so far (strictly increasing; pieces of a large payload count as read).
        Once a pickle has handed the unpickler ``_collector.SMALL`` bytes (1 MiB), each run of
        the unpickler between two requests pauses the garbage collector
        (`streampickle._collector`); it is never paused across an await.

        Raises what the unpickler raises (``EOFError`` at end of stream before the first byte,
        ``UnpicklingError``/``EOFError`` for a truncated pickle, `LimitExceeded` from the
        loader's checks) and the source's errors.
        """
        self.consumed, self.eof = 0, False
        self._progress, self._reported = progress, 0
        self._head, self._guarded, self._owned = b"", guarded, owned
        self._peeked, self._peeked_at, self._boundary = b"", -1, 0
        self._choose_mode()
        reply: Any = None
        self._unyielded = 0  # bytes handed on since the load last let other tasks run
        whole = 0  # the length of a small pickle received whole (0: none)
        if callable(requests):
            if self._ahead:
                whole = await self._read_frames()
            requests = requests()
        answer_from = getattr(requests, "answer_from", None)
        if answer_from is not None:  # the engine's own requests (no guard between)
            answer_from(self._answer_here)
        pausing: bool | None = None  # may the collector be paused (None: not asked yet)
        turns: Turns | None = None  # made at the first decision point: small pickles need none
        handed = 0  # bytes handed to the unpickler, counted up to _collector.SMALL
        try:
            # A small pickle, whole: its unpickler runs through without a turn (no half-built
            # object waits for one), as a naive server's pickle.loads does.
            self._unyielded = -whole
            while True:
                if pausing:  # each run of the unpickler is a segment (see _collector)
                    paused = _collector.pause()
                    try:
                        request = requests.send(reply)
                    finally:
                        _collector.resume(paused)
                else:
                    request = requests.send(reply)
                # Most requests are answered from the buffer, without a coroutine, and a
                # source's own awaits may not yield (a StreamReader with data buffered): the
                # loop still gets a turn when one is due (about once a frame is checked),
                # however fast the data came.
                reply = self._answer_buffered(request)
                if reply is None:
                    reply = await self._answer(request)
                self._unyielded += reply if type(reply) is int else len(reply)
                if self._unyielded >= YIELD_EVERY or _offers_turn(request):
                    handed += self._unyielded
                    if pausing is None and handed >= _collector.SMALL:
                        pausing = _collector.begin()  # a graph worth pausing for
                    self._unyielded = 0
                    if turns is None:
                        turns = Turns()
                    await turns.take()
        except StopIteration as stop:
            return stop.value
        finally:
            self._peeked = b""
            if answer_from is not None:
                answer_from(None)
            requests.close()

    @property
    def buffer(self) -> bytearray:
        """The read-ahead buffer (the same object for the loader's life)."""
        return self._buffer

    def parked(self) -> tuple[bytearray, int]:
        """Its buffer and where the unconsumed bytes in it start, with the rest of a chunk the
        source holds moved in behind them: what another reader of the stream takes on from
        (`streampickle._ownership.Hold.park`)."""
        self._buffer += self.source.take_surplus()
        return self._buffer, self._pos

    def restart(self, data: bytes) -> None:
        """Forget the buffer (another reader of the stream took its bytes) and start from
        *data*, what the stream's last reader read past its pickle."""
        self._buffer.clear()
        self._pos = 0
        self._buffer += data

    def preload(self, data: bytes) -> None:
        """Put *data* (what an earlier load of the stream read past its pickle) in front."""
        self._buffer += data

    def explain(self, error: pickle.UnpicklingError) -> pickle.UnpicklingError:
        """*error* (the unpickler's, for the current pickle) as one line, saying that the data
        may not be a pickle at all when it failed within its first bytes and does not start
        with PROTO (pickle's own messages are about opcodes: "Memo value not found...")."""
        message = " ".join(str(error).split())
        # Parsed from peeked data, the pickle's first bytes may still be unconsumed.
        head = self._head or bytes(self._buffer[self._pos : self._pos + HEAD])
        if type(error) is not pickle.UnpicklingError or self.consumed > HEAD or not head:
            return error
        if head[0] in PICKLE_STARTS:
            return pickle.UnpicklingError(message) if message != str(error) else error
        return pickle.UnpicklingError(
            f"{message} (not a pickle? the data starts with {head!r}; pickles of protocols "
            "2-5 start with b'\\x80')"
        )

    async def give_back(self) -> bytes:
        """Hand what was read past the last pickle back to the source if it can take bytes
        back; return what it cannot take (read ahead here, or the rest of a chunk the source
        holds), for the driver to keep for the stream's next load."""
        data = bytes(self._buffer[self._pos :])
        self._buffer.clear()
        self._pos = 0
        if self.source.can_unread:
            if data:
                await self.source.unread(data)
            return b""
        return data + self.source.take_surplus()

    def _answer_here(self, request: Request) -> bytes | None:
        """`_answer_buffered`, called inside the engine's worker (`Loading.answer_from`) while
        no turn is due: None, and the request comes out to `load`, once `YIELD_EVERY` bytes
        went out since the last turn."""
        if self._unyielded >= YIELD_EVERY or _offers_turn(request):
            return None
        reply = self._answer_buffered(request)
        if reply is not None:
            self._unyielded += len(reply)
        return reply

    def _answer_buffered(self, request: Request) -> bytes | None:
        if isinstance(request, Peek):
            if not self._peek:
                return b""
            span = self._frame_span()
            if span > self.buffered or not self.buffered:
                return None
            return self._answer_peek(span or min(request.size, self.buffered), span > 0)
        if isinstance(request, Read):
            peeked = self._peeked
            if len(peeked) == request.size and self._peeked_at == self.consumed:
                # The C unpickler consumes what it parsed from a peek with a read whose reply
                # it drops; when that is the whole peek, its reply is the same bytes again.
                self._skip(len(peeked))
                self._peeked = b""
                return self._consumed(peeked)
            if self.buffered < request.size:
                return None
            return self._consumed(self._take(request.size))
        if isinstance(request, ReadInto):
            return None
        limit = request.limit
        end = self._buffer.find(b"\n", self._pos, None if limit is None else self._pos + limit)
        if end >= 0:
            return self._consumed(self._take(end + 1 - self._pos))
        if limit is not None and self.buffered >= limit:
            return self._consumed(self._take(limit))  # too long: the loader refuses it
        return None

    async def _answer(self, request: Request) -> bytes | int:
        if isinstance(request, Peek):
            if not self.buffered:
                await self._fill()
            span = self._frame_span()
            while self.buffered < span and await self._fill():
                pass
            if span and self.buffered >= span:
                return self._answer_peek(span, True)
            return self._answer_peek(min(request.size, self.buffered), False)
        if isinstance(request, Read):
            return self._consumed(await self._read(request.size))
        if isinstance(request, ReadInto):
            return await self._read_into(request.buffer)
        return self._consumed(await self._read_line(request.limit))

    # -- consuming ------------------------------------------------------------------------------

    def _consumed(self, data: bytes) -> bytes:
        """Account for *data* handed to the unpickler."""
        if self.consumed < HEAD and data:
            self._head += data[: HEAD - self.consumed]
            self._choose_mode()
        self.consumed += len(data)
        self._report()
        return data

    def _choose_mode(self) -> None:
        """Whether to read ahead and peek, as `load` describes, from the pickle's head."""
        if self.source.can_unread:
            self._ahead = self._peek = True
        else:
            self._ahead = self._owned or framed(self._head) is False
            self._peek = self._ahead and not self._guarded

    def _report(self, pending: int = 0) -> None:
        """Tell the progress hook that ``consumed + pending`` bytes were read (*pending*: of a
        payload still being received, so a large one shows progress as it arrives)."""
        count = self.consumed + pending
        if self._progress is not None and count > self._reported:
            self._reported = count
            self._progress(count)

    # -- the buffer -----------------------------------------------------------------------------

    def _frame_span(self) -> int:
        """The bytes from the buffer's position to the end of the frame that starts there, or
        0 unless the buffered bytes show one: PROTO 4 or 5 then FRAME at a pickle's start, or
        FRAME where an earlier frame peeked whole was consumed whole (an opcode boundary; a
        0x95 byte elsewhere may be an argument's). Answering a `Peek` with exactly one whole
        frame lets the C unpickler parse it from that one copy, and its read consuming the
        peek is then answered with the same bytes (see `_answer_buffered`). The frame's bytes
        are the pickle's, which the unpickler reads in any case, so waiting for them never
        waits for data the pickle does not have."""
        if self._boundary != self.consumed:
            return 0
        buffer, start = self._buffer, self._pos
        head = 0
        if self.consumed == 0:
            if bytes(buffer[start : start + 2]) not in _FRAMED_STARTS:
                return 0
            head = 2
        if len(buffer) - start < head + 9 or buffer[start + head] != FRAME:
            return 0
        length = int.from_bytes(buffer[start + head + 1 : start + head + 9], "little")
        return head + 9 + length if length <= PEEK_FRAME_MAX else 0

    async def _read_frames(self) -> int:
        """Receive the frames of a small framed pickle before its unpickler starts; return
        its length if they end with STOP (0: not known whole).

        Walks the buffered frames from the pickle's start (PROTO 4 or 5, then FRAME), waiting
        for the rest of each frame whose header is buffered: those bytes are the pickle's
        (its unpickler reads every frame whole), so this never waits for data the pickle does
        not have. It stops at a frame ending with STOP, at a header not yet received, at
        anything but FRAME, or past `WHOLE_MAX`. A small pickle is then whole in the buffer
        and its unpickler runs start to end without waiting: no suspended worker per stream
        for a server with many clients sending at once. (A frame may end with a STOP byte
        that is an argument's, ``K.`` say: the unpickler then waits for the rest as usual.)
        """
        offset = 2  # to the next frame's header, from the buffer's position
        if not self.buffered and not await self._fill():  # the unpickler's first wait
            return 0
        if bytes(self._buffer[self._pos : self._pos + 2]) not in _FRAMED_STARTS:
            return 0
        while self.buffered >= offset + 9:
            start = self._pos + offset
            if self._buffer[start] != FRAME:
                return 0
            end = offset + 9 + int.from_bytes(self._buffer[start + 1 : start + 9], "little")
            if end > WHOLE_MAX:
                return 0
            while self.buffered < end:
                if not await self._fill():
                    return 0
            if self._buffer[self._pos + end - 1] == _STOP:
                return end
            offset = end
        return 0

    def _answer_peek(self, size: int, whole_frame: bool) -> bytes:
        """The next *size* buffered bytes, unconsumed; kept (`_peeked`) for the read that
        consumes them. *whole_frame*: they end at a frame's end (see `_frame_span`)."""
        self._peeked = data = self._take(size, consume=False)
        self._peeked_at = self.consumed
        self._boundary = self.consumed + size if whole_frame else -1
        return data

    def _skip(self, size: int) -> None:
        self._pos += size
        if self._pos == len(self._buffer):
            self._buffer.clear()
            self._pos = 0

    def _take(self, size: int, *, consume: bool = True) -> bytes:
        start = self._pos
        with memoryview(self._buffer) as view:  # one copy (a bytearray slice would be two)
            data = bytes(view[start : start + size])
        if consume:
            self._skip(size)
        return data

    async def _fill(self) -> int:
        """Receive once into the buffer (read-ahead sources only); 0 at end of stream."""
        if self.eof:  # never receive past the end within a load (trio's SSLStream raises then)
            return 0
        if self._pos and self._pos >= len(self._buffer) // 2:
            del self._buffer[: self._pos]  # compact: keep the buffer about one receive long
            self._pos = 0
        count = await self.source.receive_ahead(self._buffer, READ_AHEAD)
        self.eof = not count
        return count

    async def _read(self, size: int) -> bytes:
        if self._ahead and size - self.buffered < READ_AHEAD:
            while self.buffered < size and await self._fill():
                pass
            return self._take(min(size, self.buffered))
        pieces = [self._take(self.buffered)]
        remaining = size - len(pieces[0])
        while remaining and not self.eof:
            piece = await self.source.receive(min(remaining, PIECE_SIZE))
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
        filled = min(size, self.buffered)
        buffer[:filled] = self._take(filled)
        while filled < size and not self.eof:
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

    async def _read_line(self, limit: int | None) -> bytes:
        """The next line, or its first *limit* bytes if it is longer."""
        if not self._ahead:  # read exactly: never past the newline
            head = self._take(self.buffered)  # what an earlier load left, if anything
            if self.eof:
                return head
            wanted = None if limit is None else limit - len(head)
            rest = await self.source.receive_line(wanted)
            self.eof = not rest.endswith(b"\n") and len(rest) != wanted
            return head + rest
        while (end := self._buffer.find(b"\n", self._pos)) < 0:
            if limit is not None and self.buffered >= limit:
                return self._take(limit)
            if not await self._fill():
                return self._take(self.buffered)
        size = end + 1 - self._pos
        return self._take(size if limit is None else min(size, limit))


def _offers_turn(request: Request) -> bool:
    """A ``Read(0)``: the loader offers a turn (the vetting reader, checking a long frame):
    answered with nothing, and a decision point like `YIELD_EVERY` bytes handed on."""
    return type(request) is Read and not request.size


async def open_loader(reader: object) -> Loader:
    """A `Loader` for *reader* (``TypeError`` for an unsupported one), ready to load."""
    loader = Loader(source_for(reader))
    await loader.source.prepare()
    return loader
