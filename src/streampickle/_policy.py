"""Restricted loading: allowlists of globals, a validating reader, and a globals lister.

A pickle can name any importable callable and call it, so a receiver that unpickles untrusted
bytes runs whatever the sender wrote. Under an `Allowlist`, the unpickler only resolves the
exact ``(module, qualified name)`` pairs listed, and `CheckedReader` vets the opcode stream
before the C unpickler sees it: it refuses the opcodes that reach objects without going through
``find_class`` (EXT1/EXT2/EXT4) and frames that an opcode straddles (which CPython's C unpickler
reads through instead of refusing).

Nothing here does I/O of its own: `CheckedReader` reads from the file-like object it wraps,
which may be an `_engine.Source` whose reads are sans-IO requests.
"""

from __future__ import annotations

import copyreg
import io
import pickle
import pickletools
import re
import sys
import types
from _codecs import escape_decode
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol, TypedDict

from ._exceptions import LimitExceeded

__all__ = [
    "ALLOW_BUILTINS",
    "ALLOW_COLLECTIONS",
    "ALLOW_DATETIME",
    "ALLOW_DECIMAL",
    "DEFAULT_MAX_EXPANSION",
    "DEFAULT_MAX_FRAME_SIZE",
    "DEFAULT_MAX_LINE_LENGTH",
    "DEFAULT_MAX_MEMO_SIZE",
    "DEFAULT_MAX_OBJECT_SIZE",
    "DEFAULT_MAX_OPCODES",
    "DEFAULT_MAX_PAYLOAD_SIZE",
    "DEFAULT_MAX_STACK_DEPTH",
    "AllowSpec",
    "Allowlist",
    "CheckedReader",
    "ForbiddenGlobal",
    "LimitOptions",
    "Limits",
    "PolicyViolation",
    "required_globals",
]

Pair = tuple[str, str]


class PolicyViolation(pickle.UnpicklingError):
    """A restricted load refused the pickle: an opcode or framing the policy does not allow.

    ``position`` is the byte offset of the offending opcode in the stream, when known.
    """

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.position = position


class ForbiddenGlobal(PolicyViolation):
    """The pickle references a global that the allowlist does not permit.

    Raised before the global's module is imported (except when the pair is listed but resolves
    to a module object or to a known-dangerous object under another name, which can only be
    found out by resolving it). ``module`` and ``name`` are the names as judged, that is after
    the ``fix_imports`` mapping of Python 2 names.
    """

    def __init__(self, module: str, name: str, reason: str = "is not in the allowlist") -> None:
        super().__init__(f"global {module}.{name} {reason}")
        self.module = module
        self.name = name


# ---------------------------------------------------------------------------------------------
# Allowlists

#: Modules from which nothing may be allowed without ``allow_dangerous=True``: they run
#: commands, touch files, import or resolve arbitrary names, or load nested pickles.
_DANGEROUS_MODULES = frozenset(
    {
        "_ctypes", "_frozen_importlib", "_frozen_importlib_external", "_imp", "_pickle",
        "_posixsubprocess", "_signal", "_socket", "code", "codeop", "ctypes", "importlib",
        "marshal", "multiprocessing", "nt", "os", "pickle", "pkgutil", "posix", "pty", "pydoc",
        "runpy", "shelve", "shutil", "signal", "socket", "streampickle", "subprocess", "sys",
    }
)  # fmt: skip
#: Single names that are dangerous in otherwise harmless modules.
_DANGEROUS_NAMES = frozenset(
    [("builtins", name) for name in (
        "__import__", "breakpoint", "compile", "delattr", "eval", "exec", "exit", "getattr",
        "globals", "help", "input", "locals", "open", "quit", "setattr", "type", "vars",
    )]
    + [(module, name) for module in ("operator", "_operator")
       for name in ("attrgetter", "methodcaller")]
    + [(module, name) for module in ("io", "_io") for name in ("open", "open_code", "FileIO")]
    + [("codecs", "open"), ("functools", "partial"), ("functools", "partialmethod")]
)  # fmt: skip


def _is_dangerous(module: str, name: str) -> bool:
    root = module.partition(".")[0]
    return root in _DANGEROUS_MODULES or (module, name) in _DANGEROUS_NAMES


def _map_python2(module: str, name: str, fix_imports: bool) -> Pair:
    """Map a Python 2 name to its Python 3 one, as ``pickle`` does when *fix_imports* is true.

    ``pickle`` maps only at protocols 0-2; we map at every protocol, so that the pair judged by
    the allowlist is always the one resolved, whatever PROTO opcodes the pickle contains.
    """
    if not fix_imports:
        return module, name
    if (module, name) in NAME_MAPPING:
        mapped: Pair = NAME_MAPPING[(module, name)]
        return mapped
    return IMPORT_MAPPING.get(module, module), name


class Allowlist:
    """An immutable set of exact ``(module, qualified name)`` pairs a restricted load may resolve.

    Pass one as ``allow=`` to `load`, `loads` or `Unpickler`. Everything not listed is refused
    with `ForbiddenGlobal`. A dotted name (``"OrderedDict.fromkeys"``) is allowed only if that
    exact dotted pair is listed: allowing a module or a class never allows what can be reached
    from it by attribute access. Allowlists combine with ``|``; the presets `ALLOW_BUILTINS`,
    `ALLOW_COLLECTIONS`, `ALLOW_DATETIME` and `ALLOW_DECIMAL` are allowlists.

    Listing a known-dangerous name (``os.*``, ``subprocess.*``, ``builtins.eval``,
    ``builtins.getattr``, ``operator.attrgetter``, ``pickle.loads``, ...) raises ``ValueError``
    unless ``allow_dangerous=True``; the same check is applied to what a listed pair resolves
    to, so an alias (``mymodule.run = os.system``) is refused at load time. This is a guard
    rail, not a complete list: only list what your data needs. ``TypeError`` is raised for a
    pair that is not two non-empty strings.
    """

    __slots__ = ("_dangerous_ok", "_pairs")

    def __init__(self, pairs: Iterable[Pair] = (), *, allow_dangerous: bool = False) -> None:
        checked = frozenset(_check_pair(pair) for pair in pairs)
        if not allow_dangerous:
            for module, name in sorted(checked):
                if _is_dangerous(module, name):
                    raise ValueError(
                        f"{module}.{name} is known to be unsafe to allow (it can run code, "
                        "touch files or reach other globals); pass allow_dangerous=True to "
                        "list it anyway"
                    )
        self._pairs = checked
        self._dangerous_ok = allow_dangerous

    @property
    def allow_dangerous(self) -> bool:
        """Whether known-dangerous names may be listed and resolved."""
        return self._dangerous_ok

    @property
    def pairs(self) -> frozenset[Pair]:
        """The allowed ``(module, qualified name)`` pairs."""
        return self._pairs

    def __contains__(self, pair: object) -> bool:
        return pair in self._pairs

    def __iter__(self) -> Iterator[Pair]:
        return iter(sorted(self._pairs))

    def __len__(self) -> int:
        return len(self._pairs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Allowlist):
            return NotImplemented
        return (self._pairs, self.allow_dangerous) == (other._pairs, other.allow_dangerous)

    def __hash__(self) -> int:
        return hash((self._pairs, self.allow_dangerous))

    def __or__(self, other: Allowlist | Iterable[Pair]) -> Allowlist:
        other = as_allowlist(other)
        dangerous = self.allow_dangerous or other.allow_dangerous
        return Allowlist(self._pairs | other._pairs, allow_dangerous=dangerous)

    __ror__ = __or__

    def __repr__(self) -> str:
        flag = ", allow_dangerous=True" if self.allow_dangerous else ""
        return f"Allowlist({sorted(self._pairs)!r}{flag})"

    def find_class(self, module: str, name: str, *, fix_imports: bool = True) -> Any:
        """Resolve the global ``module.name`` if the allowlist permits it.

        The pair is judged after the ``fix_imports`` mapping (so ``__builtin__.eval`` is judged
        as ``builtins.eval``) and before anything is imported; then the module is imported and
        the (possibly dotted) name looked up, as ``pickle.Unpickler.find_class`` does. Raises
        `ForbiddenGlobal` if the pair is not listed, or if it resolves to a module or to a
        known-dangerous object; ``ImportError``/``AttributeError`` if it does not exist.
        """
        module, name = _map_python2(module, name, fix_imports)
        if (module, name) not in self._pairs:
            raise ForbiddenGlobal(module, name)
        sys.audit("pickle.find_class", module, name)
        __import__(module, level=0)
        obj: Any = sys.modules[module]
        for part in name.split("."):
            obj = getattr(obj, part)
        if isinstance(obj, types.ModuleType):
            raise ForbiddenGlobal(module, name, "is a module; list the names you need in it")
        canonical = (getattr(obj, "__module__", None), getattr(obj, "__qualname__", None))
        if (
            not self.allow_dangerous
            and isinstance(canonical[0], str)
            and isinstance(canonical[1], str)
            and _is_dangerous(canonical[0], canonical[1])
        ):
            raise ForbiddenGlobal(
                module, name, f"is an alias of {canonical[0]}.{canonical[1]}, a dangerous name"
            )
        return obj


def _check_pair(pair: Any) -> Pair:
    if (
        not isinstance(pair, tuple)
        or len(pair) != 2
        or not all(isinstance(part, str) and part for part in pair)
    ):
        raise TypeError(f"an allowlist entry must be a (module, qualname) tuple, got {pair!r}")
    return pair


#: What ``allow=`` accepts: an `Allowlist`, any iterable of pairs, or ``None`` (unrestricted).
AllowSpec = Allowlist | Iterable[Pair] | None


def as_allowlist(allow: Allowlist | Iterable[Pair]) -> Allowlist:
    """Return *allow* as an `Allowlist` (an iterable of pairs is checked as `Allowlist` does)."""
    return allow if isinstance(allow, Allowlist) else Allowlist(allow)


#: Builtin data types that need a global: set, frozenset, bytearray, complex, slice, range, the
#: two singletons, and ``_codecs.encode`` and ``bytes``, which protocols 0-2 use for ``bytes``.
#: Plain ints, floats, strings, bytes (protocol 3+), lists, tuples, dicts, bools and None need
#: no global at all and load under any allowlist, even an empty one.
ALLOW_BUILTINS = Allowlist(
    [("builtins", name) for name in (
        "bytearray", "bytes", "complex", "Ellipsis", "frozenset", "NotImplemented", "range",
        "set", "slice",
    )]
    + [("_codecs", "encode")]
)  # fmt: skip
#: ``collections`` types implemented in C (``Counter`` is a Python class: see docs/security.md).
#: A ``defaultdict``'s factory is a global of its own and must be allowed separately.
ALLOW_COLLECTIONS = Allowlist(
    ("collections", name) for name in ("OrderedDict", "defaultdict", "deque")
)
#: ``datetime`` types; protocols 0-2 also need ``_codecs.encode`` for their state.
ALLOW_DATETIME = Allowlist(
    [("datetime", name) for name in ("date", "datetime", "time", "timedelta", "timezone")]
    + [("_codecs", "encode")]
)
#: ``decimal.Decimal``.
ALLOW_DECIMAL = Allowlist([("decimal", "Decimal")])


# ---------------------------------------------------------------------------------------------
# Resource limits

#: Default ``max_frame_size``: CPython's picklers commit frames of ~64 KiB (at most ~130 KB).
DEFAULT_MAX_FRAME_SIZE = 16 << 20
#: Default ``max_object_size``: the bytes one pickle may span, payloads included.
DEFAULT_MAX_OBJECT_SIZE = 1 << 30
#: Default ``max_line_length`` for the text opcodes of protocols 0-2 (a protocol-0 ``str`` is
#: one line).
DEFAULT_MAX_LINE_LENGTH = 1 << 20
#: Default ``max_payload_size``: one ``bytes``/``bytearray``/``str``/long-int payload.
DEFAULT_MAX_PAYLOAD_SIZE = 64 << 20
#: Default ``max_memo_size``: the C unpickler sizes its memo table by the highest index put
#: (16 bytes per index), so this also caps that table at 16 MiB.
DEFAULT_MAX_MEMO_SIZE = 1 << 20
#: Default ``max_opcodes``: a pickle of 100,000 small dicts takes 1.1 million. One opcode can
#: build up to ~230 bytes of objects (an empty set), so this bounds what a pickle of few bytes
#: can make the receiver allocate.
DEFAULT_MAX_OPCODES = 1 << 20
#: Default ``max_stack_depth``: items plus open marks on the unpickler's stack (a tuple's
#: items are all on the stack before TUPLE; nesting a list or dict adds an item and a mark).
DEFAULT_MAX_STACK_DEPTH = 100_000
#: Default ``max_expansion``: what the calls of one pickle may build (items, or bytes of a
#: ``bytes``/``bytearray``) beyond twice the bytes received. Every pickle the standard library
#: writes needs none of it; a hostile one gets ``set(range(65536))`` (~4 MB) or
#: ``bytes(65536)`` out of a few bytes.
DEFAULT_MAX_EXPANSION = 1 << 16


@dataclass(frozen=True)
class Limits:
    """Per-pickle resource limits; ``None`` disables one. `LimitExceeded` names the one hit.

    Checked by every async load (``aload``, ``aiter_load``, ``PickleStream``): *max_frame_size*
    (a protocol 4/5 frame), *max_object_size* (the bytes one pickle spans), *max_line_length*
    (a line of the text opcodes of protocols 0-2). Each is checked before the bytes are
    read or a buffer of the claimed size is allocated.

    Checked by restricted loads only (``allow=`` given), because they need the opcode-by-opcode
    vetting that restricted loading does anyway (and without an allowlist a hostile pickle can
    run code, so limits would not protect the receiver): *max_payload_size* (one ``bytes``,
    ``bytearray``, ``str`` or long-int payload), *max_memo_size* (the highest memo index + 1,
    and the number of memo entries a pickle makes), *max_opcodes*, *max_stack_depth* (items
    plus open marks) and *max_expansion* (what the calls of allowed callables build, in items
    or bytes, beyond twice the bytes received so far). They are checked before the unpickler
    acts on the opcode. A restricted
    load also checks the first three itself, so they hold for the sync ``load``/``loads`` too.
    """

    max_frame_size: int | None = DEFAULT_MAX_FRAME_SIZE
    max_object_size: int | None = DEFAULT_MAX_OBJECT_SIZE
    max_line_length: int | None = DEFAULT_MAX_LINE_LENGTH
    max_payload_size: int | None = DEFAULT_MAX_PAYLOAD_SIZE
    max_memo_size: int | None = DEFAULT_MAX_MEMO_SIZE
    max_opcodes: int | None = DEFAULT_MAX_OPCODES
    max_stack_depth: int | None = DEFAULT_MAX_STACK_DEPTH
    max_expansion: int | None = DEFAULT_MAX_EXPANSION

    def check(self, what: str, size: int, limit: str, *, unit: str = "bytes") -> None:
        """Raise `LimitExceeded` if *size* exceeds the limit named *limit*."""
        maximum: int | None = getattr(self, limit)
        if maximum is not None and size > maximum:
            raise LimitExceeded(what, size, limit, maximum, unit=unit)


class RestrictedLimitOptions(TypedDict, total=False):
    """The fields of `Limits` that only restricted loads check, as keyword arguments."""

    max_payload_size: int | None
    max_memo_size: int | None
    max_opcodes: int | None
    max_stack_depth: int | None
    max_expansion: int | None


class LimitOptions(RestrictedLimitOptions, total=False):
    """The fields of `Limits`, as keyword arguments of the load functions."""

    max_frame_size: int | None
    max_object_size: int | None
    max_line_length: int | None


def restricted_options(allow: AllowSpec, options: RestrictedLimitOptions) -> RestrictedLimitOptions:
    """*options*; ``TypeError`` if any is given without *allow* (it would silently not apply)."""
    if allow is None and options:
        raise TypeError(
            f"{', '.join(sorted(options))} only apply to restricted loads: pass allow= as well "
            "(an unrestricted pickle can run code, so opcode limits would not protect you)"
        )
    return options


# ---------------------------------------------------------------------------------------------
# The validating reader


class _Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...
    def readline(self) -> bytes: ...


_EXTENSION_OPCODES = frozenset({"EXT1", "EXT2", "EXT4"})
_MEMO_PUT = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_MARK = pickletools.markobject
#: Opcodes whose payload may follow their frame: the pickler commits the frame after the
#: opcode and length field of a payload of 64 KiB or more, and writes the payload unframed.
#: Value: the size of the opcode and length field.
_PAYLOAD_HEADERS = {"BINBYTES": 5, "BINUNICODE": 5, "BINBYTES8": 9, "BINUNICODE8": 9}
_PAYLOAD_HEADERS["BYTEARRAY8"] = 9

_BY_CODE = {opcode.code: opcode for opcode in pickletools.opcodes}
_BY_BYTE = {opcode.code.encode("latin-1"): opcode for opcode in pickletools.opcodes}

Opcodes = Generator[tuple[Any, Any, int, int], None, None]


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
_READERS: dict[bytes, Callable[[Any], Any] | None] = {
    code: None if op.arg is None else _SAFE_READERS.get(op.arg.name, op.arg.reader)
    for code, op in _BY_BYTE.items()
}


def _genops(file: Any) -> Iterator[tuple[Any, Any, int]]:
    """``pickletools.genops`` with the readers of `_READERS`: ``(opcode, arg, start)`` up to
    STOP; ``ValueError`` for a malformed pickle. *file* needs ``read``, ``readline``, ``tell``."""
    read, tell = file.read, file.tell
    while True:
        position = tell()
        code = read(1)
        opcode = _BY_BYTE.get(code)
        if opcode is None:
            if not code:
                raise ValueError("pickle exhausted before seeing STOP")
            raise ValueError(f"at position {position}, opcode {code!r} unknown")
        reader = _READERS[code]
        yield opcode, None if reader is None else reader(file), position
        if code == b".":
            return


def _opcodes(file: Any) -> Opcodes:
    """``(opcode, arg, start, end)`` for each opcode of the pickle in *file* (up to STOP).

    *file* needs ``tell``. The ``ValueError`` of `_genops` for a malformed pickle becomes
    ``UnpicklingError``.
    """
    try:
        for opcode, arg, start in _genops(file):
            yield opcode, arg, start, file.tell()  # _genops has read exactly this opcode
    except ValueError as exc:
        if exc is getattr(file, "io_error", None):
            raise  # the file's own error, not the pickle's
        raise pickle.UnpicklingError(f"malformed pickle: {exc}") from exc


#: Argument bytes before a payload, for the opcodes that carry one (their size is checked
#: against max_payload_size).
_PAYLOAD_WIDTHS = {
    "BINBYTES": 4, "SHORT_BINBYTES": 1, "BINBYTES8": 8, "BYTEARRAY8": 8, "BINUNICODE": 4,
    "SHORT_BINUNICODE": 1, "BINUNICODE8": 8, "BINSTRING": 4, "SHORT_BINSTRING": 1, "LONG1": 1,
    "LONG4": 4,
}  # fmt: skip
#: pickletools reads an argument in one read() call; only payloads are longer than this.
_LONGEST_FIXED_ARGUMENT = 8
#: Claimed payloads and frames are read in pieces of at most this much, so that a length
#: claim never allocates more than the bytes that actually arrive (plus one piece).
_PIECE = 1 << 20


# ---------------------------------------------------------------------------------------------
# The model of the unpickler's stack and memo, and of the calls it makes
#
# Calls are where a few bytes can become gigabytes: ``bytes(10**9)``, ``set(range(10**9))``,
# or a big object received once and copied by many calls through the memo. The vetting pass
# keeps a model of every value on the unpickler's stack and in its memo: the callable a
# GLOBAL/STACK_GLOBAL/INST names, literal ints, the lengths of strings, bytes, containers
# (also as APPEND/SETITEM/ADDITEMS grow them) and ranges, the items of small tuples. Each call
# of a callable in `_CALLABLES` is then sized before the unpickler makes it: what it builds (a
# bytes/bytearray's bytes, a container's items, what an iteration copies) is added up, and the
# total may exceed twice the bytes received so far by at most ``max_expansion``. Every pickle the
# standard library writes stays well within that: its calls copy what was sent, at most twice
# over (protocols 0-2 write a bytearray as ``bytearray(_codecs.encode(text, "latin1"))``).
#
# The callables of the presets, and why each is or is not an amplifier:
#
# * ``bytes``, ``bytearray``: ``bytes(n)`` zero-fills n bytes; from an iterable (a ``range``)
#   or a buffer they copy its length; from a str and an encoding, see ``_codecs.encode``.
#   Modelled. (NEWOBJ's ``bytearray.__new__`` ignores its arguments: sized as a call anyway.)
# * ``set``, ``frozenset``; ``collections.deque``, ``OrderedDict``, ``defaultdict`` (its
#   second argument): copy an iterable or mapping. Modelled, and so are ``list``, ``tuple``,
#   ``dict``, ``dict.fromkeys``, ``sorted``, ``collections.Counter`` and
#   ``OrderedDict.fromkeys`` for allowlists that list them. A ``deque``'s *maxlen* bounds its
#   memory, not the time spent iterating, so the whole iterable counts.
# * ``range``: 48 bytes whatever its length, but an iterable of any length: a call fed a range
#   is sized by the range's length; a range whose bounds are not literal ints below 2**63 has
#   no known length, and a modelled call fed one is refused.
# * ``_codecs.encode(obj, encoding, errors)``: output per input character up to ~92 bytes
#   (``errors="namereplace"``: ``\N{...}``) plus headers (bz2). Sized as its input for
#   latin-1/ASCII with strict errors (what protocols 0-2 write), 4x for UTF-8, otherwise
#   `_WORST_CODEC_FACTOR`x plus `_WORST_CODEC_OVERHEAD`.
# * ``decimal.Decimal``: its digits are as long as the string or digit tuple it parses (an
#   exponent costs nothing: ``Decimal("1e999999999")`` is small). Sized as that length; an int
#   argument is below 2**63 (longer ints are not modelled, and refused here).
# * ``complex``, ``slice``, the ``datetime`` types: fixed-size objects (ints checked against
#   their ranges, ``complex`` parses a string into two floats, ``slice`` and ``timezone`` keep
#   references). ``Ellipsis`` and ``NotImplemented`` are not callable. Not modelled: trusted.
# * ``copyreg._reconstructor``/``__newobj__``/``__newobj_ex__`` call their base or class: the
#   model follows them (``_reconstructor(set, set, range(10**9))`` fills a set).
#
# No preset reaches ``str.__mul__`` or similar: methods are globals of their own, allowed only
# if their dotted pair is listed, and no opcode multiplies or formats. Callables that walk
# nested objects (``str``, ``repr``, ``collections.UserString``...) cannot be bounded by a
# container's length: do not allow them. Callables not in `_CALLABLES` (the fixed-size ones
# above, and whatever else an allowlist lists) are called with the sender's arguments unsized.


class _Sized:
    """The model of an object whose length is known (a str, bytes, tuple, frozenset, range,
    or what a modelled call built); ``size`` is None for a range of unknown length."""

    __slots__ = ("size",)

    def __init__(self, size: int | None) -> None:
        self.size = size


class _Box(_Sized):
    """The model of a mutable container (list, dict, set, bytearray, deque...): APPEND(S),
    SETITEM(S) and ADDITEMS add to its size, seen through every reference to it."""

    __slots__ = ()


#: A call's arguments are kept in the model of a tuple up to this many (every modelled
#: callable takes fewer; a longer tuple is only a length).
_ARGS_KEPT = 8


class _Tuple(_Sized):
    """The model of a tuple; ``items`` holds its items' models if it has at most `_ARGS_KEPT`."""

    __slots__ = ("items",)

    def __init__(self, items: list[Any]) -> None:
        super().__init__(len(items))
        self.items = tuple(items) if len(items) <= _ARGS_KEPT else None


class _Opaque:
    """A value the model knows nothing about; ``what`` describes it for error messages."""

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __repr__(self) -> str:
        return f"<{self.what}>"


#: The result of a call the model does not follow, a persistent ID or an out-of-band buffer.
_ANY = _Opaque("an object built by a call the vetting pass does not model")
#: A global that is not in `_CALLABLES`: the allowlist lets it through, calls of it are trusted.
_FOREIGN = _Opaque("a global")
#: A memo entry that was never put (the unpickler will fail on it).
_MISSING = _Opaque("a missing memo entry")
#: Literal ints are modelled below this magnitude (a longer one is `_ANY`: not kept, and a
#: size or range bound that large is refused).
_BIG = 1 << 63
_SIZES = tuple(_Sized(size) for size in range(256))  # shared: immutable, and common
_EMPTY_TUPLE = _Tuple([])


def _sized(size: int) -> _Sized:
    return _SIZES[size] if size < 256 else _Sized(size)


class _Unsized(Exception):
    """A modelled call is given a value whose length the model does not know."""


def _length(value: Any) -> int:
    """How many items, bytes or characters copying *value* yields; 0 for what cannot be
    iterated (the call will fail); `_Unsized` for what the model cannot size."""
    if type(value) is str:
        return len(value)
    if isinstance(value, _Sized):
        if value.size is None:
            raise _Unsized("a range whose bounds are not literal ints below 2**63")
        return value.size
    if value is None or type(value) in (int, bool):
        return 0
    raise _Unsized(value.what if isinstance(value, _Opaque) else "a global")


#: Output bytes per input character of ``str.encode`` with strict errors, for the encodings
#: pickles use; any other encoding or error handler gets the worst factor of the codecs.
_CODEC_FACTORS = dict.fromkeys(
    ["latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1", "ascii", "us-ascii"], 1
) | dict.fromkeys(["utf-8", "utf8", "utf_8"], 4)
_WORST_CODEC_FACTOR = 100  # "\N{...}" of the longest character name (88) is 92 bytes
_WORST_CODEC_OVERHEAD = 1024  # headers: bz2 writes ~40 bytes for one byte


def _encoded_size(source: Any, encoding: Any = "utf-8", errors: Any = "strict") -> int:
    size = _length(source)
    factor = _CODEC_FACTORS.get(encoding) if errors == "strict" else None
    if factor is None:
        return size * _WORST_CODEC_FACTOR + _WORST_CODEC_OVERHEAD
    return size * factor


#: A modelled callable's model: its positional arguments' models -> (the items or bytes the
#: call builds, the model of its result). `_Unsized` if an argument cannot be sized.
Model = Callable[[tuple[Any, ...]], tuple[int, Any]]


def _byte_string(result: Callable[[int], _Sized]) -> Model:
    """``bytes``/``bytearray``: empty, zero-filled to an int, a copy, or an encoded str."""

    def model(args: tuple[Any, ...]) -> tuple[int, Any]:
        if not args:
            return 0, result(0)
        if len(args) > 1:
            size = _encoded_size(*args[:3])
        elif type(args[0]) in (int, bool):
            size = max(args[0], 0)
        else:
            size = _length(args[0])
        return size, result(size)

    return model


def _copy(result: Callable[[int], _Sized], position: int = 0) -> Model:
    """A constructor that copies the iterable or mapping it gets at *position*."""

    def model(args: tuple[Any, ...]) -> tuple[int, Any]:
        size = _length(args[position]) if len(args) > position else 0
        return size, result(size)

    return model


def _range(args: tuple[Any, ...]) -> tuple[int, Any]:
    if not 1 <= len(args) <= 3 or not all(type(arg) in (int, bool) for arg in args):
        return 0, _Sized(None)  # bounds too big for the model, or not ints (the call fails)
    start, stop, step = (0, args[0], 1) if len(args) == 1 else (*args, 1)[:3]
    if step == 0:
        return 0, None  # ValueError
    return 0, _Sized(max(0, (stop - start + step - (1 if step > 0 else -1)) // step))


def _decimal(args: tuple[Any, ...]) -> tuple[int, Any]:
    value = args[0] if args else None
    if type(value) is _Tuple and value.items is not None and len(value.items) == 3:
        return _length(value.items[1]), None  # (sign, digits, exponent)
    return (0 if type(value) in (int, bool) else _length(value)), None


#: Models of the copyreg helpers: they call another callable, whose model applies.
Forward = Callable[[tuple[Any, ...]], tuple[Any, tuple[Any, ...] | None]]


def _reconstructor(args: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...] | None]:
    # base.__new__(cls, state) and base.__init__(obj, state): base(state) builds as much.
    return (args[1], args[2:]) if len(args) == 3 else (_FOREIGN, ())


def _newobj(args: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...] | None]:
    return (args[0], args[1:]) if args else (_FOREIGN, ())


def _newobj_ex(args: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...] | None]:
    if len(args) != 3:
        return _FOREIGN, ()
    return args[0], _call_arguments(args[1], args[2])


def _call_arguments(args: Any, kwargs: Any = None) -> tuple[Any, ...] | None:
    """The positional arguments' models of a call, or None if the model does not know them
    (keyword arguments, a long or unknown tuple)."""
    no_kwargs = kwargs is None or (type(kwargs) is _Box and not kwargs.size)
    return args.items if type(args) is _Tuple and no_kwargs else None


@dataclass(frozen=True)
class _Callable:
    """A global whose calls the model sizes: *model* (or *forward*, for the copyreg helpers)."""

    name: str
    model: Model | None = None
    forward: Forward | None = None


def _table() -> dict[Pair, _Callable]:
    models: dict[Pair, Model] = {
        ("builtins", "bytes"): _byte_string(_sized),
        ("builtins", "bytearray"): _byte_string(_Box),
        ("builtins", "range"): _range,
        ("_codecs", "encode"): lambda args: (size := _encoded_size(*args[:3]), _sized(size)),
        ("decimal", "Decimal"): _decimal,
        ("collections", "defaultdict"): _copy(_Box, position=1),
    }
    for pair, result in [
        (("builtins", "set"), _Box), (("builtins", "frozenset"), _sized),
        (("builtins", "list"), _Box), (("builtins", "tuple"), _sized),
        (("builtins", "dict"), _Box), (("builtins", "dict.fromkeys"), _Box),
        (("builtins", "sorted"), _Box), (("collections", "deque"), _Box),
        (("collections", "OrderedDict"), _Box), (("collections", "OrderedDict.fromkeys"), _Box),
        (("collections", "Counter"), _Box),
    ]:  # fmt: skip
        models[pair] = _copy(result)
    models[("codecs", "encode")] = models[("_codecs", "encode")]
    table = {pair: _Callable(".".join(pair), model) for pair, model in models.items()}
    for name, forward in [
        ("_reconstructor", _reconstructor), ("__newobj__", _newobj), ("__newobj_ex__", _newobj_ex),
    ]:  # fmt: skip
        table[("copyreg", name)] = _Callable(f"copyreg.{name}", forward=forward)
    return table


_CALLABLES = _table()
#: The strings the model keeps as values (others are only lengths): the parts of the pairs
#: in `_CALLABLES` and their Python 2 spellings (for STACK_GLOBAL), and encoding arguments.
_NAMES = frozenset(
    {part for pair in _CALLABLES for part in pair}
    | {part for old, new in NAME_MAPPING.items() if new in _CALLABLES for part in old}
    | {old for old, new in IMPORT_MAPPING.items() if new in {m for m, _ in _CALLABLES}}
    | _CODEC_FACTORS.keys()
    | {"strict"}
)


def _global(module: Any, name: Any) -> Any:
    """The model of the global ``module.name`` (strings as the model keeps them)."""
    if type(module) is not str or type(name) is not str:
        return _FOREIGN
    return _CALLABLES.get(_map_python2(module, name, True), _FOREIGN)


class _Memo:
    """The model of the unpickler's memo. It lives as long as the reader, as the unpickler's
    memo lives across its ``load()`` calls. A list: the index is checked against
    max_memo_size before it is put."""

    __slots__ = ("count", "values")

    def __init__(self) -> None:
        self.values: list[Any] = []
        self.count = 0  # entries put: where MEMOIZE puts, as in the C unpickler

    def put(self, index: int, value: Any) -> None:
        values = self.values
        if index < 0:
            return  # the unpickler refuses a negative index
        if index >= len(values):
            values.extend([_MISSING] * (index + 1 - len(values)))
        if values[index] is _MISSING:
            self.count += 1
        values[index] = value

    def get(self, index: int) -> Any:
        return self.values[index] if 0 <= index < len(self.values) else _MISSING


class _Rules:
    """Refuses, opcode by opcode in stream order, what a restricted load must not act on, and
    counts what one pickle uses of the opcode `Limits`.

    It keeps a model of the unpickler's stack (values as described above, and the depths at
    which the open marks were set; items below the topmost mark, the "fence", cannot be
    popped) and of its memo (*memo*, shared by the pickles of one reader). *origin* is the
    stream offset where the pickle starts. This runs for every opcode, so the common case is
    kept to a few operations.
    """

    def __init__(self, limits: Limits, memo: _Memo | None = None, origin: int = 0) -> None:
        self.limits = limits
        self.memo = _Memo() if memo is None else memo
        self.origin = origin
        self.frame_end = -1  # stream offset where the current frame ends
        self.opcodes = 0
        self.stack: list[Any] = []
        self.fence = 0
        self.marks: list[int] = []
        self.memo_writes = 0
        self.built = 0  # items and bytes that the modelled calls build
        self.max_opcodes = _or_max(limits.max_opcodes)
        self.max_stack_depth = _or_max(limits.max_stack_depth)

    def check(self, name: str, arg: Any, start: int, end: int) -> None:
        """Raise `PolicyViolation` if the opcode *name* at ``[start, end)`` is refused,
        `LimitExceeded` if it exceeds a limit, ``UnpicklingError`` if it underflows the stack."""
        if name in _FRAMING or start < self.frame_end < end:
            self._check_framing(name, arg, start, end)
        self.opcodes += 1
        if self.opcodes > self.max_opcodes:
            self.limits.check("pickle", self.opcodes, "max_opcodes", unit="opcodes")
        if name in _SIZED:
            self._check_size(name, arg, end - start)
        _MODEL.get(name, _unknown_opcode)(self, name, arg, start, end)
        if len(self.stack) + len(self.marks) > self.max_stack_depth:
            depth = len(self.stack) + len(self.marks)
            self.limits.check("stack", depth, "max_stack_depth", unit="items")

    def _check_framing(self, name: str, arg: Any, start: int, end: int) -> None:
        if start < self.frame_end:
            if name == "FRAME":
                self._refuse(f"FRAME at position {start} is inside another frame", start)
            if end > self.frame_end and start + _PAYLOAD_HEADERS.get(name, 0) != self.frame_end:
                self._refuse(
                    f"{name} at position {start} straddles the end of its frame (pickle's "
                    "frame rules forbid it; CPython's C unpickler reads through it)",
                    start,
                )
            if name == "STOP" and end != self.frame_end:
                self._refuse(f"the frame around STOP at position {start} runs past it", start)
        if name == "FRAME":
            self.frame_end = end + arg
        elif name in _EXTENSION_OPCODES:
            self._refuse(
                f"{name} (copyreg extension code {arg}) at position {start} is refused under "
                "an allowlist: extension codes reach cached objects without find_class",
                start,
            )

    def _check_size(self, name: str, arg: Any, length: int) -> None:
        """Check a payload's size, or a memo index, against its limit."""
        width = _PAYLOAD_WIDTHS.get(name)
        if width is not None:
            self.limits.check(f"{name} payload", length - 1 - width, "max_payload_size")
            return
        # The C unpickler grows its memo table to the index put (MEMOIZE puts at the number
        # of entries), so the index is what costs memory.
        index = arg if name != "MEMOIZE" else self.memo.count
        self.memo_writes += 1
        entries = max(index + 1, self.memo_writes)
        self.limits.check("memo", entries, "max_memo_size", unit="entries")

    # -- the stack -------------------------------------------------------------------------

    def pop(self, count: int, name: str, start: int) -> list[Any]:
        """Pop *count* items (``UnpicklingError`` if the fence is in the way)."""
        stack = self.stack
        keep = len(stack) - count
        if keep < self.fence:
            self._underflow(name, start)
        popped = stack[keep:]
        del stack[keep:]
        return popped

    def pop_mark(self, name: str, start: int, below: int = 0) -> list[Any]:
        """Pop the items above the topmost mark, and the mark; *below* items must stay under
        it, above the next fence (the list APPENDS extends...)."""
        marks = self.marks
        if not marks:
            raise pickle.UnpicklingError(
                f"malformed pickle: {name} at position {start} finds no MARK"
            )
        mark = marks.pop()
        self.fence = marks[-1] if marks else 0
        if mark - below < self.fence:
            self._underflow(name, start)
        items = self.stack[mark:]
        del self.stack[mark:]
        return items

    def need(self, count: int, name: str, start: int) -> None:
        """``UnpicklingError`` unless *count* items are above the fence."""
        if len(self.stack) - count < self.fence:
            self._underflow(name, start)

    def grow(self, target: Any, items: int) -> None:
        """APPEND(S)/SETITEM(S)/ADDITEMS added *items* to the container modelled by *target*."""
        if type(target) is _Box and target.size is not None:
            target.size += items

    @staticmethod
    def _underflow(name: str, start: int) -> NoReturn:
        raise pickle.UnpicklingError(
            f"malformed pickle: {name} at position {start} pops more than the stack holds"
        )

    @staticmethod
    def _refuse(message: str, position: int) -> None:
        raise PolicyViolation(message, position)

    # -- calls -----------------------------------------------------------------------------

    def call(
        self, func: Any, args: tuple[Any, ...] | None, start: int, end: int, hops: int = 0
    ) -> Any:
        """The model of what calling *func* with *args* (positional arguments' models, None if
        unknown) returns; charge what it builds. `PolicyViolation` if *func* is modelled and
        its arguments are not known or cannot be sized, or if copyreg helpers call each other
        more than `_MAX_HOPS` deep (*hops* counts them)."""
        if type(func) is not _Callable:
            if func is _ANY and args is not None:  # a call's result called: size it crudely
                self.charge("a call of a call's result", _crude_size(args), start, end)
            return _ANY  # _FOREIGN: a global the allowlist trusts
        if args is None:
            self._refuse(
                f"{func.name} at position {start} is called with keyword arguments or more "
                f"than {_ARGS_KEPT} arguments: the vetting pass cannot size the call",
                start,
            )
            return _ANY
        try:
            if func.forward is not None:
                if hops == _MAX_HOPS:
                    raise _Unsized(f"copyreg helpers calling each other {hops} deep")
                return self.call(*func.forward(args), start, end, hops + 1)
            assert func.model is not None
            built, result = func.model(args)
        except _Unsized as exc:
            self._refuse(
                f"{func.name} at position {start} is given {exc}: a restricted load cannot "
                "bound what the call would build",
                start,
            )
            return _ANY
        if built:
            self.charge(func.name, built, start, end)
        return result

    def charge(self, name: str, built: int, start: int, end: int) -> None:
        """Add *built* to what the pickle's calls built; `LimitExceeded` if that exceeds twice
        the bytes received by more than max_expansion."""
        self.built += built
        received = end - self.origin
        self.limits.check(
            f"what calls built beyond twice the {received} bytes received "
            f"(the last, {name} at position {start})",
            self.built - 2 * received,
            "max_expansion",
            unit="items or bytes",
        )


#: How deep copyreg helpers may call each other (one level is what pickles need).
_MAX_HOPS = 4


def _crude_size(args: tuple[Any, ...]) -> int:
    """An upper bound of what a callable the model cannot see builds from *args*: ints taken
    as sizes, and the lengths of what it could copy."""
    total = 0
    for arg in args:
        if type(arg) in (int, bool):
            total += max(arg, 0)
        elif type(arg) is str or (isinstance(arg, _Sized) and arg.size is not None):
            total += _length(arg)
    return total


def _or_max(limit: int | None) -> int:
    return sys.maxsize if limit is None else limit


_FRAMING = _EXTENSION_OPCODES | {"FRAME", "STOP"}
_SIZED = _PAYLOAD_WIDTHS.keys() | _MEMO_PUT | {"MEMOIZE"}


# -- what each opcode does to the model ------------------------------------------------------
# Each takes (rules, name, arg, start, end). The checks of the stack are the C unpickler's.

Handler = Callable[[_Rules, str, Any, int, int], None]


def _pusher(value: Callable[[Any], Any]) -> Handler:
    def push(rules: _Rules, name: str, arg: Any, start: int, end: int) -> None:
        rules.stack.append(value(arg))

    return push


def _payload_pusher(kind: Callable[[int], _Sized], text: bool = False) -> Handler:
    """A str/bytes/bytearray push. Its argument is None for a payload read after its frame."""

    def push(rules: _Rules, name: str, arg: Any, start: int, end: int) -> None:
        if arg is None:
            rules.stack.append(kind(end - start - _PAYLOAD_HEADERS[name]))
        elif text and arg in _NAMES:
            rules.stack.append(arg)
        else:
            rules.stack.append(kind(len(arg)))

    return push


def _builder(count: int | None, build: Callable[[list[Any]], Any]) -> Handler:
    """An opcode that pops *count* items (those above the mark if None) and pushes one."""

    def handle(rules: _Rules, name: str, arg: Any, start: int, end: int) -> None:
        items = rules.pop_mark(name, start) if count is None else rules.pop(count, name, start)
        rules.stack.append(build(items))

    return handle


def _grower(count: int | None, per_item: int = 1) -> Handler:
    """APPEND/SETITEM (*count* items) and APPENDS/SETITEMS/ADDITEMS (those above the mark)
    add to the container below them."""

    def handle(rules: _Rules, name: str, arg: Any, start: int, end: int) -> None:
        if count is None:
            items = len(rules.pop_mark(name, start, below=1))
        else:
            rules.need(count + 1, name, start)
            del rules.stack[-count:]
            items = count
        rules.grow(rules.stack[-1], items // per_item)

    return handle


def _put(rules: _Rules, name: str, arg: Any, start: int, end: int) -> None:
    rules.need(1, name, start)
    rules.memo.put(arg if name != "MEMOIZE" else rules.memo.count, rules.stack[-1])


def _get(rules: _Rules, name: str, arg: Any, start: int, end: int) -> None:
    rules.stack.append(rules.memo.get(arg))


def _dup(rules: _Rules, name: str, arg: Any, start: int, end: int) -> None:
    rules.need(1, name, start)
    rules.stack.append(rules.stack[-1])


def _mark(rules: _Rules, name: str, arg: Any, start: int, end: int) -> None:
    rules.fence = len(rules.stack)
    rules.marks.append(rules.fence)


def _pop(rules: _Rules, name: str, arg: Any, start: int, end: int) -> None:
    if rules.marks and rules.marks[-1] == len(rules.stack):  # pops the mark, as C does
        rules.pop_mark(name, start)
    else:
        rules.pop(1, name, start)


def _pop_only(count: int) -> Handler:
    """BUILD and READONLY_BUFFER: they need *count* items and pop all but one."""

    def handle(rules: _Rules, name: str, arg: Any, start: int, end: int) -> None:
        rules.need(count, name, start)
        del rules.stack[len(rules.stack) - count + 1 :]

    return handle


def _stack_global(rules: _Rules, name: str, arg: Any, start: int, end: int) -> None:
    rules.stack.append(_global(*rules.pop(2, name, start)))


def _reduce(rules: _Rules, name: str, arg: Any, start: int, end: int) -> None:
    func, args = rules.pop(2, name, start)
    rules.stack.append(rules.call(func, _call_arguments(args), start, end))


def _reduce_ex(rules: _Rules, name: str, arg: Any, start: int, end: int) -> None:
    func, args, kwargs = rules.pop(3, name, start)
    rules.stack.append(rules.call(func, _call_arguments(args, kwargs), start, end))


def _obj(rules: _Rules, name: str, arg: Any, start: int, end: int) -> None:
    items = rules.pop_mark(name, start)
    if not items:
        rules._underflow(name, start)
    args = tuple(items[1:]) if len(items) <= _ARGS_KEPT + 1 else None
    rules.stack.append(rules.call(items[0], args, start, end))


def _inst(rules: _Rules, name: str, arg: Any, start: int, end: int) -> None:
    items = rules.pop_mark(name, start)
    args = tuple(items) if len(items) <= _ARGS_KEPT else None
    rules.stack.append(rules.call(_global(*arg.split(" ", 1)), args, start, end))


def _stop(rules: _Rules, name: str, arg: Any, start: int, end: int) -> None:
    rules.pop(1, name, start)


def _pop_mark(rules: _Rules, name: str, arg: Any, start: int, end: int) -> None:
    rules.pop_mark(name, start)


def _nothing(rules: _Rules, name: str, arg: Any, start: int, end: int) -> None:
    pass


def _unknown_opcode(rules: _Rules, name: str, arg: Any, start: int, end: int) -> None:
    """An opcode newer than this model: its stack effect from pickletools, results unknown."""
    opcode = _BY_NAME[name]
    if _MARK in opcode.stack_before:
        rules.pop_mark(name, start, below=opcode.stack_before.index(_MARK))
        rules.pop(opcode.stack_before.index(_MARK), name, start)
    else:
        rules.pop(len(opcode.stack_before), name, start)
    rules.stack.extend(_ANY for _ in opcode.stack_after)


_BY_NAME = {opcode.name: opcode for opcode in pickletools.opcodes}
_push_int = _pusher(lambda arg: arg if -_BIG < arg < _BIG else _ANY)
_push_text = _payload_pusher(_sized, text=True)
_TEXT_OPCODES = ["STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE"]
_TEXT_OPCODES += ["SHORT_BINUNICODE", "BINUNICODE8"]
_MODEL: dict[str, Handler] = {
    **dict.fromkeys(["INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"], _push_int),
    **dict.fromkeys(["NONE", "FLOAT", "BINFLOAT"], _pusher(lambda arg: None)),
    "NEWTRUE": _pusher(lambda arg: True),
    "NEWFALSE": _pusher(lambda arg: False),
    **dict.fromkeys(["PERSID", "NEXT_BUFFER"], _pusher(lambda arg: _ANY)),
    **dict.fromkeys(_TEXT_OPCODES, _push_text),
    **dict.fromkeys(["BINBYTES", "SHORT_BINBYTES", "BINBYTES8"], _payload_pusher(_sized)),
    "BYTEARRAY8": _payload_pusher(_Box),
    **dict.fromkeys(["EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET"], _pusher(lambda arg: _Box(0))),
    "EMPTY_TUPLE": _pusher(lambda arg: _EMPTY_TUPLE),
    "TUPLE": _builder(None, _Tuple),
    "TUPLE1": _builder(1, _Tuple),
    "TUPLE2": _builder(2, _Tuple),
    "TUPLE3": _builder(3, _Tuple),
    "LIST": _builder(None, lambda items: _Box(len(items))),
    "DICT": _builder(None, lambda items: _Box(len(items) // 2)),
    "FROZENSET": _builder(None, lambda items: _sized(len(items))),
    "BINPERSID": _builder(1, lambda items: _ANY),
    "APPEND": _grower(1),
    "APPENDS": _grower(None),
    "SETITEM": _grower(2, per_item=2),
    "SETITEMS": _grower(None, per_item=2),
    "ADDITEMS": _grower(None),
    **dict.fromkeys(["PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"], _put),
    **dict.fromkeys(["GET", "BINGET", "LONG_BINGET"], _get),
    "DUP": _dup,
    "MARK": _mark,
    "POP": _pop,
    "POP_MARK": _pop_mark,
    "BUILD": _pop_only(2),
    "READONLY_BUFFER": _pop_only(1),
    "STOP": _stop,
    "GLOBAL": _pusher(lambda arg: _global(*arg.split(" ", 1))),
    "STACK_GLOBAL": _stack_global,
    "REDUCE": _reduce,
    "NEWOBJ": _reduce,
    "NEWOBJ_EX": _reduce_ex,
    "OBJ": _obj,
    "INST": _inst,
    **dict.fromkeys(["PROTO", "FRAME", "EXT1", "EXT2", "EXT4"], _nothing),
}


class _Recorder:
    """The file the opcode parser reads: forwards to *inner*, keeps every byte it returns, and
    checks the byte limits before each read."""

    def __init__(self, inner: _Readable, record: deque[bytes], limits: Limits) -> None:
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
        if size > _LONGEST_FIXED_ARGUMENT:
            # The pickle's total first, as aload's reader checks it (a same error either way).
            self._limits.check("pickle", self.position - self.start + size, "max_object_size")
            self._limits.check("payload", size, "max_payload_size")
        return self.read_raw(size)

    def read_raw(self, size: int) -> bytes:
        """Read *size* bytes (fewer at end of stream), in pieces of at most `_PIECE`."""
        self._limits.check("pickle", self.position - self.start + size, "max_object_size")
        pieces = []
        remaining = size
        while remaining and not self.eof:
            asked = min(remaining, _PIECE)
            piece = self._call(self._inner.read, asked)
            pieces.append(self._keep(piece, len(piece) < asked))
            remaining -= len(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def readline(self) -> bytes:
        data = self._call(self._inner.readline)
        self._limits.check("line", len(data), "max_line_length")
        self._limits.check("pickle", self.position - self.start + len(data), "max_object_size")
        return self._keep(data, not data.endswith(b"\n"))

    def _call(self, method: Callable[..., bytes], *args: int) -> bytes:
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

    It reads *inner* with ``read``/``readline`` only, never past the pickle's STOP: one read
    per frame (checked as a whole, at C speed), one per field outside frames. It has no
    ``peek``, so the unpickler never reads ahead of it. Cost: the check of each opcode (about
    the C unpickler's own time again for framed pickles of small objects, several times that
    outside frames, i.e. at protocols 0-3), and a frame, or a payload following one, is held
    here until the unpickler has copied it.
    """

    def __init__(self, inner: _Readable, limits: Limits | None = None) -> None:
        self._pending: deque[bytes] = deque()  # raw bytes read, not yet handed on
        self._head = 0  # offset already handed on in _pending[0]
        self._handed = 0  # stream offset of the next byte to hand on
        self._checked = 0  # stream offset of the end of the last opcode checked
        self._limits = Limits() if limits is None else limits
        self._recorder = _Recorder(inner, self._pending, self._limits)
        self._ops: Opcodes | None = None
        self._memo = _Memo()  # the model of the unpickler's memo, which outlives a pickle
        self._rules = _Rules(self._limits, self._memo)
        #: The error that stopped this reader, raised again by every later read.
        self.failure: pickle.UnpicklingError | None = None

    # -- the file interface the C unpickler uses ---------------------------------------------

    def read(self, size: int = -1) -> bytes:
        parts = list(self._take(size))
        whole = parts[0].obj if len(parts) == 1 else None
        if isinstance(whole, bytes) and len(whole) == len(parts[0]):
            return whole  # a whole chunk (a frame, a payload): no copy
        return b"".join(parts)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        filled = 0
        for part in self._take(len(view)):
            view[filled : filled + len(part)] = part
            filled += len(part)
        return filled

    def readline(self, size: int = -1) -> bytes:
        line = bytearray()
        while not line.endswith(b"\n") and (available := self._available(1)):
            # Outside frames the pending chunks are what the parser read: lines, or fields.
            head = bytes(memoryview(self._pending[0])[self._head : self._head + available])
            end = head.find(b"\n")
            line += b"".join(self._take(len(head) if end < 0 else end + 1))
        return bytes(line)

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
        while self._checked - self._handed < wanted and self._step():
            pass
        return self._checked - self._handed

    def _step(self) -> bool:
        """Check one more opcode (a whole frame after FRAME); ``False`` if the input ended."""
        if self._ops is None:  # a new pickle starts (the unpickler never reads past STOP)
            self._ops = _opcodes(self._recorder)
            self._rules = _Rules(self._limits, self._memo, self._recorder.position)
            self._recorder.start = self._recorder.position
        try:
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

    def _check_frame(self, start: int, size: int) -> int:
        """Read and check the frame of *size* bytes at *start*, and the payload that may follow
        it; return where what was checked ends."""
        self._limits.check("frame", size, "max_frame_size")
        frame = self._recorder.read_raw(size)
        if len(frame) < size:
            return start
        # A straddling or malformed opcode makes genops fail, which _check_payload sorts out.
        file = io.BytesIO(frame)
        last = 0  # frame offset of the end of the last complete opcode
        try:
            for opcode, arg, _ in _genops(file):
                self._rules.check(opcode.name, arg, start + last, start + file.tell())
                if opcode.name == "STOP":
                    self._ops = None
                last = file.tell()
        except ValueError:  # the frame ended: between opcodes, or inside one
            if last == len(frame):
                return start + last
            return self._check_payload(frame, start, last)
        return start + last

    def _check_payload(self, frame: bytes, start: int, last: int) -> int:
        """The frame ended inside the opcode at *last*: accept it only if that is a payload
        opcode whose header ends the frame, and read the payload; return where it ends."""
        opcode = _BY_CODE.get(chr(frame[last]))
        name = "an unknown opcode" if opcode is None else opcode.name
        header = frame[last:]
        if opcode is None or _PAYLOAD_HEADERS.get(opcode.name) != len(header):
            raise PolicyViolation(
                f"{name} at position {start + last} is malformed or straddles the end of its "
                "frame (pickle's frame rules forbid that; CPython's C unpickler reads through)",
                start + last,
            )
        size = int.from_bytes(header[1:], "little")
        end = start + len(frame) + size
        self._rules.check(opcode.name, None, start + last, end)  # before reading the payload
        self._recorder.read(size)
        return start if self._recorder.eof else end

    def _take(self, size: int) -> Iterator[memoryview]:
        """Hand on up to *size* checked bytes (all of them if negative), as views in order."""
        remaining = self._available(size if size >= 0 else sys.maxsize)
        if size >= 0:
            remaining = min(remaining, size)
        while remaining:
            head = memoryview(self._pending[0])[self._head :]
            part = head[:remaining]
            remaining -= len(part)
            self._handed += len(part)
            if len(part) == len(head):
                self._pending.popleft()
                self._head = 0
            else:
                self._head += len(part)
            yield part


#: What the C unpickler and the callables it calls raise for data that makes no sense.
_BAD_DATA_ERRORS = (ArithmeticError, AttributeError, LookupError, TypeError, ValueError)


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
        self.reader = CheckedReader(source, limits)

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
        try:
            return load()
        except Exception as exc:
            failure = self.reader.failure
            if failure is not None and failure is not exc:
                raise failure from None
            if isinstance(exc, _BAD_DATA_ERRORS) and exc is not self.reader.io_error:
                raise pickle.UnpicklingError(
                    f"bad pickle data: {type(exc).__name__}: {exc}"
                ) from exc
            raise

    def find_class(self, module: str, name: str) -> Any:
        """`Allowlist.find_class` with this unpickler's ``fix_imports``."""
        return self.allowlist.find_class(module, name, fix_imports=self.fix_imports)


# ---------------------------------------------------------------------------------------------
# Listing the globals a pickle needs

_MEMO_GET = frozenset({"GET", "BINGET", "LONG_BINGET"})
_STRINGS = frozenset(
    {"UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
    | {"STRING", "BINSTRING", "SHORT_BINSTRING"}
)


def required_globals(data: Any, *, fix_imports: bool = True) -> list[Pair]:
    """List the ``(module, qualified name)`` pairs the pickle in *data* references, unloaded.

    *data* is a bytes-like object or a binary file positioned at a pickle (read up to its
    STOP opcode). Pairs are in order of first use, without duplicates, and mapped from Python 2
    names as a restricted load judges them (with *fix_imports*), so the result can be passed to
    `Allowlist` as is. Names pushed for STACK_GLOBAL are followed through the stack and the
    memo; EXT opcodes are listed by their ``copyreg`` registration. Nothing is imported or
    called. Raises ``UnpicklingError`` for a malformed pickle, for STACK_GLOBAL operands that
    are not literal strings, and for an unregistered extension code.
    """
    if isinstance(data, bytes | bytearray | memoryview):
        data = io.BytesIO(data)
    found = {pair: None for *_, pair in _opcodes_and_globals(data, fix_imports) if pair}
    return list(found)


def _opcodes_and_globals(
    file: Any, fix_imports: bool
) -> Iterator[tuple[Any, Any, int, int, Pair | None]]:
    """`_opcodes`, each with the global it references (mapped from Python 2 names as a
    restricted load judges it) or ``None``. STACK_GLOBAL operands are followed through a model
    of the stack and memo; ``UnpicklingError`` when the pickle underflows it."""
    stack: list[Any] = []
    memo: dict[int, Any] = {}
    for opcode, arg, start, end in _opcodes(file):
        pair = _referenced_pair(opcode.name, arg, stack, start)
        yield opcode, arg, start, end, None if pair is None else _map_python2(*pair, fix_imports)
        try:
            _simulate(opcode, arg, stack, memo)
        except (IndexError, KeyError):
            raise pickle.UnpicklingError(
                f"malformed pickle: {opcode.name} at offset {start} underflows the stack or "
                "reads a missing memo entry"
            ) from None


def _referenced_pair(name: str, arg: Any, stack: list[Any], position: int | None) -> Pair | None:
    if name in ("GLOBAL", "INST"):
        module, _, qualname = arg.partition(" ")  # genops joins the two lines with a blank
        return module, qualname
    if name == "STACK_GLOBAL":
        operands = stack[-2:]
        if len(operands) != 2 or not all(isinstance(item, str) for item in operands):
            raise pickle.UnpicklingError(
                f"STACK_GLOBAL at position {position} does not follow two literal strings"
            )
        return operands[0], operands[1]
    if name in _EXTENSION_OPCODES:
        registered: Pair | None = copyreg._inverted_registry.get(arg)  # type: ignore[attr-defined]
        if registered is None:
            raise pickle.UnpicklingError(f"unregistered extension code {arg} ({name})")
        return registered
    return None


def _simulate(opcode: Any, arg: Any, stack: list[Any], memo: dict[int, Any]) -> None:
    """Apply *opcode*'s effect to a symbolic *stack*: strings are kept, other values are None.

    Follows ``pickletools.dis``: a MARK is an entry of its own; an opcode whose stack_before
    holds a markobject pops through the topmost mark.
    """
    name = opcode.name
    if name in _MEMO_PUT:
        memo[arg] = stack[-1]
    elif name == "MEMOIZE":
        memo[len(memo)] = stack[-1]
    elif name in _MEMO_GET:
        stack.append(memo[arg])
    elif name == "DUP":
        stack.append(stack[-1])
    else:
        before = opcode.stack_before
        count = len(before)
        if _MARK in before or (name == "POP" and stack and stack[-1] is _MARK):
            if _MARK not in stack:
                raise IndexError("no MARK on the stack")
            del stack[len(stack) - 1 - stack[::-1].index(_MARK) :]
            count = before.index(_MARK) if _MARK in before else 0
        if count > len(stack):
            raise IndexError(f"pops {count} of {len(stack)} items")
        del stack[len(stack) - count :]
        if name in _STRINGS:
            stack.append(arg)
        else:
            stack.extend(_MARK if item is _MARK else None for item in opcode.stack_after)
