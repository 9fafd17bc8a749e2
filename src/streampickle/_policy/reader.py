"""The vetting reader: the file a restricted unpickler reads, which hands on only bytes
whose opcodes the stack rules (`.rules`) have checked, and the restriction that wraps a load."""

from __future__ import annotations

import io
import pickle
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

from .._exceptions import ForbiddenGlobal, LimitExceeded, PolicyViolation
from .._limits import Limits
from .._opcodes import BY_CODE, LONGEST_FIXED_ARGUMENT, UNFRAMED_HEADERS, Opcodes, genops, opcodes
from .._sansio import PIECE_SIZE
from .allowlist import Allowlist, Pair, as_allowlist
from .model import Memo
from .nodes import compiled
from .rules import Globals, Rules

__all__ = ["CheckedReader", "Restriction"]

T = TypeVar("T")

#: The compiled accelerator's frame check (`streampickle._policy._scan.scan`): the common
#: opcodes of a frame checked in C, exactly as `Rules.check` checks them. None where it is not
#: built, or when the environment sets ``STREAMPICKLE_PURE_PYTHON`` (to anything but ``0``):
#: then `Rules.check` checks every opcode.
Scan = Callable[[Rules, bytes, int, int, int], tuple[int, int]]


SCAN: Scan | None = getattr(compiled("_scan"), "scan", None)


#: Opcodes checked between two offers of a turn to an async driver (`CheckedReader`): about
#: 2-4 ms of checking in pure Python (far less with the accelerator), and a greenlet round
#: trip (~4 us) each.
TURN_EVERY = 256
#: Memo model entries freed between two turns by `CheckedReader.release` (about 1 ms here).
RELEASE_EVERY = 1 << 17
#: Bytes asked of the wrapped file's ``peek`` at a time, outside frames (`_scan_ahead`).
_AHEAD = 1 << 16


class _Readable(Protocol):
    """What the vetting reader reads: the unpickler's `streampickle._cengine.Source`, which
    offers ``readinto`` and ``peek`` whatever its target has (``peek`` answers ``b""`` for a
    target that cannot)."""

    def read(self, size: int, /) -> bytes: ...
    def peek(self, size: int, /) -> bytes: ...
    def readinto(self, buffer: Any, /) -> int: ...
    def readline(self, size: int = -1, /) -> bytes: ...


class _Deferred:
    """A payload outside a frame (after its frame, or in a pickle with none before it:
    BINBYTES, BINUNICODE, their 8-byte forms, BYTEARRAY8): its header was checked, its bytes
    are data, so they are read from the inner file only as the unpickler takes them, straight
    into its buffer when it reads with ``readinto``."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


class _Recorder:
    """The file the opcode parser reads: forwards to *inner*, keeps every byte it returns, and
    checks the byte limits before each read."""

    def __init__(self, inner: _Readable, record: deque[bytes | _Deferred], limits: Limits) -> None:
        self._inner = inner
        self._record = record
        self._limits = limits
        self.position = 0  # stream offset of the next byte
        self.start = 0  # stream offset where the current pickle started
        self.eof = False  # the inner file returned less than asked
        #: An exception the inner file raised: the file's own error, not the pickle's.
        self.io_error: BaseException | None = None

    def tell(self) -> int:
        return self.position

    def read(self, size: int) -> bytes:
        """What the opcode parser calls: any read longer than a fixed argument is a payload."""
        if size > LONGEST_FIXED_ARGUMENT:
            # The pickle's total first, as aload's reader checks it (a same error either way).
            self._limits.check("pickle", self.position - self.start + size, "max_object_size")
            self._limits.check("payload", size, "max_payload_size")
        return self.read_raw(size)

    def read_raw(self, size: int) -> bytes:
        """Read *size* bytes (fewer at end of stream), in pieces of at most `PIECE_SIZE`."""
        self._limits.check("pickle", self.position - self.start + size, "max_object_size")
        pieces = []
        remaining = size
        while remaining and not self.eof:
            asked = min(remaining, PIECE_SIZE)
            piece = self._call(self._inner.read, asked)
            pieces.append(self._keep(piece, len(piece) < asked))
            remaining -= len(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def ahead(self, size: int) -> bytes:
        """Up to *size* bytes that the wrapped file will return next, without reading them (its
        ``peek``), no more than max_object_size lets the pickle have; ``b""`` if it cannot tell."""
        data = self._call(self._inner.peek, size)
        room = self._limits.max_object_size
        if room is not None:
            room -= self.position - self.start
            if len(data) > room:
                data = data[: max(room, 0)]
        return data

    def offer_turn(self) -> None:
        """Offer the driver a moment to let other tasks run, if the wrapped file is the
        engine's requester (an async driver: ``offers_turns``): a ``Read(0)``, answered with
        nothing, at which `streampickle._load.Loader` gives the event loop a turn when one is
        due. A sync file is not asked anything."""
        if getattr(getattr(self._inner, "target", None), "offers_turns", False):
            self._call(self._inner.read, 0)

    def defer(self, size: int) -> None:
        """Count a payload of *size* bytes as read, within the limits, without reading it: the
        unpickler takes it through `read_deferred`/`read_deferred_into`."""
        self._limits.check("pickle", self.position - self.start + size, "max_object_size")
        self._limits.check("payload", size, "max_payload_size")
        self._record.append(_Deferred(size))
        self.position += size

    def read_deferred(self, size: int) -> bytes:
        """Up to *size* (at most `PIECE_SIZE`) bytes of a deferred payload; fewer at end."""
        data = self._call(self._inner.read, min(size, PIECE_SIZE))
        self.eof = self.eof or len(data) < min(size, PIECE_SIZE)
        return data

    def read_deferred_into(self, view: memoryview) -> int:
        """Fill *view* with bytes of a deferred payload; fewer at end of stream."""
        filled = 0
        while filled < len(view):
            count = self._call(self._inner.readinto, view[filled:])
            if not count:
                self.eof = True
                break
            filled += count
        return filled

    def readline(self) -> bytes:
        # One byte past the limit is enough to refuse the line: never buffer a longer one.
        longest = self._limits.max_line_length
        data = self._call(self._inner.readline, -1 if longest is None else longest + 1)
        self._limits.check("line", len(data), "max_line_length", at_least=True)
        self._limits.check("pickle", self.position - self.start + len(data), "max_object_size")
        return self._keep(data, not data.endswith(b"\n"))

    def _call(self, method: Callable[..., T], *args: Any) -> T:
        """``method(*args)``, noting the exception it raises as the file's own (`io_error`)."""
        try:
            return method(*args)
        except BaseException as exc:
            self.io_error = exc
            raise

    def _keep(self, data: bytes, short: bool) -> bytes:
        if data:
            self._record.append(data)
        self.position += len(data)
        self.eof = self.eof or short
        return data


class CheckedReader:
    """The file a restricted unpickler reads: it hands on only bytes whose opcodes were checked.

    It parses the stream (``pickletools.genops``) ahead of the C unpickler and hands on bytes
    only up to the end of the last opcode checked, so the unpickler never acts on an unchecked
    opcode. Refused with `PolicyViolation`: EXT1/EXT2/EXT4, an opcode straddling its frame's
    end, a FRAME inside a frame, a frame running past STOP. Refused with `LimitExceeded`: what
    exceeds one of *limits* (all of them are checked here, before the bytes are read or the
    unpickler acts on the opcode). Malformed opcodes, and opcodes that pop more than the stack
    holds, raise ``UnpicklingError``. After any of these, every later read raises the same
    error: the stream cannot be resynchronised. A stream that ends early gives a short read,
    so the unpickler raises its usual ``EOFError``/``UnpicklingError``.

    It reads *inner* with ``read``/``readline``, never past the pickle's STOP: one read per
    frame (checked as a whole, at C speed), one per field outside frames, or, where *inner*
    can ``peek`` and the accelerator is built, one per run of opcodes it checked in bulk. Its
    own ``peek`` offers only checked bytes, up to STOP, so the unpickler never reads ahead of
    the check. A payload of 64 KiB or more outside a frame
    (`streampickle._opcodes.DEFER_AT_LEAST`; picklers write large ``bytes``, ``str`` and
    ``bytearray`` so) is checked by its header and read only as the unpickler reads it: with
    *inner*'s ``readinto``, if it has one, straight into the object's buffer. Cost: the check
    of each opcode (about the C unpickler's own time again for framed pickles of small
    objects, several times that outside frames, i.e. at protocols 0-3), and a frame is held
    here until the unpickler has copied it.
    """

    def __init__(
        self, inner: _Readable, limits: Limits | None = None, globals: Globals | None = None
    ) -> None:
        #: Raw bytes read, not yet handed on, and a deferred payload last, if any.
        self._pending: deque[bytes | _Deferred] = deque()
        self._head = 0  # offset already handed on in _pending[0]
        self._handed = 0  # stream offset of the next byte to hand on
        self._checked = 0  # stream offset of the end of the last opcode checked
        self._limits = Limits() if limits is None else limits
        self._recorder = _Recorder(inner, self._pending, self._limits)
        self._ops: Opcodes | None = None
        self._until_turn = TURN_EVERY  # opcodes to check before offering a turn
        #: Outside frames, the bytes the wrapped file will return next (its ``peek``), from
        #: stream offset ``_ahead_at``, which the accelerator checks in bulk; None once the
        #: file cannot tell, for the rest of the pickle.
        self._ahead: bytes | None = b""
        self._ahead_at = 0
        self._memo = Memo()  # the model of the unpickler's memo, which outlives a pickle
        self._globals = globals
        self._rules = Rules(self._limits, self._memo, globals=globals)
        #: The error that stopped this reader, raised again by every later read.
        self.failure: pickle.UnpicklingError | EOFError | None = None

    def release(self) -> None:
        """Free the model of the memo, for this reader loads no more pickles: from its newest
        entries back (what a container holds is put after it, so each chunk frees about as
        many model objects as it drops), `RELEASE_EVERY` entries at a time, with a turn
        offered after each. Freed at once, a model of a million containers blocks the event
        loop for tens of milliseconds at the end of the load."""
        values = self._memo.values
        while len(values) > RELEASE_EVERY:
            del values[-RELEASE_EVERY:]
            self._recorder.offer_turn()
        values.clear()

    # -- the file interface the C unpickler uses ---------------------------------------------

    def read(self, size: int = -1) -> bytes:
        parts = list(self._take(size))
        whole = parts[0].obj if len(parts) == 1 else None
        if isinstance(whole, bytes) and len(whole) == len(parts[0]):
            return whole  # a whole chunk (a frame, a payload): no copy
        return b"".join(parts)

    def peek(self, size: int = 1) -> bytes:
        """Checked bytes not handed on yet, without handing them on: at least *size* of them if
        the pickle has that many. Never past the pickle's STOP, nor into a deferred payload.
        The C unpickler prefetches with it, so it makes a few large reads, not two an opcode."""
        wanted = max(size, 1)
        if self.failure is not None:
            raise self.failure
        pending = self._pending
        while (
            self._checked - self._handed < wanted
            and (self._ops is not None or self._checked == self._handed)  # not past STOP
            and not (pending and isinstance(pending[-1], _Deferred))
            and self._step()
        ):
            pass
        remaining = min(self._checked - self._handed, wanted)
        parts: list[memoryview] = []
        head = self._head
        for chunk in pending:
            if not remaining or isinstance(chunk, _Deferred):
                break
            if not parts and not head and remaining >= len(chunk) == self._checked - self._handed:
                return bytes(chunk)  # all there is, a whole chunk: bytes already, not copied
            part = memoryview(chunk)[head : head + remaining]
            parts.append(part)
            remaining -= len(part)
            head = 0
        return b"".join(parts)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view) and self._available(len(view) - filled):
            head = self._pending[0]
            if isinstance(head, _Deferred):  # straight from the inner file into the buffer
                wanted = min(len(view) - filled, head.size - self._head)
                count = self._recorder.read_deferred_into(view[filled : filled + wanted])
                self._handed_deferred(head, count, wanted)
                filled += count
                if count < wanted:
                    break
                continue
            for part in self._take(min(len(view) - filled, len(head) - self._head)):
                view[filled : filled + len(part)] = part
                filled += len(part)
        return filled

    def readline(self, size: int = -1) -> bytes:
        line = bytearray()
        while not line.endswith(b"\n") and (available := self._available(1)):
            pending = self._pending[0]
            if isinstance(pending, _Deferred):  # never so in a pickle that makes sense
                line += b"".join(self._take(1))
                continue
            # Outside frames the pending chunks are what the parser read: lines, or fields.
            head = bytes(memoryview(pending)[self._head : self._head + available])
            end = head.find(b"\n")
            line += b"".join(self._take(len(head) if end < 0 else end + 1))
        return bytes(line)

    @property
    def position(self) -> int:
        """Bytes read from the wrapped file so far."""
        return self._recorder.position

    @property
    def io_error(self) -> BaseException | None:
        """The last exception the wrapped file raised (its own error, not the pickle's)."""
        return self._recorder.io_error

    # -- internals ------------------------------------------------------------------------------

    def _available(self, wanted: int) -> int:
        """Check opcodes until *wanted* bytes may be handed on, or the input ends; return how
        many may be handed on now."""
        if self.failure is not None:
            raise self.failure
        # Nothing is parsed past a deferred payload (always the last pending) until the
        # unpickler has taken it: its bytes are still in the wrapped file (the unpickler reads
        # a payload exactly).
        pending = self._pending
        while (
            self._checked - self._handed < wanted
            and not (pending and isinstance(pending[-1], _Deferred))
            and self._step()
        ):
            pass
        return self._checked - self._handed

    def _step(self) -> bool:
        """Check one more opcode (a whole frame after FRAME); ``False`` if the input ended."""
        scan = SCAN if self._ops is not None and self._ahead is not None else None  # in bulk
        if self._ops is None:  # a new pickle starts (the unpickler never reads past STOP)
            self._ops = opcodes(self._recorder)
            self._rules = Rules(self._limits, self._memo, self._recorder.position, self._globals)
            self._recorder.start = self._recorder.position
            self._ahead = b""
        try:
            if scan is not None and self._scan_ahead(scan):
                return not self._recorder.eof
            self._count_opcode()
            opcode, arg, start, end = next(self._ops)
            self._rules.check(opcode.name, arg, start, end)
            if opcode.name == "FRAME":
                end = self._check_frame(end, arg)
            elif opcode.name == "STOP":
                self._ops = None
        except pickle.UnpicklingError as exc:
            if self._recorder.eof and not isinstance(exc, (PolicyViolation, LimitExceeded)):
                self._ops = None  # truncated: the unpickler reports it its usual way
                return False
            self.failure = exc
            raise
        if self._recorder.eof:  # a frame or payload cut short: never hand it on
            return False
        self._checked = end
        return True

    def _scan_ahead(self, scan: Scan) -> bool:
        """Outside frames (protocols 0-3, or between frames), check the opcodes that follow in
        bulk with the accelerator, from what the wrapped file says comes next, then read just
        those; ``False`` if it checked none (the next opcode is left to `Rules`)."""
        recorder = self._recorder
        offset = recorder.position - self._ahead_at
        ahead = self._ahead
        assert ahead is not None
        if not 0 <= offset < len(ahead):
            ahead = recorder.ahead(_AHEAD)
            if not ahead:
                self._ahead = None  # the file cannot peek: one opcode at a time
                return False
            self._ahead, self._ahead_at, offset = ahead, recorder.position, 0
        last = self._scan(scan, ahead, self._ahead_at, offset)
        if last == offset:
            return False
        recorder.read_raw(last - offset)  # the bytes just checked
        if not recorder.eof:
            self._checked = recorder.position
        return True

    def _count_opcode(self) -> None:
        """Every `TURN_EVERY` opcodes checked, offer the driver a turn (`_Recorder.offer_turn`):
        checking a frame of small objects takes tens of milliseconds, which an event loop
        should not wait for in one piece."""
        self._until_turn -= 1
        if not self._until_turn:
            self._until_turn = TURN_EVERY
            self._recorder.offer_turn()

    def _check_frame(self, start: int, size: int) -> int:
        """Read and check the frame of *size* bytes at *start*, and the payload that may follow
        it; return where what was checked ends."""
        self._limits.check("frame", size, "max_frame_size")
        frame = self._recorder.read_raw(size)
        if len(frame) < size:
            return start
        # A straddling or malformed opcode makes genops fail, which _check_payload sorts out.
        file = io.BytesIO(frame)
        ops = genops(file)
        scan = SCAN if type(frame) is bytes else None
        last = 0  # frame offset of the end of the last complete opcode
        try:
            while True:
                if scan is not None:  # the common opcodes in C, up to one it leaves to Rules
                    last = self._scan(scan, frame, start, last)
                    if last == len(frame):
                        return start + last
                    file.seek(last)
                opcode, arg, _ = next(ops)
                self._count_opcode()
                self._rules.check(opcode.name, arg, start + last, start + file.tell())
                last = file.tell()
                if opcode.name == "STOP":
                    self._ops = None
                    return start + last
        except ValueError:  # the frame ended: between opcodes, or inside one
            if last == len(frame):
                return start + last
            return self._check_payload(frame, start, last)

    def _scan(self, scan: Scan, frame: bytes, start: int, last: int) -> int:
        """Check opcodes of *frame* from offset *last* with the accelerator, offering turns as
        `_count_opcode` does; return the offset of the first opcode it leaves to `Rules`."""
        while True:
            last, used = scan(self._rules, frame, start, last, self._until_turn)
            self._until_turn -= used
            if self._until_turn:
                return last
            self._until_turn = TURN_EVERY
            self._recorder.offer_turn()

    def _check_payload(self, frame: bytes, start: int, last: int) -> int:
        """The frame ended inside the opcode at *last*: accept it only if that is a payload
        opcode whose header ends the frame, and read the payload; return where it ends."""
        opcode = BY_CODE.get(chr(frame[last]))
        name = "an unknown opcode" if opcode is None else opcode.name
        header = frame[last:]
        if opcode is None or UNFRAMED_HEADERS.get(opcode.name) != len(header):
            raise PolicyViolation(
                f"{name} at position {start + last} is malformed or straddles the end of its "
                "frame (pickle's frame rules forbid that; CPython's C unpickler reads through)",
                start + last,
            )
        size = int.from_bytes(header[1:], "little")
        end = start + len(frame) + size
        self._rules.check(opcode.name, None, start + last, end)  # before reading the payload
        self._recorder.defer(size)  # read as the unpickler takes it: into its buffer, uncopied
        return end

    def _handed_deferred(self, head: _Deferred, count: int, wanted: int) -> None:
        """*count* bytes of the deferred payload *head* went to the unpickler; fewer than
        *wanted* means the stream ended inside it: nothing more is checked or handed on."""
        self._handed += count
        self._head += count
        if self._head == head.size or count < wanted:
            self._pending.popleft()
            self._head = 0
        if count < wanted:
            self._checked = self._handed

    def _take(self, size: int) -> Iterator[memoryview]:
        """Hand on up to *size* checked bytes (all of them if negative), as views in order."""
        remaining = self._available(size if size >= 0 else sys.maxsize)
        if size >= 0:
            remaining = min(remaining, size)
        while remaining:
            pending = self._pending[0]
            if isinstance(pending, _Deferred):
                deferred = pending
                wanted = min(remaining, deferred.size - self._head)
                data = self._recorder.read_deferred(wanted)
                self._handed_deferred(deferred, len(data), min(wanted, PIECE_SIZE))
                remaining = 0 if len(data) < min(wanted, PIECE_SIZE) else remaining - len(data)
                yield memoryview(data)
                continue
            head = memoryview(pending)[self._head :]
            part = head[:remaining]
            remaining -= len(part)
            self._handed += len(part)
            if len(part) == len(head):
                self._pending.popleft()
                self._head = 0
            else:
                self._head += len(part)
            yield part


#: What the C unpickler and the callables it calls raise for data that makes no sense
#: (``RecursionError``: comparing or hashing nested objects of allowed classes).
_BAD_DATA_ERRORS = (
    ArithmeticError,
    AttributeError,
    LookupError,
    RecursionError,
    TypeError,
    ValueError,
)


class Restriction:
    """What a restricted `Unpickler` holds: its allowlist and the `CheckedReader` it reads.

    The unpickler reads ``reader`` (which reads *source* within *limits*) and calls
    `find_class` for every global it meets.
    """

    __slots__ = ("allowlist", "fix_imports", "reader")

    def __init__(
        self,
        allow: Allowlist | Iterable[Pair],
        source: _Readable,
        fix_imports: bool,
        limits: Limits | None = None,
    ) -> None:
        self.allowlist = as_allowlist(allow)
        self.fix_imports = fix_imports
        self.reader = CheckedReader(source, limits, Globals(self.allowlist, fix_imports))

    def run(self, load: Callable[[], Any]) -> Any:
        """Call the unpickler's *load*; a restricted load of bad data raises only
        ``UnpicklingError`` (or a subclass) or ``EOFError``.

        The C unpickler turns any ``UnpicklingError`` raised by the file while it reads an
        opcode byte into ``EOFError("Ran out of input")``; the reader's error is restored here.
        The errors the unpickler raises when opcodes apply to the wrong kind of object
        (``TypeError`` for an unhashable dict key, ``ValueError`` for a bad literal...), and
        those of allowed callables given bad arguments, become ``UnpicklingError`` with the
        original as ``__cause__``. The file's own errors pass through unchanged.
        """
        reader = self.reader
        if reader.failure is not None:
            raise reader.failure  # a refusal is final (see `stop`)
        begun = reader.position
        try:
            return load()
        except Exception as exc:
            failure = reader.failure
            if failure is not None and failure is not exc:
                raise failure from None
            if isinstance(exc, _BAD_DATA_ERRORS) and exc is not reader.io_error:
                error = pickle.UnpicklingError(f"bad pickle data: {type(exc).__name__}: {exc}")
                error.__cause__ = exc
                self.stop(error, begun)
                raise error from exc
            if isinstance(exc, (pickle.UnpicklingError, EOFError)):
                self.stop(exc, begun)
            raise

    def stop(self, error: pickle.UnpicklingError | EOFError, begun: int) -> None:
        """Make *error* final: every later load of this unpickler raises it again, for after a
        refusal or bad data inside a pickle the rest of it is still unread, and read as a new
        pickle it could build a wrong object. Only a clean end of stream (``EOFError`` before
        the pickle's first byte, at *begun*) leaves the unpickler usable, as ``pickle``'s."""
        clean_end = isinstance(error, EOFError) and self.reader.position == begun
        if not clean_end and self.reader.failure is None:
            self.reader.failure = error

    def find_class(self, module: str, name: str) -> Any:
        """`Allowlist.find_class` with this unpickler's ``fix_imports``; a `ForbiddenGlobal`
        is final, as every refusal (see `stop`)."""
        try:
            return self.allowlist.find_class(module, name, fix_imports=self.fix_imports)
        except ForbiddenGlobal as refusal:
            self.reader.failure = refusal
            raise
