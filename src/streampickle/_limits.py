"""Resource limits, and the byte guard every load driver runs its loader through.

`Limits` is the one bundle of limits; `LimitExceeded` names the field that was hit. The
*byte limits* (``max_frame_size``, ``max_object_size``, ``max_line_length``) are checked for
every load, restricted or not, by the same code: an unrestricted loader's requests pass through
`guard` (as h11's connection checks its own limits, so every driver gets them for free), and a
restricted one's vetting reader checks them as it parses. The other limits need the opcode
walk that only restricted loading does.
"""

from __future__ import annotations

import re
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, TypedDict

from ._exceptions import LimitExceeded
from ._opcodes import FRAME, LENGTH_FIELDS, length_claims
from ._sansio import Peek, Read, ReadInto, ReadLine, Request

__all__ = [
    "DEFAULT_MAX_EXPANSION",
    "DEFAULT_MAX_FRAME_SIZE",
    "DEFAULT_MAX_LINE_LENGTH",
    "DEFAULT_MAX_MEMO_SIZE",
    "DEFAULT_MAX_NESTING",
    "DEFAULT_MAX_OBJECT_SIZE",
    "DEFAULT_MAX_OPCODES",
    "DEFAULT_MAX_PAYLOAD_SIZE",
    "DEFAULT_MAX_STACK_DEPTH",
    "DEFAULT_MAX_WORK",
    "ByteLimitOptions",
    "LimitOptions",
    "Limits",
    "RestrictedLimitOptions",
    "byte_limits",
    "guard",
    "load_limits",
    "restricted_options",
]

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
#: Default ``max_nesting``: containers (tuples, lists, dicts, sets, instances...) nested in
#: containers. CPython hashes a tuple, and frees a ``deque`` or ``defaultdict``, by C recursion
#: with no recursion check, so a key of a million nested tuples (one byte a level: TUPLE1 on
#: TUPLE1...) or ~100,000 nested deques crashes the process; comparing or printing nested
#: lists recurses too (``RecursionError`` past ~1,000). 500 stays below all of them on
#: 3.10-3.13.
DEFAULT_MAX_NESTING = 500
#: Default ``max_work``: the steps a pickle may cost beyond 16 a byte received: objects that
#: hashing dict keys and set members visits (CPython caches no tuple's or int's hash, so a
#: shared tuple of tuples used as a key costs its unfolded size each time), and steps of
#: tracking how deep objects nest.
DEFAULT_MAX_WORK = 1 << 20


@dataclass(frozen=True)
class Limits:
    """Per-pickle resource limits; ``None`` disables one. `LimitExceeded` names the one hit.

    Which apply: a trusted load (no ``allow=``) checks only the limits passed to it, none by
    default, as ``pickle`` checks none; a restricted load (``allow=``) checks all of them, with
    the defaults below for those not passed. Every load function takes them as keywords
    (``max_frame_size=...``) or as a bundle, ``limits=Limits(...)`` (keywords beside it win;
    to a trusted load a bundle gives its byte limits).

    The byte limits, checked by every load given them (``load``, ``loads``, ``Unpickler``,
    ``iter_loads``, ``aload``, ``aiter_load``, ``PickleStream``), restricted or not:
    *max_frame_size* (a protocol 4/5 frame), *max_object_size* (the bytes one pickle spans),
    *max_line_length* (a line of the text opcodes of protocols 0-2). Each is checked before
    the bytes are read or a buffer of the claimed size is allocated.

    Checked by restricted loads only (``allow=`` given), because they need the opcode-by-opcode
    vetting that restricted loading does anyway (and without an allowlist a hostile pickle can
    run code, so limits would not protect the receiver): *max_payload_size* (one ``bytes``,
    ``bytearray``, ``str`` or long-int payload), *max_memo_size* (the highest memo index + 1,
    and the number of memo entries a pickle makes), *max_opcodes*, *max_stack_depth* (items
    plus open marks), *max_nesting* (containers nested in containers, which CPython hashes or
    frees by unchecked C recursion), *max_expansion* (what the calls of allowed callables
    build, in items or bytes, beyond twice the bytes received so far) and *max_work* (objects
    visited hashing keys and set members, and steps of tracking nesting, beyond 16 a byte
    received). They are checked before the unpickler acts on the opcode.
    """

    max_frame_size: int | None = DEFAULT_MAX_FRAME_SIZE
    max_object_size: int | None = DEFAULT_MAX_OBJECT_SIZE
    max_line_length: int | None = DEFAULT_MAX_LINE_LENGTH
    max_payload_size: int | None = DEFAULT_MAX_PAYLOAD_SIZE
    max_memo_size: int | None = DEFAULT_MAX_MEMO_SIZE
    max_opcodes: int | None = DEFAULT_MAX_OPCODES
    max_stack_depth: int | None = DEFAULT_MAX_STACK_DEPTH
    max_expansion: int | None = DEFAULT_MAX_EXPANSION
    max_nesting: int | None = DEFAULT_MAX_NESTING
    max_work: int | None = DEFAULT_MAX_WORK

    def check(
        self, what: str, size: int, limit: str, *, unit: str = "bytes", at_least: bool = False
    ) -> None:
        """Raise `LimitExceeded` if *size* exceeds the limit named *limit* (*at_least*: *size*
        is a lower bound)."""
        maximum: int | None = getattr(self, limit)
        if maximum is not None and size > maximum:
            raise LimitExceeded(what, size, limit, maximum, unit=unit, at_least=at_least)


class ByteLimitOptions(TypedDict, total=False):
    """The byte limits of `Limits`, as keyword arguments of the load functions."""

    max_frame_size: int | None
    max_object_size: int | None
    max_line_length: int | None


class RestrictedLimitOptions(TypedDict, total=False):
    """The fields of `Limits` that only restricted loads check, as keyword arguments."""

    max_payload_size: int | None
    max_memo_size: int | None
    max_opcodes: int | None
    max_stack_depth: int | None
    max_expansion: int | None
    max_nesting: int | None
    max_work: int | None


class LimitOptions(ByteLimitOptions, RestrictedLimitOptions, total=False):
    """The fields of `Limits`, as keyword arguments of the load functions; and ``limits``, a
    `Limits` whose fields apply as if given one by one (keywords given beside it win)."""

    limits: Limits


_BYTE_LIMITS = frozenset(ByteLimitOptions.__annotations__)


def restricted_options(allow: object, options: LimitOptions) -> LimitOptions:
    """*options*; ``TypeError`` if a restricted-only limit is given without *allow* (it would
    silently not apply)."""
    misplaced = sorted(name for name in options if name not in _BYTE_LIMITS)
    if allow is None and misplaced:
        verb = "applies" if len(misplaced) == 1 else "apply"
        raise TypeError(
            f"{', '.join(misplaced)} {verb} only to restricted loads: pass allow= as well "
            "(an unrestricted pickle can run code, so opcode limits would not protect you); "
            "max_frame_size, max_object_size and max_line_length apply without it"
        )
    return options


def byte_limits(options: LimitOptions) -> Limits | None:
    """The byte limits given in *options* (the others off), or None if none is given (or all
    are given as None): a trusted load checks only the limits it is asked to, as ``pickle``
    checks none."""
    if all(options.get(name) is None for name in _BYTE_LIMITS):
        return None
    off: dict[str, Any] = dict.fromkeys(Limits.__dataclass_fields__)  # every limit None
    return Limits(**{**off, **{name: options.get(name) for name in _BYTE_LIMITS}})


def load_limits(allow: object, options: LimitOptions) -> Limits | None:
    """The limits a load with *allow* and the keyword *options* checks, every driver alike.

    Trusted (no *allow*): only the byte limits given, None if none is (a trusted load accepts
    every pickle ``pickle.load`` accepts). Restricted: every field of `Limits`, its defaults for
    those not given. ``TypeError`` for a restricted-only limit without *allow*.
    """
    if allow is None and not options:  # the common trusted load: nothing to check
        return None
    options = _unbundled(allow, options)
    restricted_options(allow, options)
    fields: dict[str, Any] = dict(options)  # no bundle left in it
    return byte_limits(options) if allow is None else Limits(**fields)


_DEFAULTS = Limits()


def _unbundled(allow: object, options: LimitOptions) -> LimitOptions:
    """*options* with a ``limits=Limits(...)`` bundle spread into its fields: all of them for
    a restricted load; for a trusted one its byte limits, and the others that differ from the
    defaults (so that `restricted_options` refuses them: they would not apply)."""
    if "limits" not in options:
        return options
    spread = dict(options)
    bundle = spread.pop("limits")
    if not isinstance(bundle, Limits):
        raise TypeError(f"limits= takes a streampickle.Limits, not {type(bundle).__name__}")
    fields: dict[str, Any] = {
        name: getattr(bundle, name)
        for name in Limits.__dataclass_fields__
        if allow is not None
        or name in _BYTE_LIMITS
        or getattr(bundle, name) != getattr(_DEFAULTS, name)
    }
    merged: LimitOptions = {**fields, **spread}  # type: ignore[typeddict-item]
    return merged


# ---------------------------------------------------------------------------------------------
# The byte guard

_PREALLOCATED = ("BINBYTES", "BINBYTES8", "BYTEARRAY8")
#: Opcodes followed by a length checked before the unpickler allocates: FRAME, and the payloads
#: with a 4- or 8-byte length (a 1-byte length cannot claim much). Opcode -> (what, field).
_CLAIMS = {
    field.code: (f"{name} payload", field)
    for name, field in LENGTH_FIELDS.items()
    if field.width >= 4
}


#: The opcodes whose length the unpickler parses and then allocates before it reads what
#: follows (BINBYTES, BINBYTES8, BYTEARRAY8 read into a buffer of the claimed size; FRAME has
#: its own limit). Read-ahead (`Peek`) data is cut before any byte that could be one of them,
#: so that it, and its length, reach the unpickler by `Read`s the guard checks. A cut inside
#: a payload only shortens the read-ahead.
_ALLOCATING = frozenset({FRAME} | {LENGTH_FIELDS[name].code for name in _PREALLOCATED})
_ALLOCATING_BYTE = re.compile(b"[" + re.escape(bytes(sorted(_ALLOCATING))) + b"]")


class _Guard:
    """The state of one pickle's byte checks (see `guard`)."""

    __slots__ = ("consumed", "frame", "last", "limits")

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.consumed = 0
        self.last: int | None = None  # the byte the last Read(1) returned
        self.frame = 0  # the size of the frame whose bytes the next Read returns

    def before(self, size: int) -> None:
        self.limits.check("pickle", self.consumed + size, "max_object_size")

    def read(self, data: bytes) -> None:
        """Vet a `Read` reply before the unpickler acts on it."""
        if self.frame:
            self._check_frame(data)
        elif len(data) == 1:
            self.last = data[0]
        else:
            self._check_length(data)
            self.last = None
        self.consumed += len(data)

    def line(self, data: bytes) -> None:
        # A line is read up to one byte past the limit: its length is then a lower bound.
        self.limits.check("line", len(data), "max_line_length", at_least=True)
        self.last = None
        self.consumed += len(data)

    def _check_length(self, data: bytes) -> None:
        # The request after Read(1) of a length opcode is Read(width): its length header. The
        # pairing is unambiguous: a 1-byte *argument* read is followed by the next opcode or
        # by a read of the argument's value, and all these opcodes are >= 0x42, never 4 or 8.
        last = self.last
        if last == FRAME and len(data) == 8:
            what, size = "frame", int.from_bytes(data, "little")
            self.limits.check(what, size, "max_frame_size")
            self.frame = size  # the unpickler reads it next, whole (0: it reads nothing)
        else:
            claim = _CLAIMS.get(last) if last is not None else None
            if claim is None or len(data) != claim[1].width:
                return
            what, size = claim[0], claim[1].decode(data)
        self.limits.check(what, size, "max_object_size")
        self.before(len(data) + size)

    def _check_frame(self, data: bytes) -> None:
        # The unpickler parses a frame from its own buffer, allocating what a length in it
        # claims before it asks for more: check every claim now. A length field cut by the
        # frame's end is read next, as a Read of its width.
        self.frame = 0
        claims, cut = length_claims(data)
        for name, size, offset in claims:
            self.limits.check(f"{name} payload", size, "max_object_size")
            self.limits.check("pickle", self.consumed + offset + size, "max_object_size")
        self.last = cut


def guard(requests: Generator[Request, Any, Any], limits: Limits) -> Generator[Request, Any, Any]:
    """*requests* (an unrestricted loader's), with the byte limits of *limits* enforced.

    Each request passes on to the driver and each reply back to the unpickler, vetted on the
    way: a read that would take the pickle past ``max_object_size`` is refused before the
    driver reads, a FRAME or payload length past its limit before the unpickler allocates, a
    line past ``max_line_length`` before the unpickler sees it (`ReadLine` asks the driver for
    at most one byte more than the limit). `LimitExceeded` is raised into the driver's
    ``send``; *requests* is always closed.

    Read-ahead (`Peek`) data is cut before the opcodes whose claimed length the unpickler
    allocates (see `_ALLOCATING`), so those opcodes and their lengths come by `Read`s the
    guard checks; a frame is read whole, and the lengths its opcodes claim are checked
    (`length_claims`) before the unpickler parses it. Read-ahead data is also cut to
    ``max_line_length`` bytes, so that the unpickler reads any longer line by `ReadLine`.
    Cost: at protocols 4-5 a walk over each frame's opcodes (about the unpickler's own time
    again for small objects); at protocols 0-3 a few requests more per ``bytes`` object.
    """
    state = _Guard(limits)
    longest = limits.max_line_length
    ask_line = ReadLine(None if longest is None else longest + 1)
    reply: Any = None
    try:
        while True:
            request = requests.send(reply)
            if type(request) is Peek:
                if state.last in _ALLOCATING:
                    reply = b""  # the length comes next: the unpickler must Read it
                else:
                    reply = yield request
                    if longest is not None:  # so that no whole line in it is longer
                        reply = reply[:longest]
                    cut = _ALLOCATING_BYTE.search(reply)
                    if cut is not None:
                        reply = reply[: cut.start()]
                    if reply:
                        state.last = None  # the unpickler parses on from read-ahead data
            elif type(request) is Read:
                state.before(request.size)
                reply = yield request
                state.read(reply)
            elif type(request) is ReadInto:
                state.before(len(request.buffer))
                reply = yield request
                state.consumed += reply
                state.last = None
            else:
                reply = yield ask_line
                state.line(reply)
    except StopIteration as stop:
        return stop.value
    finally:
        requests.close()
