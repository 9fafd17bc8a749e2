"""Loading without the cyclic garbage collector's toll: the collector is paused while the
unpickler builds, and what it built joins the oldest generation in O(1).

Why: on CPython 3.10-3.13 the collector runs a full collection each time the objects that
survived two young collections grow by a quarter of those a full collection last found. A
load builds a graph that only grows, so each full collection walks the whole graph built so
far: about a dozen of them for a graph of a million tracked objects, most of the time of
``pickle.loads`` on 3.10 and 3.11 (3.7 s against 1.2 s with the collector off, measured here)
and each one a stall of the event loop.

How: a *segment* is one synchronous run of the unpickler (the async drivers run one per
request, between their awaits, so the collector is never paused while other tasks run; the
sync loads are one segment). `pause` disables the collector for it if it is enabled; `resume`
restores it and, if the segment allocated at least a young generation's worth of objects,
first *settles* them: ``gc.freeze()`` and ``gc.unfreeze()`` move every generation into the
oldest one without visiting an object. (`pause` starts with a young collection of what other
tasks left in the young generation, so that their young garbage is collected at once rather
than settled; visiting the segment's own objects would cost 7% of the load.) No full
collection runs during the load. CPython still runs one over the grown heap some time later,
when its own trigger fires, as after any large allocation.

What that costs, and why nothing leaks: objects moved this way are not counted by the
collector's own trigger for a full collection, so garbage cycles among them (a received graph
with cycles, later dropped) would wait for a full collection that other work triggers. The
module keeps that count (*debt*): at the start of a load, if objects were settled since the
last full collection and the interpreter's allocated blocks grew by a quarter since then, it
runs the full collection the collector would have run (once; the growth of the load that
follows is not counted until the next). Acyclic graphs are freed by reference counting as
ever.

When it stays out of the way: on Python 3.14+, free-threaded builds and other implementations
(`SUPPORTED`); when the caller disabled the collector (``gc.disable()``, left as it is); when the
process has frozen objects (``gc.freeze()``: unfreezing would unfreeze them too; the immortal
tuples CPython 3.12 freezes at start-up excepted; found frozen, they are counted again only
every `RECHECK` seconds, as counting walks them all); and after
``set_gc_pause(False)``. Not thread-aware beyond this: a thread that disables the collector
while another thread's load runs a segment gets it re-enabled when that segment ends.
"""

from __future__ import annotations

import gc
import sys
import sysconfig
from collections.abc import Callable
from time import monotonic
from typing import TypeVar

T = TypeVar("T")

__all__ = ["SMALL", "SUPPORTED", "Lazy", "begin", "pause", "resume", "run", "set_gc_pause"]

#: Where pausing helps and moving generations with ``gc.freeze()``/``gc.unfreeze()`` is known
#: to be O(1): CPython 3.10-3.13 with the GIL (3.14's collector is incremental).
SUPPORTED = (
    sys.implementation.name == "cpython"
    and sys.version_info < (3, 14)
    and not sysconfig.get_config_var("Py_GIL_DISABLED")
)
#: ``loads`` of fewer bytes than this does not pause (the async drivers begin pausing once a
#: pickle has handed the unpickler as many): a smaller graph costs the collector little.
SMALL = 1 << 20
#: A segment starts with a young collection when the young generation holds at least this
#: many objects (other tasks' since the collector last ran: at most its threshold, 700), so
#: that their young garbage is collected before the segment's objects are settled with them.
COLLECT_FROM = 64
#: A full collection is due at a load's start when the allocated blocks grew by this fraction
#: since the last one, and objects were settled since (the collector's own ratio).
GROWTH = 0.25
#: `begin` looks at the heap (about 150 us for 6M blocks) at most once per this many objects
#: settled.
CHECK_EVERY = 1 << 16

_enabled = SUPPORTED
#: Objects the interpreter itself froze at start-up: CPython 3.12 puts its immortal static
#: tuples (375 here) in the permanent generation. Settling unfreezes them, as ``gc.unfreeze()``
#: would (they stay immortal); any other frozen object keeps loads from settling.
_STARTUP_FROZEN = gc.get_freeze_count() if sys.version_info[:2] == (3, 12) else 0
#: Seconds a finding that other objects are frozen stands before they are counted again
#: (see `_nothing_frozen`): a process that unfreezes them gets the pause back within this.
RECHECK = 10.0
_frozen_until = 0.0  # monotonic() until which objects are taken to be frozen (0: look)


class _Debt:
    """What was settled since the last full collection, and the heap's size then."""

    objects = 0
    checked = 0  # objects when `begin` last looked
    total = 0  # objects settled since the start (never reset)
    full_collections = 0  # gc.get_stats()[-1]["collections"] when last looked
    blocks = 0  # sys.getallocatedblocks() after that collection (or at the first settle)


def set_gc_pause(enabled: bool) -> bool:
    """Whether loads pause the cyclic garbage collector while they build (default: ``True``
    where `SUPPORTED`); returns the previous setting. Process-wide, as the collector is.

    With it on, a load of a large object graph runs no full collection (each one walks the
    whole graph built so far); the objects built join the oldest generation, and cycles among
    them are collected by a later full collection, as ever. See the "Garbage collector"
    section of the README.
    """
    global _enabled
    previous = _enabled
    _enabled = bool(enabled) and SUPPORTED
    return previous


def begin() -> bool:
    """Whether a load about to build may pause the collector in its segments. Runs the full
    collection its debt makes due first (see the module's docstring)."""
    if not _enabled or not gc.isenabled() or not _nothing_frozen():
        return False
    if _Debt.objects >= _Debt.checked + CHECK_EVERY:
        _Debt.checked = _Debt.objects
        if gc.get_stats()[-1]["collections"] != _Debt.full_collections:
            _Debt.objects = _Debt.checked = 0  # one ran since: the debt is paid
        elif sys.getallocatedblocks() > _Debt.blocks * (1 + GROWTH):
            gc.collect()
            _Debt.objects = _Debt.checked = 0
    return True


def _nothing_frozen() -> bool:
    """No object is frozen but those the interpreter froze at start-up (see `_STARTUP_FROZEN`).

    ``gc.get_freeze_count()`` walks the frozen objects (10 ms for a million: a pre-fork
    server that froze its heap would pay that on every load), so once it finds some, that
    finding stands for `RECHECK` seconds; with none frozen the count is free.
    """
    global _frozen_until
    if _frozen_until:
        if monotonic() < _frozen_until:
            return False
        _frozen_until = 0.0
    frozen = gc.get_freeze_count()
    if not frozen or frozen == _STARTUP_FROZEN:
        return True
    _frozen_until = monotonic() + RECHECK
    return False


def pause() -> bool:
    """Disable the collector for a segment, after a young collection of what others left
    (see `COLLECT_FROM`); ``True`` if it was enabled (pass it to `resume`)."""
    if gc.isenabled():
        if gc.get_count()[0] >= COLLECT_FROM:
            gc.collect(0)
        gc.disable()
        return True
    return False


def resume(paused: bool) -> None:
    """End a segment `pause` began: settle what it allocated if that is at least a young
    generation's worth, then re-enable the collector if `pause` disabled it."""
    if not paused:
        return
    young = gc.get_count()[0]
    if young >= gc.get_threshold()[0] and _nothing_frozen():
        if not _Debt.objects:
            _Debt.full_collections = gc.get_stats()[-1]["collections"]
            _Debt.blocks = sys.getallocatedblocks()
        gc.freeze()
        gc.unfreeze()
        _Debt.objects += young
        _Debt.total += young
    gc.enable()


class Lazy:
    """A segment that begins once a load has read `SMALL` bytes: for a sync load from a file,
    whose size is not known before (a small load then pays one comparison per read, not a
    pause and a young collection). Call `read` with each read's size and `end` when the load
    is over."""

    __slots__ = ("left", "paused")

    def __init__(self) -> None:
        self.left = SMALL
        self.paused: bool | None = None  # None: not begun

    def read(self, count: int) -> None:
        self.left -= count
        if self.left <= 0 and self.paused is None:
            self.paused = pause() if begin() else False

    def end(self) -> None:
        if self.paused:
            resume(True)


def run(func: Callable[[], T]) -> T:
    """``func()`` as one segment, if a load may pause the collector (`begin`)."""
    if not begin():
        return func()
    paused = pause()
    try:
        return func()
    finally:
        resume(paused)
