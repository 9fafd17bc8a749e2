"""The python engine's saves of the built-in types the C pickler saves itself: each returns
None when it wrote everything, or a generator of the saves still needed (see `saver`).

A generator yields a sub-generator for each item that needs one, and None when a frame is
ready, so the loop can hand it out before the next item: at most one frame is ever held.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterator
from itertools import chain
from pickle import PickleBuffer, PicklingError
from typing import Any

from .base import SaverBase as Saver
from .base import Steps
from .batches import BATCH, appends, setitems
from .reduce import save_reduce

__all__ = ["DISPATCH"]

_NEWTUPLE = {1: b"\x85", 2: b"\x86", 3: b"\x87"}


def save_bytes(s: Saver, obj: bytes) -> Steps | None:
    if s.proto < 3:
        if not obj:
            return save_reduce(s, bytes, (), obj=obj)
        return save_reduce(s, codecs.encode, (str(obj, "latin1"), "latin1"), obj=obj)
    s.save_bytes_raw(obj)
    s.memoize(obj)
    return None


def save_bytearray(s: Saver, obj: bytearray) -> Steps | None:
    if s.proto < 5:
        return save_reduce(s, bytearray, (bytes(obj),) if obj else (), obj=obj)
    s.save_bytearray_raw(obj)
    s.memoize(obj)
    return None


def save_picklebuffer(s: Saver, obj: PickleBuffer) -> Steps | None:
    if s.proto < 5:
        raise s.c_error(obj, PicklingError("PickleBuffer can only be pickled with protocol >= 5"))
    with obj.raw() as view:
        if not view.contiguous:
            raise s.c_error(
                obj,
                PicklingError(
                    "PickleBuffer can not be pickled when pointing to a non-contiguous buffer"
                ),
            )
        in_band = True
        if s.buffer_callback is not None:
            in_band = bool(s.buffer_callback(obj))
        if in_band:  # the data, memoized as the buffer object (as the C pickler does)
            if view.readonly:
                s.save_bytes_raw(view.tobytes())
            else:
                s.save_bytearray_raw(view.tobytes())
            s.memoize(obj)
        else:
            s.write(b"\x97\x98" if view.readonly else b"\x97")
    return None


def save_tuple(s: Saver, obj: tuple[Any, ...]) -> Steps | None:
    if not obj:
        s.write(b")" if s.bin else b"(t")
        return None
    return _tuple(s, obj)


def _tuple(s: Saver, obj: tuple[Any, ...]) -> Steps:
    n = len(obj)
    save, ready = s.save, s.framer.ready
    small = n <= 3 and s.proto >= 2
    if not small:
        s.write(b"(")
    for item in obj:
        step = save(item)
        if step is not None or ready:
            yield step
    memo = s.memo
    if id(obj) in memo:  # recursive: built while saving its items; take the memo's
        get = s.get(memo[id(obj)][0])
        s.write(b"0" * n + get if small else (b"1" + get if s.bin else b"0" * (n + 1) + get))
        return
    s.write(_NEWTUPLE[n] if small else b"t")
    s.memoize(obj)


def save_list(s: Saver, obj: list[Any]) -> Steps | None:
    s.write(b"]" if s.bin else b"(l")
    s.memoize(obj)
    if not obj:
        return None
    return _list_exact(s, obj) if s.bin else appends(s, iter(obj))


def _list_exact(s: Saver, obj: list[Any]) -> Steps:
    """The C pickler's ``batch_list_exact``: a batch of one only for a list of one."""
    save, write, ready = s.save, s.write, s.framer.ready
    if len(obj) == 1:
        step = save(obj[0])
        if step is not None or ready:
            yield step
        write(b"a")
        return
    total = 0
    while total < len(obj):
        write(b"(")
        batch = 0
        while total < len(obj) and batch < BATCH:
            step = save(obj[total])
            if step is not None or ready:
                yield step
            total += 1
            batch += 1
        write(b"e")


def save_dict(s: Saver, obj: dict[Any, Any]) -> Steps | None:
    s.write(b"}" if s.bin else b"(d")
    s.memoize(obj)
    if not obj:
        return None
    return _dict_exact(s, obj) if s.bin else setitems(s, iter(obj.items()))


def _dict_exact(s: Saver, obj: dict[Any, Any]) -> Steps:
    """The C pickler's ``batch_dict_exact``."""
    save, write, ready = s.save, s.write, s.framer.ready
    size = len(obj)
    if size == 1:
        for key, value in obj.items():
            for item in (key, value):
                step = save(item)
                if step is not None or ready:
                    yield step
        write(b"s")
        return
    yield from _batches(s, obj, chain.from_iterable(obj.items()), 2, b"u", "dictionary")


def _batches(
    s: Saver, obj: Any, items: Iterator[Any], width: int, close: bytes, kind: str
) -> Steps:
    """The C pickler's batches of an exact dict or set: MARK, the saves of up to `BATCH`
    entries of *width* items, *close*; again while a batch was full (so a full last batch is
    followed by an empty one, as the C pickler writes it)."""
    save, write, ready = s.save, s.write, s.framer.ready
    size, full = len(obj), BATCH * width
    while True:
        write(b"(")
        n = 0
        for item in items:
            step = save(item)
            if step is not None or ready:
                yield step
            n += 1
            if n == full:
                break
        write(close)
        if len(obj) != size:
            raise RuntimeError(f"{kind} changed size during iteration")
        if n != full:
            return


def save_set(s: Saver, obj: set[Any]) -> Steps | None:
    if s.proto < 4:
        return save_reduce(s, set, (list(obj),), obj=obj)
    s.write(b"\x8f")
    s.memoize(obj)
    if not obj:
        return None
    return _set(s, obj)


def _set(s: Saver, obj: set[Any]) -> Steps:
    return _batches(s, obj, iter(obj), 1, b"\x90", "set")


def save_frozenset(s: Saver, obj: frozenset[Any]) -> Steps | None:
    if s.proto < 4:
        return save_reduce(s, frozenset, (list(obj),), obj=obj)
    return _frozenset(s, obj)


def _frozenset(s: Saver, obj: frozenset[Any]) -> Steps:
    save, ready = s.save, s.framer.ready
    s.write(b"(")
    for item in obj:
        step = save(item)
        if step is not None or ready:
            yield step
    memo = s.memo
    if id(obj) in memo:
        s.write(b"1" + s.get(memo[id(obj)][0]))
        return
    s.write(b"\x91")
    s.memoize(obj)


#: The types the C pickler saves itself, after the memo (None, bool, int and float are saved
#: before it, in `Saver.save`), before any ``reducer_override`` or dispatch table.
DISPATCH: dict[type, Callable[[Saver, Any], Steps | None]] = {
    bytes: save_bytes,
    dict: save_dict,
    set: save_set,
    frozenset: save_frozenset,
    list: save_list,
    tuple: save_tuple,
    bytearray: save_bytearray,
    PickleBuffer: save_picklebuffer,
}
