"""Listing the globals a pickle needs without loading it: `required_globals`, and the walk of
opcodes and globals that `inspect` shares."""

from __future__ import annotations

import copyreg
import io
import pickle
from collections.abc import Iterator
from typing import Any

from ._opcodes import MARK, opcodes
from ._policy.allowlist import Pair, map_python2
from ._policy.rules import EXTENSION_OPCODES, MEMO_PUT

__all__ = ["opcodes_and_globals", "required_globals"]


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
    of the stack and memo; ``UnpicklingError`` when the pickle underflows it."""
    stack: list[Any] = []
    memo: dict[int, Any] = {}
    for opcode, arg, start, end in opcodes(file):
        pair = _referenced_pair(opcode.name, arg, stack, start)
        yield opcode, arg, start, end, None if pair is None else map_python2(*pair, fix_imports)
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
    if name in EXTENSION_OPCODES:
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
    if name in MEMO_PUT:
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
        if MARK in before or (name == "POP" and stack and stack[-1] is MARK):
            if MARK not in stack:
                raise IndexError("no MARK on the stack")
            del stack[len(stack) - 1 - stack[::-1].index(MARK) :]
            count = before.index(MARK) if MARK in before else 0
        if count > len(stack):
            raise IndexError(f"pops {count} of {len(stack)} items")
        del stack[len(stack) - count :]
        if name in _STRINGS:
            stack.append(arg)
        else:
            stack.extend(MARK if item is MARK else None for item in opcode.stack_after)
