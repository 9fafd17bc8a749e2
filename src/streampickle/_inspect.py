"""`streampickle inspect`: a frame-aware view of pickles written back to back in a file.

The input is parsed opcode by opcode (``pickletools.genops``, through the opcode walk of
`_opcodes`) as it is read, so memory holds one opcode at a time, never the file:
``bytes``/``bytearray`` payloads of `SKIP_OVER` bytes or more are read in pieces and dropped
(their size is all that is reported), frames are not buffered at all. What grows with the
input is the symbolic memo that follows names through the memo for STACK_GLOBAL (one entry per
memoized object, as in `required_globals`), and ``str`` payloads, which are decoded whole.
"""

from __future__ import annotations

import pickle
import pickletools
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from ._globals import opcodes_and_globals
from ._limits import Limits
from ._opcodes import LENGTH_FIELDS, PICKLE_STARTS
from ._policy import ALLOW_NUMPY, Pair, is_dangerous
from ._policy.rules import MEMO_PUT
from ._sansio import PIECE_SIZE

__all__ = ["LARGE_PAYLOAD", "SKIP_OVER", "PickleReport", "Stats", "inspect_stream"]

#: Payloads of at least this many bytes are reported as large: from this size on CPython's
#: picklers write a payload outside the protocol-4 frames, as its own write.
LARGE_PAYLOAD = 1 << 16
#: Payloads of at least this many bytes are read in pieces of `PIECE_SIZE`; ``bytes`` and
#: ``bytearray`` ones are dropped as they are read, never held.
SKIP_OVER = 1 << 20

#: Opcodes carrying a ``bytes``/``str`` payload with a 4- or 8-byte length, and the size of
#: opcode plus length field (long ints and the 1-byte lengths are never large payloads).
_PAYLOADS = {
    name: 1 + field.width
    for name, field in LENGTH_FIELDS.items()
    if field.width >= 4 and name != "LONG4"
}
#: The opcodes whose payloads `_Input` may skip (a ``str`` payload is decoded: it could be
#: the name of a global).
_SKIPPABLE = {pickle.BINBYTES, pickle.BINBYTES8, pickle.BYTEARRAY8}
#: The protocol that introduced each opcode, for pickles without a PROTO opcode.
_PROTOCOL_OF = {opcode.name: opcode.proto for opcode in pickletools.opcodes}


@dataclass
class Stats:
    """Count, smallest, largest and total of a series of sizes."""

    count: int = 0
    min: int | None = None
    max: int | None = None
    total: int = 0

    def add(self, size: int) -> None:
        self.count += 1
        self.total += size
        self.min = size if self.min is None else min(self.min, size)
        self.max = size if self.max is None else max(self.max, size)


@dataclass
class PickleReport:
    """What `inspect_stream` found in one pickle."""

    offset: int  #: where the pickle starts in the input
    size: int = 0  #: its length in bytes, up to and including STOP
    protocol: int = 0  #: the PROTO opcode's, else the highest protocol of its opcodes (0 or 1)
    frames: Stats = field(default_factory=Stats)  #: sizes of the FRAME opcodes' frames
    large_payloads: Stats = field(default_factory=Stats)  #: payloads of LARGE_PAYLOAD or more
    payload_sizes: list[int] = field(default_factory=list)  #: those sizes, in order
    out_of_band_buffers: int = 0  #: NEXT_BUFFER opcodes (protocol 5 ``buffer_callback``)
    opcodes: Counter[str] = field(default_factory=Counter)
    globals: list[Pair] = field(default_factory=list)  #: as `required_globals` lists them

    def limits_needed(self) -> dict[str, int]:
        """The `Limits` fields (keyword: value) this pickle needs raised above their defaults to
        load under ``allow=`` (those it can measure: frames, size, payloads, opcodes, memo)."""
        measured = {
            "max_frame_size": self.frames.max or 0,
            "max_object_size": self.size,
            "max_payload_size": self.large_payloads.max or 0,
            "max_opcodes": sum(self.opcodes.values()),
            "max_memo_size": sum(self.opcodes[name] for name in (*MEMO_PUT, "MEMOIZE")),
        }
        defaults = Limits()
        return {
            name: needed for name, needed in measured.items() if needed > getattr(defaults, name)
        }

    @property
    def dangerous_globals(self) -> list[Pair]:
        """The globals an `Allowlist` refuses unless ``allow_dangerous=True``."""
        return [pair for pair in self.globals if is_dangerous(*pair)]

    def allowlist_source(self) -> str:
        """Python source of the `Allowlist` this pickle needs, ready to paste; numpy's globals
        as `ALLOW_NUMPY`, the preset whose dtype and array states the vetting pass checks."""
        dangerous = ", allow_dangerous=True" if self.dangerous_globals else ""
        if not any(module.split(".")[0] == "numpy" for module, _ in self.globals):
            return f"Allowlist({self.globals!r}{dangerous})"
        rest = [pair for pair in self.globals if pair not in ALLOW_NUMPY.pairs]
        if not rest and not dangerous:
            return "ALLOW_NUMPY"
        return f"ALLOW_NUMPY | Allowlist({rest!r}{dangerous})"


class _Skipped(bytes):
    """Stands for a skipped payload: empty, but as long as the payload for ``len()``, which is
    all ``pickletools`` checks of a ``bytes`` argument."""

    size: int

    def __new__(cls, size: int) -> _Skipped:
        skipped = super().__new__(cls)
        skipped.size = size
        return skipped

    def __len__(self) -> int:
        return self.size


class _Input:
    """The file the opcode parser reads: counts the position (``tell``), skips large ``bytes``
    payloads, and can look one byte ahead to find the end of the input between pickles."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self.position = 0
        self._ahead = b""
        self._code = b""  # the last single byte read: the opcode, when a payload is read

    def tell(self) -> int:
        return self.position

    def at_end(self) -> bool:
        if not self._ahead:
            self._ahead = self._file.read(1)
        return not self._ahead

    @property
    def next_byte(self) -> int:
        """The next byte (once `at_end` said there is one)."""
        return self._ahead[0]

    def peek(self, size: int) -> bytes:
        """The next *size* bytes (fewer at the end), left unread: only to report bad input
        (`readline` expects at most one byte ahead)."""
        if len(self._ahead) < size:
            self._ahead += self._file.read(size - len(self._ahead))
        return self._ahead[:size]

    def read(self, size: int) -> bytes:
        if size >= SKIP_OVER:
            return self._payload(size)
        data, self._ahead = self._ahead[:size], self._ahead[size:]
        if size > len(data):
            data += self._file.read(size - len(data))
        if size == 1:
            self._code = data
        self.position += len(data)
        return data

    def readline(self) -> bytes:
        data = self._ahead
        self._ahead = b""
        if not data.endswith(b"\n"):
            data += self._file.readline()
        self.position += len(data)
        return data

    def _payload(self, size: int) -> bytes:
        """Read a payload of *size* bytes in pieces, so that a length claimed by a truncated or
        bogus pickle never allocates more than the bytes that are there; a ``bytes`` payload
        is dropped as it is read (a `_Skipped` stands for it)."""
        skip = self._code[:1] in _SKIPPABLE
        pieces = [self._ahead]  # empty: the look-ahead byte is always an opcode
        self._ahead = b""
        count = len(pieces[0])
        while count < size:
            piece = self._file.read(min(PIECE_SIZE, size - count))
            if not piece:
                break
            count += len(piece)
            if not skip:
                pieces.append(piece)
        self.position += count
        return _Skipped(count) if skip else b"".join(pieces)


def inspect_stream(file: BinaryIO, *, fix_imports: bool = True) -> Iterator[PickleReport]:
    """Yield a `PickleReport` for each pickle in *file*, as soon as its STOP has been read.

    *file* is a binary file (or pipe) holding pickles back to back; it is read sequentially,
    never seeked. Globals are listed as `required_globals` lists them (with *fix_imports*).
    Raises ``pickle.UnpicklingError`` naming the pickle and offset for an empty input, and for
    a malformed or truncated pickle (after yielding the reports of the pickles before it);
    the file's own ``OSError``.
    """
    source = _Input(file)
    number = 0
    while not source.at_end():
        number += 1
        if source.next_byte not in PICKLE_STARTS:
            raise pickle.UnpicklingError(
                f"pickle {number}: not a pickle: it starts with {source.peek(16)!r} at offset "
                f"{source.position} (pickles of protocols 2-5 start with b'\\x80')"
            )
        try:
            with warnings.catch_warnings():
                # pickletools warns of invalid escapes in a protocol-0 string (which pickle
                # loads, with the same warning): not an error, and not worth a stderr line.
                warnings.simplefilter("ignore", DeprecationWarning)
                report = _inspect_one(source, fix_imports)
        except pickle.UnpicklingError as exc:
            raise pickle.UnpicklingError(f"pickle {number}: {exc}") from None
        yield report
    if number == 0:
        raise pickle.UnpicklingError("the input is empty: no pickle in it")


def _inspect_one(source: _Input, fix_imports: bool) -> PickleReport:
    report = PickleReport(offset=source.position)
    found: dict[Pair, None] = {}
    for opcode, arg, start, end, pair in opcodes_and_globals(source, fix_imports):
        report.opcodes[opcode.name] += 1
        _note(report, opcode, arg, end - start)
        if pair is not None:
            found[pair] = None
    report.size = source.position - report.offset
    report.globals = list(found)
    if "PROTO" not in report.opcodes:
        report.protocol = max(_PROTOCOL_OF[name] for name in report.opcodes)
    return report


def _note(report: PickleReport, opcode: Any, arg: Any, length: int) -> None:
    """Account for one opcode of *length* bytes in *report*."""
    name = opcode.name
    if name == "PROTO":
        report.protocol = arg
    elif name == "FRAME":
        report.frames.add(arg)
    elif name == "NEXT_BUFFER":
        report.out_of_band_buffers += 1
    elif name in _PAYLOADS and length - _PAYLOADS[name] >= LARGE_PAYLOAD:
        report.large_payloads.add(length - _PAYLOADS[name])
        report.payload_sizes.append(length - _PAYLOADS[name])
