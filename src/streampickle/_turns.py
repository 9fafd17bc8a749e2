"""When a load or a dump lets other tasks run: `Turns`.

A driver that finds its data ready (an asyncio ``StreamReader`` with the bytes buffered, a
transport that is not paused) never waits, so it must give the event loop a turn itself (an
anyio checkpoint) or other tasks starve. Giving one after every frame, as the drivers did, is
fair but costly at scale: a thousand clients each sending a small object to one asyncio server
then all progress a frame at a time, so a thousand half-built objects (and half-written
pickles) are alive at once, where the naive server finishes each as its bytes arrive (measured
by ``benchmarks/bench_clients.py``: 3.5x its memory, against 1.3x with turns as here).

So on asyncio (and uvloop) a driver checkpoints only when it has run for `RUN_FOR` seconds
without the loop having had a turn: a probe callback scheduled with ``loop.call_soon`` says
whether the loop ran since it was armed (a stream that really waited ran it). The driver asks
at each of its decision points (about once a frame); the loop is then blocked for at most
about `RUN_FOR` plus a frame's work. On other backends (trio: every stream operation is a
checkpoint anyway) every decision point checkpoints, as before.
"""

from __future__ import annotations

import asyncio
from collections import deque
from time import perf_counter
from types import TracebackType

from anyio import Event
from anyio.lowlevel import checkpoint, checkpoint_if_cancelled

__all__ = ["RUN_FOR", "Turns", "Turnstile"]

#: Seconds a driver may run without the event loop having had a turn.
RUN_FOR = 0.002


class Turns:
    """One load's or dump's view of the event loop's turns; create it in the task, then await
    `take` at each decision point (or call `due`, and `gave` after the checkpoint it asked
    for)."""

    __slots__ = ("_loop", "_ran", "_since")

    def __init__(self) -> None:
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio: trio (anyio's other backend)
            self._loop = None
        self._ran = False
        self._since = 0.0
        self.gave()

    def due(self) -> bool:
        """Whether to checkpoint now: always on backends other than asyncio; on asyncio, when
        the loop has not run since the last look and the driver has run `RUN_FOR` since."""
        if self._loop is None:
            return True
        if self._ran:  # the loop had a turn (the driver waited, or others ran): start afresh
            self.gave()
            return False
        return perf_counter() - self._since >= RUN_FOR

    async def take(self) -> None:
        """At a decision point: a checkpoint if one is `due`, else only a cancellation check
        (a cancellation still lands there, within a frame or a write)."""
        if self.due():
            await checkpoint()
            self.gave()
        else:
            await checkpoint_if_cancelled()

    def gave(self) -> None:
        """The loop just had a turn (a checkpoint): arm the probe again."""
        if self._loop is not None:
            self._since = perf_counter()
            self._ran = False
            self._loop.call_soon(self._turn)

    def _turn(self) -> None:
        self._ran = True


class Turnstile:
    """Lets tasks through one at a time, in arrival order: ``async with turnstile:``.

    What ``anyio.Lock(fast_acquire=True)`` does for `streampickle.PickleStream`'s sends and
    receives, at a fraction of its size: a lock holds a deque (about 1.1 KB with the lock) from
    its creation, and a server with thousands of streams has two per stream. Here a task that
    finds the turnstile free only checks for cancellation (no event-loop pass); one that finds
    it taken waits on an ``anyio.Event`` of its own, queued (the queue is made at the first
    wait), and the task leaving hands the turn to the first in the queue. A waiter cancelled
    once the turn was handed to it passes it on.
    """

    __slots__ = ("_queue", "_taken")

    def __init__(self) -> None:
        self._taken = False
        self._queue: deque[Event] | None = None

    async def __aenter__(self) -> None:
        if not self._taken:
            await checkpoint_if_cancelled()
            self._taken = True
            return
        if self._queue is None:
            self._queue = deque()
        turn = Event()
        self._queue.append(turn)
        try:
            await turn.wait()
        except BaseException:
            if turn.is_set():  # handed the turn as the wait was cancelled: pass it on
                self._leave()
            else:
                self._queue.remove(turn)
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._leave()

    def _leave(self) -> None:
        if self._queue:
            self._queue.popleft().set()  # still taken: by the next task now
        else:
            self._taken = False
