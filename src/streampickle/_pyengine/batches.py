"""The python engine's batches for any iterator: the list items and dict items of a reduce
(and lists and dicts at protocol 0), as the C pickler's ``batch_list`` and ``batch_dict``
write them: APPEND/SETITEM for a batch of one, else MARK ... APPENDS/SETITEMS per thousand."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .base import SaverBase as Saver
from .base import Steps

__all__ = ["BATCH", "appends", "setitems"]

BATCH = 1000  # pickle's _BATCHSIZE
_END = object()


def appends(s: Saver, items: Iterator[Any]) -> Steps:
    """The C pickler's ``batch_list``, for any iterator (a reduce's *listitems*)."""
    save, write, ready = s.save, s.write, s.framer.ready
    if not s.bin:
        for item in items:
            step = save(item)
            if step is not None or ready:
                yield step
            write(b"a")
        return
    while True:
        first = next(items, _END)
        if first is _END:
            return
        item = next(items, _END)
        if item is _END:
            step = save(first)
            if step is not None or ready:
                yield step
            write(b"a")
            return
        write(b"(")
        step = save(first)
        if step is not None or ready:
            yield step
        n = 1
        while item is not _END:
            step = save(item)
            if step is not None or ready:
                yield step
            n += 1
            if n == BATCH:
                break
            item = next(items, _END)
        write(b"e")
        if n != BATCH:
            return


def setitems(s: Saver, items: Iterator[Any]) -> Steps:
    """The C pickler's ``batch_dict``, for any iterator of pairs (a reduce's *dictitems*)."""
    if not s.bin:
        for pair in items:
            yield from _pair(s, pair)
            s.write(b"s")
        return
    while True:
        first = next(items, _END)
        if first is _END:
            return
        pair = next(items, _END)
        if pair is _END:
            yield from _pair(s, first)
            s.write(b"s")
            return
        s.write(b"(")
        yield from _pair(s, first)
        n = 1
        while pair is not _END:
            yield from _pair(s, pair)
            n += 1
            if n == BATCH:
                break
            pair = next(items, _END)
        s.write(b"u")
        if n != BATCH:
            return


def _pair(s: Saver, pair: Any) -> Steps:
    if type(pair) is not tuple or len(pair) != 2:
        raise TypeError("dict items iterator must return 2-tuples")
    save, ready = s.save, s.framer.ready
    for item in pair:
        step = save(item)
        if step is not None or ready:
            yield step
