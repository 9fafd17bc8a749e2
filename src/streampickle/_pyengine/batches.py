"""The python engine's batches for any iterator: the list items and dict items of a reduce
(and lists and dicts at protocol 0), as the C pickler's ``batch_list`` and ``batch_dict``
write them: APPEND/SETITEM for a batch of one, else MARK ... APPENDS/SETITEMS per thousand."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from .base import SaverBase as Saver
from .base import Steps

__all__ = ["BATCH", "appends", "setitems"]

BATCH = 1000  # pickle's _BATCHSIZE
_END = object()


def appends(s: Saver, items: Iterator[Any]) -> Steps:
    """The C pickler's ``batch_list``, for any iterator (a reduce's *listitems*)."""
    return _batches(s, items, _item, b"a", b"e")


def setitems(s: Saver, items: Iterator[Any]) -> Steps:
    """The C pickler's ``batch_dict``, for any iterator of pairs (a reduce's *dictitems*)."""
    return _batches(s, items, _pair, b"s", b"u")


def _batches(
    s: Saver, items: Iterator[Any], entry: Callable[[Saver, Any], Steps], one: bytes, many: bytes
) -> Steps:
    """The C pickler's batches of an iterator's entries (each saved by *entry*): at protocol
    0 each entry then *one*; else a batch of one is the entry then *one*, a longer batch is
    MARK, up to `BATCH` entries, *many*; again while a batch was full."""
    if not s.bin:
        for item in items:
            yield from entry(s, item)
            s.write(one)
        return
    while True:
        first = next(items, _END)
        if first is _END:
            return
        item = next(items, _END)
        if item is _END:
            yield from entry(s, first)
            s.write(one)
            return
        s.write(b"(")
        yield from entry(s, first)
        n = 1
        while item is not _END:
            yield from entry(s, item)
            n += 1
            if n == BATCH:
                break
            item = next(items, _END)
        s.write(many)
        if n != BATCH:
            return


def _item(s: Saver, item: Any) -> Steps:
    step = s.save(item)
    if step is not None or s.framer.ready:
        yield step


def _pair(s: Saver, pair: Any) -> Steps:
    if type(pair) is not tuple or len(pair) != 2:
        raise TypeError("dict items iterator must return 2-tuples")
    save, ready = s.save, s.framer.ready
    for item in pair:
        step = save(item)
        if step is not None or ready:
            yield step
