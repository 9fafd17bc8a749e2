"""The vetting pass's model of values: what the unpickler's stack and memo hold, as far as
a restricted load needs to know, and the table of callables whose calls it sizes."""

from __future__ import annotations

from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .allowlist import Pair, map_python2
from .keys import ARGS_KEPT as ARGS_KEPT  # re-exported with the classes below
from .keys import BIG as BIG
from .keys import Frozen as Frozen
from .keys import Long as Long
from .keys import Opaque as Opaque
from .keys import Tuple as Tuple
from .keys import copy_census
from .nodes import NO_HOLDERS
from .nodes import Box as Box  # re-exported: the model's classes, with those below
from .nodes import Sized as Sized

# The model of the unpickler's stack and memo, and of the calls it makes
#
# Calls are where a few bytes can become gigabytes: ``bytes(10**9)``, ``set(range(10**9))``,
# or a big object received once and copied by many calls through the memo. The vetting pass
# keeps a model of every value on the unpickler's stack and in its memo: the callable a
# GLOBAL/STACK_GLOBAL/INST names, literal ints, the lengths of strings, bytes, containers
# (also as APPEND/SETITEM/ADDITEMS grow them) and ranges, the items of small tuples. Each call
# of a callable in `CALLABLES` is then sized before the unpickler makes it: what it builds (a
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
#   (``errors="namereplace"``: ``\N{...}``) plus headers (bz2), and each unknown encoding
#   name is cached for good. Sized as its input for latin-1/ASCII with strict errors (what
#   protocols 0-2 write), 4x for UTF-8; any other encoding or error handler is refused.
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
# container's length: do not allow them. Callables not in `CALLABLES` (the fixed-size ones
# above, and whatever else an allowlist lists) are called with the sender's arguments unsized.


class Made(Opaque):
    """The result of a call the model does not follow (an instance of an allowed class, what
    an allowed function returned): one per call, so that BUILD and the nesting of what it
    holds are seen per object. Hashing it is costed as what it was given (a slice's hash
    hashes its parts; a frozen dataclass's, its fields)."""

    __slots__ = ("built", "cost", "depth", "holders")
    what = "an object built by a call the vetting pass does not model"

    def __init__(self) -> None:
        self.depth = 1
        self.cost = 1
        self.holders: Any = NO_HOLDERS
        self.built = False


class Shared(Made):
    """The result of a call that may hand back an object that existed before it (`Foreign`
    with ``shares``, a call of a call's result): BUILD, APPEND(S), SETITEM(S) and ADDITEMS on
    it are refused, for they would change that object for the whole process."""

    __slots__ = ()
    what = "an object that a call may have handed back from before the load"


class Foreign(Opaque):
    """A global not in `CALLABLES`: the allowlist lets it through, and calls of it are
    trusted. *shares*: a call of it may return an existing object (`Allowlist.shares`)."""

    __slots__ = ("shares",)

    def __init__(self, shares: bool) -> None:
        super().__init__("a global")
        self.shares = shares


class NumpyDtype(Made):
    """A ``numpy.dtype`` that the model let a call make: a number or boolean type, whose
    BUILD state must be that of a plain number type (`Rules` checks it)."""

    __slots__ = ()


class NumpyArray(Made):
    """An ndarray that ``numpy.ndarray`` or ``_reconstruct`` made: its BUILD state must be
    ``(1, shape, dtype, fortran, data)`` with a vetted dtype and the data's bytes (`Rules`)."""

    __slots__ = ()


#: The models of objects that hold others.
NESTS = frozenset({Box, Tuple, Frozen, Made, NumpyDtype, NumpyArray})
#: The models whose hashing costs more than one object.
COSTED = NESTS | {Long}
#: Work figures saturate here (a hash cost can be exponential in the pickle's size).
COST_CAP = 1 << 62

#: A persistent ID or an out-of-band buffer's object: what `persistent_load` or ``buffers=``
#: return, which the pickle did not build.
ANY = Opaque("an object the pickle names but did not build (a persistent ID or a buffer)")
#: A global that is not in `CALLABLES` and whose calls make new objects (or that the allowlist
#: refuses: the unpickler fails on it).
FOREIGN = Foreign(shares=False)
#: A global whose calls may hand back existing objects (an Enum, a singleton, a function),
#: or one the model cannot name (STACK_GLOBAL of strings a call made).
SHARING = Foreign(shares=True)
#: A memo entry that was never put (the unpickler will fail on it).
MISSING = Opaque("a missing memo entry")
_SIZES = tuple(Sized(size) for size in range(256))  # shared: immutable, and common
EMPTY_TUPLE = Tuple([])


def sized(size: int) -> Sized:
    return _SIZES[size] if size < 256 else Sized(size)


class Unsized(Exception):
    """A modelled call is given a value whose length the model does not know."""


class Refused(Exception):
    """A modelled call is given arguments the model refuses; the message says why."""


def length(value: Any) -> int:
    """How many items, bytes or characters copying *value* yields; 0 for what cannot be
    iterated (the call will fail); `Unsized` for what the model cannot size."""
    if type(value) is str:
        return len(value)
    if isinstance(value, Sized):
        if value.size is None:
            raise Unsized("a range whose bounds are not literal ints below 2**63")
        return value.size
    if value is None or type(value) in (int, bool, float):
        return 0
    raise Unsized(value.what if isinstance(value, Opaque) else "a global")


#: Output bytes per input character of ``str.encode`` with strict errors, for the encodings
#: pickles use (protocols 0-2 write ``bytes`` and ``bytearray`` as latin-1 text). No other
#: encoding or error handler is accepted: besides output up to ~100 bytes a character
#: (``errors="namereplace"``), looking up a name that is not a codec caches it in
#: ``encodings._cache`` for the life of the process, so refused calls would still cost memory.
_CODEC_FACTORS = dict.fromkeys(
    ["latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1", "ascii", "us-ascii"], 1
) | dict.fromkeys(["utf-8", "utf8", "utf_8"], 4)


def _encoded_size(source: Any, encoding: Any = "utf-8", errors: Any = "strict") -> int:
    size = length(source)
    factor = _CODEC_FACTORS.get(encoding) if errors == "strict" else None
    if factor is None:
        raise Unsized(
            "an encoding other than latin-1, ASCII or UTF-8, or errors other than strict "
            "(CPython caches each encoding name looked up for the life of the process)"
        )
    return size * factor


#: A modelled callable's model: its positional arguments' models -> (the items or bytes the
#: call builds, the model of its result). `Unsized` if an argument cannot be sized.
Model = Callable[[tuple[Any, ...]], tuple[int, Any]]


def _byte_string(result: Callable[[int], Sized]) -> Model:
    """``bytes``/``bytearray``: empty, zero-filled to an int, a copy, or an encoded str."""

    def model(args: tuple[Any, ...]) -> tuple[int, Any]:
        if not args:
            return 0, result(0)
        if len(args) > 1:
            size = _encoded_size(*args[:3])
        elif type(args[0]) in (int, bool):
            size = max(args[0], 0)
        else:
            size = length(args[0])
        return size, result(size)

    return model


def _copy(
    result: Callable[[int], Sized], position: int = 0, pairs: bool = False, listed: bool = False
) -> Model:
    """A constructor that copies the iterable or mapping it gets at *position* (with *pairs*,
    a mapping or the pairs of one; *listed*: into a list or deque, `Box.listed`)."""

    def model(args: tuple[Any, ...]) -> tuple[int, Any]:
        given = len(args) > position
        size = length(args[position]) if given else 0
        made = result(size)
        if type(made) is Box:
            made.listed = listed
            if given:
                copy_census(made, args[position], pairs)
        return size, made

    return model


def _range(args: tuple[Any, ...]) -> tuple[int, Any]:
    if not 1 <= len(args) <= 3 or not all(type(arg) in (int, bool) for arg in args):
        return 0, Sized(None)  # bounds too big for the model, or not ints (the call fails)
    start, stop, step = (0, args[0], 1) if len(args) == 1 else (*args, 1)[:3]
    if step == 0:
        return 0, None  # ValueError
    return 0, Sized(max(0, (stop - start + step - (1 if step > 0 else -1)) // step))


def _decimal(args: tuple[Any, ...]) -> tuple[int, Any]:
    value = args[0] if args else None
    if type(value) is Tuple and value.items is not None and len(value.items) == 3:
        return length(value.items[1]), None  # (sign, digits, exponent)
    return (0 if type(value) in (int, bool) else length(value)), None


#: Models of the copyreg helpers: they call another callable, whose model applies.
Forward = Callable[[tuple[Any, ...]], tuple[Any, tuple[Any, ...] | None]]


def _reconstructor(args: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...] | None]:
    # base.__new__(cls, state) and base.__init__(obj, state): base(state) builds as much.
    return (args[1], args[2:]) if len(args) == 3 else (FOREIGN, ())


def _newobj(args: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...] | None]:
    return (args[0], args[1:]) if args else (FOREIGN, ())


def _newobj_ex(args: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...] | None]:
    if len(args) != 3:
        return FOREIGN, ()
    return args[0], call_arguments(args[1], args[2])


def call_arguments(args: Any, kwargs: Any = None) -> tuple[Any, ...] | None:
    """The positional arguments' models of a call, or None if the model does not know them
    (keyword arguments, a long or unknown tuple)."""
    no_kwargs = kwargs is None or (type(kwargs) is Box and not kwargs.size)
    return args.items if type(args) is Tuple and no_kwargs else None


@dataclass(frozen=True)
class ModelledCallable:
    """A global whose calls the model sizes: *model* (or *forward*, for the copyreg helpers);
    *hashes*: the call hashes the members of its argument at *position* (with *pairs*, the
    first items of its pairs, as ``dict`` does)."""

    name: str
    model: Model | None = None
    forward: Forward | None = None
    hashes: bool = False
    pairs: bool = False
    position: int = 0


# numpy, the vetted way. ``numpy.dtype.__setstate__`` trusts its state (a crafted elsize,
# alignment, flags, subarray or field offset corrupts memory), object arrays hold pointers that
# a pickle's raw bytes would forge, and ``ndarray(shape, dtype, buffer, offset, strides)``
# views memory where the strides say. So under an allowlist the model lets ``numpy.dtype``
# make only number and boolean types (`NUMPY_DTYPE_SPECS`), whose BUILD state must be a plain
# number type's; ``numpy.ndarray`` and ``_reconstruct`` take only a shape (and such a dtype),
# and the items of that shape count as built (``max_expansion``). What numpy then checks itself
# (the data's length against the shape, in ``ndarray.__setstate__``, ``_frombuffer`` and
# ``scalar``) is safe for those types.

#: The ``numpy.dtype`` specs a restricted load may make: what numpy pickles its number and
#: boolean types as (``np.dtype("f8").__reduce__()`` gives ``("f8", False, True)``).
NUMPY_DTYPE_SPECS = frozenset(
    [
        "b1",
        "i1",
        "i2",
        "i4",
        "i8",
        "u1",
        "u2",
        "u4",
        "u8",
        "f2",
        "f4",
        "f8",
        "f16",
        "c8",
        "c16",
        "c32",
    ]
)
#: The byte orders of a plain number type's state.
_BYTE_ORDERS = frozenset("<>|=")
_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")


def _numpy_dtype(args: tuple[Any, ...]) -> tuple[int, Any]:
    spec = args[0] if args else None
    if type(spec) is not str or spec not in NUMPY_DTYPE_SPECS:
        raise Refused(
            "a dtype other than a number or boolean type (object, structured, void, string "
            "and datetime dtypes can forge pointers or corrupt memory through their state)"
        )
    if len(args) > 3 or not all(type(arg) is bool for arg in args[1:]):
        raise Refused("arguments other than (spec, align, copy)")
    if len(args) < 3 or args[2] is not True:  # numpy hands back its own descriptor
        return 0, Shared()
    return 0, NumpyDtype()


def numpy_dtype_state(state: Any) -> bool:
    """Whether *state* (a BUILD's, on a `NumpyDtype`) is a plain number type's:
    ``(3, byte order, None, None, None, -1, -1, 0)``."""
    items = state.items if type(state) is Tuple else None
    return (
        items is not None
        and len(items) == 8
        and items[0] == 3
        and type(items[0]) is int
        and items[1] in _BYTE_ORDERS
        and items[2:5] == (None, None, None)
        and items[5:] == (-1, -1, 0)
        and all(type(item) is int for item in items[5:])
    )


def _shape_size(shape: Any) -> int:
    """The items of an array of *shape* (an int, or a tuple of ints)."""
    if type(shape) is int and shape >= 0:
        return shape
    items = shape.items if type(shape) is Tuple else None
    if items is None or not all(type(item) is int and item >= 0 for item in items):
        raise Unsized("a shape that is not a tuple of at most 8 literal ints")
    size = 1
    for item in items:
        size *= item
    return size


def _numpy_ndarray(args: tuple[Any, ...]) -> tuple[int, Any]:
    # ndarray(shape[, dtype]): a buffer, offset or strides would view memory anywhere.
    if not 1 <= len(args) <= 2 or (len(args) == 2 and type(args[1]) is not NumpyDtype):
        raise Refused("arguments other than a shape and a dtype the vetting pass made")
    return _shape_size(args[0]), NumpyArray()


def _numpy_reconstruct(args: tuple[Any, ...]) -> tuple[int, Any]:
    # _reconstruct(subtype, shape, dtype): numpy pickles write (ndarray, (0,), b"b").
    if len(args) != 3 or type(args[2]) is not Sized or args[2].size != 1:
        raise Refused("arguments other than (array type, shape, a one-byte typecode)")
    return _shape_size(args[1]), NumpyArray()


def numpy_array_state(state: Any) -> bool:
    """Whether *state* (a BUILD's, on a `NumpyArray`) is ``(1, shape, dtype, fortran, data)``
    with a shape of literal ints whose items the data's bytes can hold, a dtype the vetting
    pass made, and bytes for data (not a list: that is how object arrays are written)."""
    items = state.items if type(state) is Tuple else None
    if items is None or len(items) != 5 or items[0] != 1 or type(items[0]) is not int:
        return False
    _, shape, dtype, fortran, data = items
    if type(dtype) is not NumpyDtype or type(fortran) is not bool or type(data) is not Sized:
        return False
    try:
        size = _shape_size(shape)
    except Unsized:
        return False
    return data.size is not None and size <= data.size


#: The callables that hash the members of what they are given (`ModelledCallable.hashes`),
#: and those of them that hash the keys of a mapping or of pairs.
_PAIRS = {("builtins", "dict"), ("collections", "OrderedDict"), ("collections", "defaultdict")}
_LISTS = {("builtins", "list"), ("builtins", "sorted"), ("collections", "deque")}
#: Where the iterable or mapping a copying call takes is, if not first.
_POSITION = {("collections", "defaultdict"): 1}
_HASHING = _PAIRS | {
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "dict.fromkeys"),
    ("collections", "Counter"), ("collections", "OrderedDict.fromkeys"),
}  # fmt: skip


def _table() -> dict[Pair, ModelledCallable]:
    models: dict[Pair, Model] = {
        ("builtins", "bytes"): _byte_string(sized),
        ("builtins", "bytearray"): _byte_string(Box),
        ("builtins", "range"): _range,
        ("_codecs", "encode"): lambda args: (size := _encoded_size(*args[:3]), sized(size)),
        ("decimal", "Decimal"): _decimal,
        ("numpy", "dtype"): _numpy_dtype,
        ("numpy", "ndarray"): _numpy_ndarray,
        **{(module, "_reconstruct"): _numpy_reconstruct for module in _NUMPY_MODULES},
    }
    for pair, result in [
        (("builtins", "set"), Box), (("builtins", "frozenset"), Frozen),
        (("builtins", "list"), Box), (("builtins", "tuple"), Tuple.copied),
        (("builtins", "dict"), Box), (("builtins", "dict.fromkeys"), Box),
        (("builtins", "sorted"), Box), (("collections", "deque"), Box),
        (("collections", "OrderedDict"), Box), (("collections", "OrderedDict.fromkeys"), Box),
        (("collections", "Counter"), Box), (("collections", "defaultdict"), Box),
    ]:  # fmt: skip
        models[pair] = _copy(result, _POSITION.get(pair, 0), pair in _PAIRS, pair in _LISTS)
    models[("codecs", "encode")] = models[("_codecs", "encode")]
    table = {
        pair: ModelledCallable(
            ".".join(pair),
            model,
            hashes=pair in _HASHING,
            pairs=pair in _PAIRS,
            position=_POSITION.get(pair, 0),
        )
        for pair, model in models.items()
    }
    for name, forward in [
        ("_reconstructor", _reconstructor), ("__newobj__", _newobj), ("__newobj_ex__", _newobj_ex),
    ]:  # fmt: skip
        table[("copyreg", name)] = ModelledCallable(f"copyreg.{name}", forward=forward)
    return table


CALLABLES = _table()
#: The strings the model keeps as values (others are only lengths): the parts of the pairs
#: in `CALLABLES` and their Python 2 spellings (for STACK_GLOBAL), and encoding arguments.
KEPT_STRINGS = frozenset(
    {part for pair in CALLABLES for part in pair}
    | {part for old, new in NAME_MAPPING.items() if new in CALLABLES for part in old}
    | {old for old, new in IMPORT_MAPPING.items() if new in {m for m, _ in CALLABLES}}
    | _CODEC_FACTORS.keys()
    | {"strict"}
    | NUMPY_DTYPE_SPECS
    | _BYTE_ORDERS
)


def model_global(module: Any, name: Any) -> Any:
    """The model of the global ``module.name`` (strings as the model keeps them)."""
    if type(module) is not str or type(name) is not str:
        return FOREIGN
    return CALLABLES.get(map_python2(module, name, True), FOREIGN)


class Memo:
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
            values.extend([MISSING] * (index + 1 - len(values)))
        if values[index] is MISSING:
            self.count += 1
        values[index] = value

    def get(self, index: int) -> Any:
        return self.values[index] if 0 <= index < len(self.values) else MISSING
