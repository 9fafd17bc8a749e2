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
import sys
import types
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypedDict

from ._exceptions import LimitExceeded

__all__ = [
    "ALLOW_BUILTINS",
    "ALLOW_COLLECTIONS",
    "ALLOW_DATETIME",
    "ALLOW_DECIMAL",
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
    and the number of memo entries a pickle makes), *max_opcodes* and *max_stack_depth* (items
    plus open marks). They are checked before the unpickler acts on the opcode. A restricted
    load also checks the first three itself, so they hold for the sync ``load``/``loads`` too.
    """

    max_frame_size: int | None = DEFAULT_MAX_FRAME_SIZE
    max_object_size: int | None = DEFAULT_MAX_OBJECT_SIZE
    max_line_length: int | None = DEFAULT_MAX_LINE_LENGTH
    max_payload_size: int | None = DEFAULT_MAX_PAYLOAD_SIZE
    max_memo_size: int | None = DEFAULT_MAX_MEMO_SIZE
    max_opcodes: int | None = DEFAULT_MAX_OPCODES
    max_stack_depth: int | None = DEFAULT_MAX_STACK_DEPTH

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

Opcodes = Generator[tuple[Any, Any, int, int], None, None]


def _opcodes(file: Any) -> Opcodes:
    """``(opcode, arg, start, end)`` for each opcode of the pickle in *file* (up to STOP).

    *file* needs ``tell``. ``pickletools.genops``' ``ValueError`` for a malformed pickle becomes
    ``UnpicklingError``.
    """
    try:
        for opcode, arg, start in pickletools.genops(file):
            yield opcode, arg, start or 0, file.tell()  # genops has read exactly this opcode
    except ValueError as exc:
        if exc is getattr(file, "io_error", None):
            raise  # the file's own error, not the pickle's
        raise pickle.UnpicklingError(f"malformed pickle: {exc}") from exc


#: Stack effects, from pickletools' opcode tables: (kind, pops, pushes). For _TO_MARK, pops
#: counts the items *below* the mark that the opcode consumes (APPENDS: the list).
_PLAIN, _TO_MARK, _MARK_OP, _POP = range(4)
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


def _effect(opcode: Any) -> tuple[int, int, int]:
    before, after = opcode.stack_before, opcode.stack_after
    if opcode.name == "MARK":
        return _MARK_OP, 0, 0
    if opcode.name == "POP":  # pops a mark instead if one is on top (as the C unpickler does)
        return _POP, 1, 0
    if _MARK in before:
        return _TO_MARK, before.index(_MARK), len(after)
    return _PLAIN, len(before), len(after)


_EFFECTS = {opcode.name: _effect(opcode) for opcode in pickletools.opcodes}


class _Rules:
    """Refuses, opcode by opcode in stream order, what a restricted load must not act on, and
    counts what one pickle uses of the opcode `Limits`.

    The stack is modelled as the C unpickler keeps it: a depth, and the depths at which the
    open marks were set; items below the topmost mark (the "fence") cannot be popped. This
    runs for every opcode, so the common case is kept to a few comparisons.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.frame_end = -1  # stream offset where the current frame ends
        self.opcodes = 0
        self.depth = 0
        self.fence = 0
        self.marks: list[int] = []
        self.memo_writes = 0
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
        kind, pops, pushes = _EFFECTS[name]
        if kind == _PLAIN and self.depth - pops >= self.fence:
            self.depth += pushes - pops
        else:
            self._apply_marks(name, kind, pops, pushes, start)
        if self.depth + len(self.marks) > self.max_stack_depth:
            depth = self.depth + len(self.marks)
            self.limits.check("stack", depth, "max_stack_depth", unit="items")
        if name in _SIZED:
            self._check_size(name, arg, end - start)

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

    def _apply_marks(self, name: str, kind: int, pops: int, pushes: int, start: int) -> None:
        """Apply an opcode that sets or uses a mark, or underflows, to the modelled stack."""
        marks = self.marks
        if kind == _MARK_OP:
            marks.append(self.depth)
        elif kind == _POP and marks and marks[-1] == self.depth:
            marks.pop()
        else:
            depth = self.depth
            if kind == _TO_MARK:
                if not marks:
                    raise pickle.UnpicklingError(
                        f"malformed pickle: {name} at position {start} finds no MARK"
                    )
                depth = marks.pop()
            if depth - pops < (marks[-1] if marks else 0):
                raise pickle.UnpicklingError(
                    f"malformed pickle: {name} at position {start} pops more than the stack holds"
                )
            self.depth = depth - pops + pushes
        self.fence = marks[-1] if marks else 0

    def _check_size(self, name: str, arg: Any, length: int) -> None:
        """Check a payload's size, or a memo index, against its limit."""
        width = _PAYLOAD_WIDTHS.get(name)
        if width is not None:
            self.limits.check(f"{name} payload", length - 1 - width, "max_payload_size")
            return
        # The C unpickler grows its memo table to the index put (MEMOIZE puts at the number
        # of entries), so the index is what costs memory.
        index = arg if name != "MEMOIZE" else self.memo_writes
        self.memo_writes += 1
        entries = max(index + 1, self.memo_writes)
        self.limits.check("memo", entries, "max_memo_size", unit="entries")

    @staticmethod
    def _refuse(message: str, position: int) -> None:
        raise PolicyViolation(message, position)


def _or_max(limit: int | None) -> int:
    return sys.maxsize if limit is None else limit


_FRAMING = _EXTENSION_OPCODES | {"FRAME", "STOP"}
_SIZED = _PAYLOAD_WIDTHS.keys() | _MEMO_PUT | {"MEMOIZE"}


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
        self._rules = _Rules(self._limits)
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
            self._rules = _Rules(self._limits)
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
            for opcode, arg, _ in pickletools.genops(file):
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
    found: dict[Pair, None] = {}
    stack: list[Any] = []
    memo: dict[int, Any] = {}
    for opcode, arg, position, _ in _opcodes(data):
        pair = _referenced_pair(opcode.name, arg, stack, position)
        if pair is not None:
            found[_map_python2(*pair, fix_imports)] = None
        try:
            _simulate(opcode, arg, stack, memo)
        except (IndexError, KeyError) as exc:
            raise pickle.UnpicklingError(
                f"malformed pickle: {opcode.name} at position {position} "
                f"underflows the stack or reads a missing memo entry ({exc!r})"
            ) from None
    return list(found)


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
