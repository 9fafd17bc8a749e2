"""Listing the globals a pickle needs without loading it: `required_globals`, and the walk of
opcodes and globals that `inspect` shares."""

from __future__ import annotations

import copyreg
import io
import pickle
import pickletools
from collections.abc import Iterator
from typing import Any

from ._opcodes import MARK, opcodes
from ._policy.allowlist import Pair, map_python2
from ._policy.rules import EXTENSION_OPCODES, MEMO_PUT

__all__ = ["opcodes_and_globals", "required_globals"]

#: The list type of the model's stack (a test counts the items its slices touch).
_Stack = list


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
    found = {pair: None for *_, pair in opcodes_and_globals(data, fix_imports) if pair}
    return list(found)


def opcodes_and_globals(
    file: Any, fix_imports: bool
) -> Iterator[tuple[Any, Any, int, int, Pair | None]]:
    """`opcodes`, each with the global it references (mapped from Python 2 names as a
    restricted load judges it) or ``None``. STACK_GLOBAL operands are followed through a model
    of the stack and memo; ``UnpicklingError`` when the pickle underflows it.

    The model does O(1) amortized work per opcode (each item is pushed once and popped at most
    once), so the walk is linear in the pickle's size, whatever its marks. Its memory is linear
    in the pickle's size too: one list slot per stack item, mark and memo entry put in order
    (at most ~9 bytes per byte of pickle), one dict entry per memo index put out of order (the
    walk holds the model of one pickle, not its bytes).
    """
    model = _Model()
    for opcode, arg, start, end in opcodes(file):
        pair = _referenced_pair(opcode.name, arg, model, start)
        yield opcode, arg, start, end, None if pair is None else map_python2(*pair, fix_imports)
        try:
            model.simulate(opcode, arg)
        except (IndexError, KeyError):
            raise pickle.UnpicklingError(
                f"malformed pickle: {opcode.name} at offset {start} underflows the stack or "
                "reads a missing memo entry"
            ) from None


def _referenced_pair(name: str, arg: Any, model: _Model, position: int | None) -> Pair | None:
    if name in ("GLOBAL", "INST"):
        module, _, qualname = arg.partition(" ")  # genops joins the two lines with a blank
        return module, qualname
    if name == "STACK_GLOBAL":
        operands = model.top_two()
        if operands is None or not all(isinstance(item, str) for item in operands):
            raise pickle.UnpicklingError(
                f"STACK_GLOBAL at position {position} does not follow two literal strings"
            )
        return operands
    if name in EXTENSION_OPCODES:
        registered: Pair | None = copyreg._inverted_registry.get(arg)  # type: ignore[attr-defined]
        if registered is None:
            raise pickle.UnpicklingError(f"unregistered extension code {arg} ({name})")
        return registered
    return None


def _effect(opcode: Any) -> tuple[bool, int, tuple[bool, ...]]:
    """*opcode*'s effect on the stack, from ``pickletools``: whether it pops through the
    topmost mark, how many entries it pops (under that mark, if it does), and what it pushes
    (True for a mark, False for a value)."""
    before = opcode.stack_before
    through_mark = MARK in before
    count = before.index(MARK) if through_mark else len(before)
    return through_mark, count, tuple(item is MARK for item in opcode.stack_after)


_EFFECTS = {opcode.name: _effect(opcode) for opcode in pickletools.opcodes}


class _Memo:
    """The model's memo: a list for the indices put in order (MEMOIZE, and what picklers write:
    8 bytes an entry), a dict for the others. ``KeyError`` for a missing entry."""

    __slots__ = ("dense", "sparse")

    def __init__(self) -> None:
        self.dense: list[Any] = []
        self.sparse: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.dense) + len(self.sparse)

    def __setitem__(self, index: int, value: Any) -> None:
        dense = self.dense
        if 0 <= index < len(dense):
            dense[index] = value
        elif index == len(dense):
            dense.append(value)
            while len(dense) in self.sparse:
                dense.append(self.sparse.pop(len(dense)))
        else:
            self.sparse[index] = value

    def __getitem__(self, index: int) -> Any:
        if 0 <= index < len(self.dense):
            return self.dense[index]
        return self.sparse[index]


class _Model:
    """A symbolic stack and memo: strings are kept, other values are None.

    Follows ``pickletools.dis``: a MARK is an entry of its own; an opcode whose stack_before
    holds a markobject pops through the topmost mark. The marks are not kept in `stack` but
    as indices in `marks` (a mark at index *i* sits just below ``stack[i]``), so that popping
    through the topmost mark costs what it pops, never a scan or copy of the stack.
    """

    __slots__ = ("marks", "memo", "stack")

    def __init__(self) -> None:
        self.stack: list[Any] = _Stack()
        self.marks: list[int] = []
        self.memo = _Memo()

    def _top_is_mark(self) -> bool:
        return bool(self.marks) and self.marks[-1] == len(self.stack)

    def top_two(self) -> Pair | None:
        """The two topmost entries, if both are values; else None."""
        stack = self.stack
        if len(stack) < 2 or (self.marks and self.marks[-1] >= len(stack) - 1):
            return None
        return stack[-2], stack[-1]

    def _top(self) -> Any:
        if self._top_is_mark():
            return MARK
        return self.stack[-1]

    def _push(self, value: Any) -> None:
        if value is MARK:
            self.marks.append(len(self.stack))
        else:
            self.stack.append(value)

    def _pop(self, count: int) -> None:
        stack, marks = self.stack, self.marks
        for _ in range(count):
            if marks and marks[-1] == len(stack):
                marks.pop()
            else:
                stack.pop()  # IndexError when empty: an underflow

    def simulate(self, opcode: Any, arg: Any) -> None:
        """Apply *opcode*'s effect."""
        name = opcode.name
        if name in MEMO_PUT:
            self.memo[arg] = self._top()
        elif name == "MEMOIZE":
            self.memo[len(self.memo)] = self._top()
        elif name in _MEMO_GET:
            self._push(self.memo[arg])
        elif name == "DUP":
            self._push(self._top())
        else:
            through_mark, count, after = _EFFECTS[name]
            if through_mark:
                if not self.marks:
                    raise IndexError("no MARK on the stack")
                del self.stack[self.marks.pop() :]
            self._pop(count)
            if name in _STRINGS:
                self.stack.append(arg)
            else:
                for is_mark in after:
                    if is_mark:
                        self.marks.append(len(self.stack))
                    else:
                        self.stack.append(None)
