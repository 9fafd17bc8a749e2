"""Pickle-format facts, derived once from ``pickletools.opcodes``, and the opcode walk.

Which opcodes carry a length-prefixed payload, and how wide and signed that length is, is
written down in ``pickletools``' argument descriptors; every reader of the format here (the
async driver's byte guard, the vetting reader, ``inspect``) takes it from `LENGTH_FIELDS`.

`opcodes` walks a pickle opcode by opcode like ``pickletools.genops``, with argument readers
for the text-line arguments that decode them as the C unpickler does, without warnings.
"""

from __future__ import annotations

import pickle
import pickletools
import re
import sys
from _codecs import escape_decode
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BY_BYTE",
    "BY_CODE",
    "BY_NAME",
    "DEFER_AT_LEAST",
    "FRAME",
    "LENGTH_FIELDS",
    "LONGEST_FIXED_ARGUMENT",
    "MARK",
    "PICKLE_STARTS",
    "PROTO",
    "UNFRAMED_HEADERS",
    "LengthField",
    "Opcodes",
    "framed",
    "genops",
    "opcodes",
]

BY_CODE = {opcode.code: opcode for opcode in pickletools.opcodes}
BY_BYTE = {opcode.code.encode("latin-1"): opcode for opcode in pickletools.opcodes}
BY_NAME = {opcode.name: opcode for opcode in pickletools.opcodes}
MARK = pickletools.markobject
PROTO = pickle.PROTO[0]
FRAME = pickle.FRAME[0]

#: ``pickletools``' codes for an argument whose length comes first: code -> (width, signed).
_LENGTH_CODES = {
    pickletools.TAKEN_FROM_ARGUMENT1: (1, False),
    pickletools.TAKEN_FROM_ARGUMENT4: (4, True),
    pickletools.TAKEN_FROM_ARGUMENT4U: (4, False),
    pickletools.TAKEN_FROM_ARGUMENT8U: (8, False),
}


@dataclass(frozen=True, slots=True)
class LengthField:
    """An opcode followed by a little-endian length and that many bytes of payload."""

    name: str
    code: int  #: the opcode's byte
    width: int  #: bytes of the length field
    signed: bool

    def decode(self, field: bytes) -> int:
        """The length in *field*, the `width` bytes after the opcode."""
        return int.from_bytes(field, "little", signed=self.signed)


def _length_fields() -> dict[str, LengthField]:
    fields = {}
    for opcode in pickletools.opcodes:
        if opcode.arg is None or opcode.arg.n not in _LENGTH_CODES:
            continue
        width, signed = _LENGTH_CODES[opcode.arg.n]
        code = opcode.code.encode("latin-1")[0]
        fields[opcode.name] = LengthField(opcode.name, code, width, signed)
    return fields


#: Every opcode whose argument is a length-prefixed payload, by name.
LENGTH_FIELDS = _length_fields()
#: The payload opcodes whose payload may follow their frame: CPython's picklers commit the
#: frame after the opcode and length of a ``bytes``/``str``/``bytearray`` of 64 KiB or more and
#: write the payload unframed. Value: the size of opcode and length field. (These are the
#: unsigned lengths of 4 or 8 bytes: protocol 4 added the 8-byte ones with framing.)
UNFRAMED_HEADERS = {
    name: 1 + field.width
    for name, field in LENGTH_FIELDS.items()
    if field.width >= 4 and not field.signed
}
#: ``pickletools`` reads a fixed-width argument in one ``read()``; only payloads are longer.
LONGEST_FIXED_ARGUMENT = max(
    opcode.arg.n for opcode in pickletools.opcodes if opcode.arg is not None
)

Opcodes = Generator[tuple[Any, Any, int, int], None, None]


def _argument_table() -> dict[int, int | LengthField]:
    """Opcode byte -> the bytes of its fixed-width argument, the newlines that end it (as
    -1 or -2), or its `LengthField`."""
    table: dict[int, int | LengthField] = {}
    for opcode in pickletools.opcodes:
        code = opcode.code.encode("latin-1")[0]
        if opcode.name in LENGTH_FIELDS:
            table[code] = LENGTH_FIELDS[opcode.name]
        elif opcode.arg is None:
            table[code] = 0
        elif opcode.arg.n >= 0:
            table[code] = opcode.arg.n
        else:  # up to a newline; GLOBAL and INST take two lines
            table[code] = -2 if opcode.arg.name == "stringnl_noescape_pair" else -1
    return table


_ARGUMENTS = _argument_table()


def length_claims(data: bytes) -> tuple[list[tuple[str, int, int]], int | None]:
    """The payload lengths of 4 or 8 bytes that the opcodes in *data* (a frame) claim, as
    ``(opcode name, length, offset of the payload)`` (the last may claim past *data*: a
    payload that follows its frame); and the byte of a length opcode whose length field runs
    past *data* (its length is read after the frame), or None. Stops at an opcode it does not
    know, or a negative length. A fast walk over opcode boundaries: arguments are not decoded."""
    arguments = _ARGUMENTS
    claims: list[tuple[str, int, int]] = []
    position, end = 0, len(data)
    while position < end:
        code = data[position]
        argument = arguments.get(code)
        position += 1
        if type(argument) is int:
            if argument >= 0:
                position += argument
                continue
            for _ in range(-argument):
                newline = data.find(b"\n", position)
                if newline < 0:
                    return claims, None
                position = newline + 1
        elif argument is None:
            break
        else:
            assert isinstance(argument, LengthField)
            header = position + argument.width
            if header > end:
                return claims, code if argument.width >= 4 else None
            size = argument.decode(data[position:header])
            if size < 0:
                break
            if argument.width >= 4:
                claims.append((argument.name, size, header))
            position = header + size
    return claims, None


def _read_line(file: Any) -> bytes:
    line: bytes = file.readline()
    if not line.endswith(b"\n"):
        raise ValueError("no newline found when trying to read a line argument")
    return line[:-1]


#: The escapes ``PyBytes_DecodeEscape`` decodes without a ``DeprecationWarning``: it warns
#: about any other, and about octal escapes over 0o377.
_VALID_ESCAPE = re.compile(
    rb"\\(?:[\n\\'\"abfnrtv]|x[0-9a-fA-F]{2}|[0-3][0-7]{2}|[0-7]{1,2}(?![0-7]))"
)


def _read_quoted(file: Any) -> str:
    """STRING's argument, decoded as the C unpickler decodes it (its own *encoding* aside).

    ``ValueError`` for an escape that CPython decodes with a ``DeprecationWarning`` (which
    ``-W error`` turns into an exception that is not an ``UnpicklingError``): no pickler
    writes one. Checked first, so that decoding never warns.
    """
    data = _read_line(file)
    if len(data) < 2 or data[:1] not in (b"'", b'"') or data[-1:] != data[:1]:
        raise ValueError(f"the STRING argument {data[:40]!r} is not quoted")
    data = data[1:-1]
    position = data.find(b"\\")
    while position >= 0:
        match = _VALID_ESCAPE.match(data, position)
        if match is None:
            raise ValueError(f"invalid escape sequence {data[position : position + 4]!r}")
        position = data.find(b"\\", match.end())
    decoded: bytes = escape_decode(data)[0]
    return decoded.decode("latin-1")


def _read_name_pair(file: Any) -> str:
    """GLOBAL's and INST's argument: two lines decoded as UTF-8, as the C unpickler does
    (``pickletools`` unescapes them, which can warn), joined by a blank as ``pickletools``
    joins them."""
    module = _read_line(file).decode()
    return f"{module} {_read_line(file).decode()}"


#: Argument readers that replace pickletools' for the text-line arguments.
_SAFE_READERS: dict[str, Callable[[Any], Any]] = {
    "stringnl": _read_quoted,
    "stringnl_noescape": lambda file: _read_line(file).decode("ascii"),  # PERSID, as C reads it
    "stringnl_noescape_pair": _read_name_pair,
}

#: A payload of at least this many bytes (of an opcode in `UNFRAMED_HEADERS`) is not read by
#: `genops` from a file that can defer it (``file.defer(size)``: count it as read, its bytes
#: still the file's): its argument is then None. The vetting reader hands such a payload to
#: the unpickler as it reads it, straight into the object's buffer, instead of holding it.
DEFER_AT_LEAST = 1 << 16
_DECODERS: dict[str, Callable[[bytes], Any]] = {
    "BYTEARRAY8": bytearray,
    "BINUNICODE": lambda data: str(data, "utf-8", "surrogatepass"),
    "BINUNICODE8": lambda data: str(data, "utf-8", "surrogatepass"),
}


def _as_read(data: bytes) -> bytes:
    return data


def _deferring(field: LengthField, reader: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """*reader* (pickletools' for the payload opcode *field*), or, for a file that can defer
    payloads, one that defers those of `DEFER_AT_LEAST` bytes or more."""
    decode = _DECODERS.get(field.name, _as_read)

    def read(file: Any) -> Any:
        defer = getattr(file, "defer", None)
        if defer is None:
            return reader(file)
        head = file.read(field.width)
        if len(head) != field.width:
            raise ValueError(f"not enough data in stream to read the length of {field.name}")
        size = field.decode(head)
        if size > sys.maxsize:
            raise ValueError(f"{field.name} claims {size} bytes, more than sys.maxsize")
        if size >= DEFER_AT_LEAST:
            defer(size)
            return None
        data = file.read(size)
        if len(data) != size:
            raise ValueError(
                f"expected {size} bytes in a {field.name}, but only {len(data)} remain"
            )
        return decode(data)

    return read


_READERS: dict[bytes, Callable[[Any], Any] | None] = {
    code: None if op.arg is None else _SAFE_READERS.get(op.arg.name, op.arg.reader)
    for code, op in BY_BYTE.items()
}
for _name in UNFRAMED_HEADERS:
    _payload = BY_NAME[_name]
    assert _payload.arg is not None
    _READERS[_payload.code.encode("latin-1")] = _deferring(
        LENGTH_FIELDS[_name], _payload.arg.reader
    )


def genops(file: Any) -> Iterator[tuple[Any, Any, int]]:
    """``pickletools.genops`` with the safe readers: ``(opcode, arg, start)`` up to STOP;
    ``ValueError`` for a malformed pickle. *file* needs ``read``, ``readline``, ``tell``."""
    read, tell = file.read, file.tell
    while True:
        position = tell()
        code = read(1)
        opcode = BY_BYTE.get(code)
        if opcode is None:
            if not code:
                raise ValueError("pickle exhausted before seeing STOP")
            raise ValueError(f"at position {position}, opcode {code!r} unknown")
        reader = _READERS[code]
        yield opcode, None if reader is None else reader(file), position
        if code == b".":
            return


def opcodes(file: Any) -> Opcodes:
    """``(opcode, arg, start, end)`` for each opcode of the pickle in *file* (up to STOP).

    *file* needs ``tell``. The ``ValueError`` of `genops` for a malformed pickle becomes
    ``UnpicklingError``; an error the file raised itself (its ``io_error`` attribute, if it has
    one) passes through.
    """
    try:
        for opcode, arg, start in genops(file):
            yield opcode, arg, start, file.tell()  # genops has read exactly this opcode
    except ValueError as exc:
        if exc is getattr(file, "io_error", None):
            raise  # the file's own error, not the pickle's
        raise pickle.UnpicklingError(f"malformed pickle: {exc}") from exc


def framed(head: bytes) -> bool | None:
    """Whether a pickle that starts with *head* is framed (starts with PROTO 4 or 5), or None
    while *head* is too short to tell: only framed pickles have every opcode outside a frame
    and every length read separately, which is what a driver or a check may rely on."""
    if not head:
        return None
    if head[0] != PROTO:
        return False
    return None if len(head) < 2 else head[1] >= 4


#: The first bytes of the pickles ``pickle`` writes: PROTO (protocols 2-5), and at protocols
#: 0 and 1 MARK, the empty containers, NONE, the int, float and string opcodes and GLOBAL.
#: Data that starts otherwise is most likely not a pickle (a text file, a zip, HTTP...).
PICKLE_STARTS = frozenset(b"\x80()]}NIJKLMFGSTUVXc")
