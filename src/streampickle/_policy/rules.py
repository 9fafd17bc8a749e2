"""The stack rules: opcode by opcode, what a restricted load refuses, and what each opcode
does to the model of the stack and memo (`.model`)."""

from __future__ import annotations

import functools
import pickle
import sys
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from collections.abc import Callable
from typing import Any, NoReturn

from .._limits import Limits
from .._opcodes import BY_NAME, LENGTH_FIELDS, MARK, UNFRAMED_HEADERS
from .accounts import Accounts
from .allowlist import Allowlist, Pair
from .keys import add_loose, collidable
from .model import (
    ANY,
    ARGS_KEPT,
    BIG,
    EMPTY_TUPLE,
    FOREIGN,
    KEPT_STRINGS,
    NESTS,
    SHARING,
    Box,
    Frozen,
    Long,
    Made,
    Memo,
    ModelledCallable,
    NumpyArray,
    NumpyDtype,
    Refused,
    Shared,
    Sized,
    Tuple,
    Unsized,
    call_arguments,
    length,
    model_global,
    numpy_array_state,
    numpy_dtype_state,
    sized,
)

__all__ = ["EXTENSION_OPCODES", "MEMO_PUT", "Globals", "Rules", "kept_strings"]

EXTENSION_OPCODES = frozenset({"EXT1", "EXT2", "EXT4"})
MEMO_PUT = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


@functools.lru_cache(maxsize=64)
def kept_strings(pairs: frozenset[Pair]) -> frozenset[str]:
    """`KEPT_STRINGS` and the parts of *pairs* (an allowlist's) with their Python 2 spellings:
    the strings a STACK_GLOBAL may name an allowed global with."""
    modules = {module for module, _ in pairs}
    return (
        KEPT_STRINGS
        | {part for pair in pairs for part in pair}
        | {part for old, new in NAME_MAPPING.items() if new in pairs for part in old}
        | {old for old, new in IMPORT_MAPPING.items() if new in modules}
    )


class Globals:
    """What the vetting pass knows of a restricted load's allowlist: the strings it keeps as
    values (`kept_strings`), and whose calls may hand back existing objects (`shares`)."""

    __slots__ = ("allowlist", "fix_imports", "kept")

    def __init__(self, allowlist: Allowlist, fix_imports: bool) -> None:
        self.allowlist = allowlist
        self.fix_imports = fix_imports
        self.kept = kept_strings(allowlist.pairs)

    def shares(self, module: str, name: str) -> bool:
        """`Allowlist.shares` with this load's ``fix_imports``."""
        return self.allowlist.shares(module, name, fix_imports=self.fix_imports)


class Rules(Accounts):
    """Refuses, opcode by opcode in stream order, what a restricted load must not act on, and
    counts what one pickle uses of the opcode `Limits`.

    It keeps a model of the unpickler's stack (values as described above, and the depths at
    which the open marks were set; items below the topmost mark, the "fence", cannot be
    popped) and of its memo (*memo*, shared by the pickles of one reader). *origin* is the
    stream offset where the pickle starts. This runs for every opcode, so the common case is
    kept to a few operations.
    """

    def __init__(
        self,
        limits: Limits,
        memo: Memo | None = None,
        origin: int = 0,
        globals: Globals | None = None,
    ) -> None:
        self.limits = limits
        #: Which allowed globals' calls may hand back existing objects, and the strings to
        #: keep as values: those of `KEPT_STRINGS` and the names of the allowlist's pairs.
        self.globals = globals
        self.kept = KEPT_STRINGS if globals is None else globals.kept
        self.memo = Memo() if memo is None else memo
        self.origin = origin
        self.frame_end = -1  # stream offset where the current frame ends
        self.opcodes = 0
        self.stack: list[Any] = []
        self.fence = 0
        self.marks: list[int] = []
        self.memo_writes = 0
        self.built = 0  # items and bytes that the modelled calls build
        self.work = 0  # objects hashed, and steps of tracking nesting (see `charge_work`)
        self.end = origin  # stream offset of the end of the opcode being checked
        self.max_opcodes = _or_max(limits.max_opcodes)
        self.max_stack_depth = _or_max(limits.max_stack_depth)
        self.max_nesting = _or_max(limits.max_nesting)
        self.max_work = _or_max(limits.max_work)

    def check(self, name: str, arg: Any, start: int, end: int) -> None:
        """Raise `PolicyViolation` if the opcode *name* at ``[start, end)`` is refused,
        `LimitExceeded` if it exceeds a limit, ``UnpicklingError`` if it underflows the stack."""
        if name in _FRAMING or start < self.frame_end < end:
            self._check_framing(name, arg, start, end)
        self.end = end
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
            if end > self.frame_end and start + UNFRAMED_HEADERS.get(name, 0) != self.frame_end:
                self._refuse(
                    f"{name} at position {start} straddles the end of its frame (pickle's "
                    "frame rules forbid it; CPython's C unpickler reads through it)",
                    start,
                )
            if name == "STOP" and end != self.frame_end:
                self._refuse(f"the frame around STOP at position {start} runs past it", start)
        if name == "FRAME":
            self.frame_end = end + arg
        elif name in EXTENSION_OPCODES:
            self._refuse(
                f"{name} (copyreg extension code {arg}) at position {start} is refused under "
                "an allowlist: extension codes reach cached objects without find_class",
                start,
            )

    def _check_size(self, name: str, arg: Any, length: int) -> None:
        """Check a payload's size, or a memo index, against its limit."""
        field = LENGTH_FIELDS.get(name)
        if field is not None:
            self.limits.check(f"{name} payload", length - 1 - field.width, "max_payload_size")
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

    @staticmethod
    def _underflow(name: str, start: int) -> NoReturn:
        raise pickle.UnpicklingError(
            f"malformed pickle: {name} at position {start} pops more than the stack holds"
        )

    # -- globals and calls -------------------------------------------------------------------

    def global_model(self, module: Any, name: Any) -> Any:
        """The model of the global ``module.name``: a `ModelledCallable`, `FOREIGN`, or
        `SHARING` for one whose calls may hand back existing objects, and for one named by
        strings the model does not know (a STACK_GLOBAL of what calls returned)."""
        model = model_global(module, name)
        if model is not FOREIGN or self.globals is None:
            return model
        if type(module) is str and type(name) is str:
            return SHARING if self.globals.shares(module, name) else FOREIGN
        if type(module) is Sized or type(name) is Sized:
            return FOREIGN  # a string that names no allowed pair: find_class refuses it
        return SHARING

    def call(
        self, func: Any, args: tuple[Any, ...] | None, start: int, end: int, hops: int = 0
    ) -> Any:
        """The model of what calling *func* with *args* (positional arguments' models, None if
        unknown) returns; charge what it builds. `PolicyViolation` if *func* is modelled and
        its arguments are not known or cannot be sized, or if copyreg helpers call each other
        more than `_MAX_HOPS` deep (*hops* counts them)."""
        if type(func) is not ModelledCallable:
            if isinstance(func, Made):  # a call's result called: size it; it may share
                if args is not None:
                    self.charge("a call of a call's result", _crude_size(args), start, end)
                return Shared()
            return Shared() if func is SHARING else Made()  # a global the allowlist trusts
        if args is None:
            self._refuse(
                f"{func.name} at position {start} is called with keyword arguments or more "
                f"than {ARGS_KEPT} arguments: the vetting pass cannot size the call",
                start,
            )
            return ANY
        try:
            if func.forward is not None:
                if hops == _MAX_HOPS:
                    raise Unsized(f"copyreg helpers calling each other {hops} deep")
                return self.call(*func.forward(args), start, end, hops + 1)
            assert func.model is not None
            built, result = func.model(args)
            if func.hashes:
                self.hash(args, start)
                if len(args) > func.position:
                    self.rehash(args[func.position], func.pairs, start)
        except Refused as exc:
            self._refuse(f"{func.name} at position {start} is given {exc}", start)
            return ANY
        except Unsized as exc:
            self._refuse(
                f"{func.name} at position {start} is given {exc}: a restricted load cannot "
                "bound what the call would build",
                start,
            )
            return ANY
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
        elif type(arg) is str or (isinstance(arg, Sized) and arg.size is not None):
            total += length(arg)
    return total


def _or_max(limit: int | None) -> int:
    return sys.maxsize if limit is None else limit


_FRAMING = EXTENSION_OPCODES | {"FRAME", "STOP"}
_SIZED = LENGTH_FIELDS.keys() | MEMO_PUT | {"MEMOIZE"}


# -- what each opcode does to the model ------------------------------------------------------
# Each takes (rules, name, arg, start, end). The checks of the stack are the C unpickler's.

Handler = Callable[[Rules, str, Any, int, int], None]


def _pusher(value: Callable[[Any], Any]) -> Handler:
    def push(rules: Rules, name: str, arg: Any, start: int, end: int) -> None:
        rules.stack.append(value(arg))

    return push


def _payload_pusher(kind: Callable[[int], Sized], text: bool = False) -> Handler:
    """A str/bytes/bytearray push. Its argument is None for a payload read after its frame."""

    def push(rules: Rules, name: str, arg: Any, start: int, end: int) -> None:
        if arg is None:
            rules.stack.append(kind(end - start - UNFRAMED_HEADERS[name]))
        elif text and arg in rules.kept:
            rules.stack.append(arg)
        else:
            rules.stack.append(kind(len(arg)))

    return push


def _builder(count: int | None, build: Callable[[list[Any]], Any]) -> Handler:
    """An opcode that pops *count* items (those above the mark if None) and pushes one."""

    def handle(rules: Rules, name: str, arg: Any, start: int, end: int) -> None:
        items = rules.pop_mark(name, start) if count is None else rules.pop(count, name, start)
        rules.stack.append(build(items))

    return handle


def _container(
    count: int | None, make: Callable[[list[Any]], Any], hashed: int = 0, costs: bool = True
) -> Handler:
    """TUPLE/TUPLE1-3, LIST, DICT, FROZENSET: a container of the items popped (*count*, or
    those above the mark), at most ``max_nesting`` deep. *hashed*: every item (1) or every
    other one (2, a dict's keys) is hashed; *costs*: see `Accounts.contain`."""

    def handle(rules: Rules, name: str, arg: Any, start: int, end: int) -> None:
        items = rules.pop_mark(name, start) if count is None else rules.pop(count, name, start)
        made = make(items)
        rules.contain(made, items, costs)
        if hashed:
            rules.hash(items[::hashed], start, made)
        rules.stack.append(made)

    return handle


def _census_for(rules: Rules) -> dict[Any, Any] | None:
    """The census of a list made now (``Box.hashes``): kept if the list is made for a call
    that hashes its members, as protocols 0-3 write a set (``set([...])``)."""
    func = rules.stack[-1] if rules.stack else None
    return {} if type(func) is ModelledCallable and func.hashes and not func.pairs else None


def _appended(rules: Rules, target: Box, items: list[Any], start: int) -> None:
    """*items* are appended to *target*: count those that could collide, and where the list
    keeps a census, their hashes (see `streampickle._policy.keys`)."""
    loose = collidable(items)
    if loose:
        add_loose(target, loose)
        if target.hashes is not None:
            rules.hash(items, start, target, charge=False)


def _empty_list(rules: Rules, name: str, arg: Any, start: int, end: int) -> None:
    made = Box(0)
    made.listed = True
    made.hashes = _census_for(rules)
    rules.stack.append(made)


def _list(rules: Rules, name: str, arg: Any, start: int, end: int) -> None:
    items = rules.pop_mark(name, start)
    made = Box(len(items))
    made.listed = True
    rules.contain(made, items)
    made.hashes = _census_for(rules)
    _appended(rules, made, items, start)
    rules.stack.append(made)


def _grower(
    count: int | None, per_item: int = 1, hashed: int = 0, appends: bool = False
) -> Handler:
    """APPEND/SETITEM (*count* items) and APPENDS/SETITEMS/ADDITEMS (those above the mark)
    add to the container below them; *hashed* as for `_container`; *appends*: a list's."""

    def handle(rules: Rules, name: str, arg: Any, start: int, end: int) -> None:
        if count is None:
            items = rules.pop_mark(name, start, below=1)
        else:
            rules.need(count + 1, name, start)
            items = rules.stack[-count:]
            del rules.stack[-count:]
        target = rules.stack[-1]
        if rules.mutate(name, target, start):
            if type(target) is Box:
                if appends:
                    _appended(rules, target, items, start)
                elif target.listed:  # SETITEM(S) replace items of a list
                    _appended(rules, target, items[1::2], start)
                if target.size is not None:
                    target.size += len(items) // per_item
            rules.contain(target, items)
        if hashed:
            rules.hash(items[::hashed], start, target)

    return handle


def _put(rules: Rules, name: str, arg: Any, start: int, end: int) -> None:
    rules.need(1, name, start)
    rules.memo.put(arg if name != "MEMOIZE" else rules.memo.count, rules.stack[-1])


def _get(rules: Rules, name: str, arg: Any, start: int, end: int) -> None:
    rules.stack.append(rules.memo.get(arg))


def _dup(rules: Rules, name: str, arg: Any, start: int, end: int) -> None:
    rules.need(1, name, start)
    rules.stack.append(rules.stack[-1])


def _mark(rules: Rules, name: str, arg: Any, start: int, end: int) -> None:
    rules.fence = len(rules.stack)
    rules.marks.append(rules.fence)


def _pop(rules: Rules, name: str, arg: Any, start: int, end: int) -> None:
    if rules.marks and rules.marks[-1] == len(rules.stack):  # pops the mark, as C does
        rules.pop_mark(name, start)
    else:
        rules.pop(1, name, start)


def _build(rules: Rules, name: str, arg: Any, start: int, end: int) -> None:
    """BUILD sets the state of the object below it, once, after everything else."""
    rules.need(2, name, start)
    state = rules.stack.pop()
    target = rules.stack[-1]
    if rules.mutate(name, target, start):
        if type(target) is NumpyDtype and not numpy_dtype_state(state):
            rules._refuse(
                f"BUILD at position {start} gives a numpy dtype a state other than a plain "
                "number type's (a crafted dtype state corrupts memory)",
                start,
            )
        if type(target) is NumpyArray and not numpy_array_state(state):
            rules._refuse(
                f"BUILD at position {start} gives a numpy array a state other than (1, shape "
                "of literal ints, a vetted dtype, fortran flag, the data's bytes)",
                start,
            )
        target.built = True
        rules.contain(target, (state,))


def _readonly_buffer(rules: Rules, name: str, arg: Any, start: int, end: int) -> None:
    rules.need(1, name, start)


def _global(rules: Rules, name: str, arg: Any, start: int, end: int) -> None:
    rules.stack.append(rules.global_model(*arg.split(" ", 1)))


def _stack_global(rules: Rules, name: str, arg: Any, start: int, end: int) -> None:
    rules.stack.append(rules.global_model(*rules.pop(2, name, start)))


def _push_result(rules: Rules, result: Any, arguments: Any) -> None:
    """Push what a call returned; a container or object holds what it was given (a
    frozenset's hash is cached: hashing it costs one object)."""
    kind = type(result)
    if kind in NESTS:
        rules.contain(result, arguments, costs=kind is not Frozen)
    rules.stack.append(result)


def _reduce(rules: Rules, name: str, arg: Any, start: int, end: int) -> None:
    func, args = rules.pop(2, name, start)
    _push_result(rules, rules.call(func, call_arguments(args), start, end), (args,))


def _reduce_ex(rules: Rules, name: str, arg: Any, start: int, end: int) -> None:
    func, args, kwargs = rules.pop(3, name, start)
    result = rules.call(func, call_arguments(args, kwargs), start, end)
    _push_result(rules, result, (args, kwargs))


def _obj(rules: Rules, name: str, arg: Any, start: int, end: int) -> None:
    items = rules.pop_mark(name, start)
    if not items:
        rules._underflow(name, start)
    args = tuple(items[1:]) if len(items) <= ARGS_KEPT + 1 else None
    _push_result(rules, rules.call(items[0], args, start, end), items[1:])


def _inst(rules: Rules, name: str, arg: Any, start: int, end: int) -> None:
    items = rules.pop_mark(name, start)
    args = tuple(items) if len(items) <= ARGS_KEPT else None
    func = rules.global_model(*arg.split(" ", 1))
    _push_result(rules, rules.call(func, args, start, end), items)


def _stop(rules: Rules, name: str, arg: Any, start: int, end: int) -> None:
    rules.pop(1, name, start)


def _pop_mark(rules: Rules, name: str, arg: Any, start: int, end: int) -> None:
    rules.pop_mark(name, start)


def _nothing(rules: Rules, name: str, arg: Any, start: int, end: int) -> None:
    pass


def _unknown_opcode(rules: Rules, name: str, arg: Any, start: int, end: int) -> None:
    """An opcode newer than this model: its stack effect from pickletools, results unknown."""
    opcode = BY_NAME[name]
    if MARK in opcode.stack_before:
        rules.pop_mark(name, start, below=opcode.stack_before.index(MARK))
        rules.pop(opcode.stack_before.index(MARK), name, start)
    else:
        rules.pop(len(opcode.stack_before), name, start)
    rules.stack.extend(ANY for _ in opcode.stack_after)


_push_int = _pusher(lambda arg: arg if -BIG < arg < BIG else Long(arg))
_push_text = _payload_pusher(sized, text=True)
_TEXT_OPCODES = ["STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE"]
_TEXT_OPCODES += ["SHORT_BINUNICODE", "BINUNICODE8"]
_MODEL: dict[str, Handler] = {
    **dict.fromkeys(["INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"], _push_int),
    "NONE": _pusher(lambda arg: None),
    **dict.fromkeys(["FLOAT", "BINFLOAT"], _pusher(lambda arg: arg)),
    "NEWTRUE": _pusher(lambda arg: True),
    "NEWFALSE": _pusher(lambda arg: False),
    **dict.fromkeys(["PERSID", "NEXT_BUFFER"], _pusher(lambda arg: ANY)),
    **dict.fromkeys(_TEXT_OPCODES, _push_text),
    **dict.fromkeys(["BINBYTES", "SHORT_BINBYTES", "BINBYTES8"], _payload_pusher(sized)),
    "BYTEARRAY8": _payload_pusher(Box),
    "EMPTY_LIST": _empty_list,
    **dict.fromkeys(["EMPTY_DICT", "EMPTY_SET"], _pusher(lambda arg: Box(0))),
    "EMPTY_TUPLE": _pusher(lambda arg: EMPTY_TUPLE),
    "TUPLE": _container(None, Tuple),
    "TUPLE1": _container(1, Tuple),
    "TUPLE2": _container(2, Tuple),
    "TUPLE3": _container(3, Tuple),
    "LIST": _list,
    "DICT": _container(None, lambda items: Box(len(items) // 2), hashed=2),
    "FROZENSET": _container(None, Frozen.of, hashed=1, costs=False),
    "BINPERSID": _builder(1, lambda items: ANY),
    "APPEND": _grower(1, appends=True),
    "APPENDS": _grower(None, appends=True),
    "SETITEM": _grower(2, per_item=2, hashed=2),
    "SETITEMS": _grower(None, per_item=2, hashed=2),
    "ADDITEMS": _grower(None, hashed=1),
    **dict.fromkeys(["PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"], _put),
    **dict.fromkeys(["GET", "BINGET", "LONG_BINGET"], _get),
    "DUP": _dup,
    "MARK": _mark,
    "POP": _pop,
    "POP_MARK": _pop_mark,
    "BUILD": _build,
    "READONLY_BUFFER": _readonly_buffer,
    "STOP": _stop,
    "GLOBAL": _global,
    "STACK_GLOBAL": _stack_global,
    "REDUCE": _reduce,
    "NEWOBJ": _reduce,
    "NEWOBJ_EX": _reduce_ex,
    "OBJ": _obj,
    "INST": _inst,
    **dict.fromkeys(["PROTO", "FRAME", "EXT1", "EXT2", "EXT4"], _nothing),
}
