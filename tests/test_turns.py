"""When the drivers let other tasks run (`streampickle._turns`): on asyncio only once they have
run `RUN_FOR` without the event loop having had a turn; on trio at every decision point.

The clock is the module's ``perf_counter``, replaced here by a fake one, so that nothing
depends on this machine's speed: *frozen* (the driver never runs long enough) or *ticking*
(each reading is 1 ms after the last).
"""

from __future__ import annotations

import asyncio
import io
import itertools
import pickle
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import streampickle
from netutil import NeverWaits
from streampickle import _turns
from streampickle._policy import reader
from streampickle._policy.model import Memo

pytestmark = pytest.mark.anyio

OBJ = [{"id": i, "name": f"row {i}"} for i in range(30_000)]  # 11 frames at protocol 5
DATA = pickle.dumps(OBJ, 5)


def clock(step: float) -> Callable[[], float]:
    """A fake ``perf_counter`` that advances *step* seconds each time it is read."""
    counter: Iterator[int] = itertools.count()
    return lambda: next(counter) * step


class Writer:
    """Takes every write at once, never yielding (a transport that never pauses)."""

    def __init__(self) -> None:
        self.writes = 0

    async def write(self, data: bytes) -> None:
        self.writes += 1


async def beats_during(work: Callable[[], Any], progress: Callable[[], int]) -> list[int]:
    """Run *work* beside a task that records ``progress()`` each time it runs, from the
    moment *work* starts to the moment it ends."""
    beats: list[int] = []
    done = False

    async def heartbeat() -> None:
        while not done:
            beats.append(progress())
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as group:
        group.start_soon(heartbeat)
        await anyio.lowlevel.checkpoint()
        beats.clear()
        await work()
        done = True
    return beats


@pytest.mark.backends("asyncio", "uvloop")
async def test_a_quick_adump_on_asyncio_does_not_stop_for_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pickler that never runs RUN_FOR (a frozen clock) writes all its frames in one go:
    other tasks do not run in between (a thousand small transfers then do not all progress
    together, each holding a half-written pickle)."""
    monkeypatch.setattr(_turns, "perf_counter", clock(0.0))
    writer = Writer()
    beats = await beats_during(lambda: streampickle.adump(OBJ, writer, 5), lambda: writer.writes)
    assert writer.writes >= 10
    assert all(beat in (0, writer.writes) for beat in beats)


@pytest.mark.backends("asyncio", "uvloop")
async def test_a_long_adump_on_asyncio_lets_others_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """With each write taking 1 ms (a ticking clock) and RUN_FOR 2 ms, other tasks run at
    least once every three writes."""
    monkeypatch.setattr(_turns, "perf_counter", clock(0.001))
    writer = Writer()
    beats = await beats_during(lambda: streampickle.adump(OBJ, writer, 5), lambda: writer.writes)
    assert writer.writes >= 10
    assert max(b - a for a, b in itertools.pairwise([0, *beats, writer.writes])) <= 3


@pytest.mark.backends("asyncio", "uvloop")
async def test_a_quick_aload_on_asyncio_does_not_stop_for_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_turns, "perf_counter", clock(0.0))
    reader = NeverWaits(DATA)
    obj: list[Any] = []

    async def load() -> None:
        obj.append(await streampickle.aload(reader))

    beats = await beats_during(load, lambda: reader.pos)
    assert obj == [OBJ]
    assert all(beat in (0, reader.pos) for beat in beats)


@pytest.mark.backends("asyncio", "uvloop")
async def test_a_long_aload_on_asyncio_lets_others_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ticking: each frame's decision point comes 1 ms after the last."""
    monkeypatch.setattr(_turns, "perf_counter", clock(0.001))
    reader = NeverWaits(DATA)
    beats = await beats_during(lambda: streampickle.aload(reader), lambda: reader.pos)
    assert len({beat for beat in beats if 0 < beat < len(DATA)}) >= 3  # all along the load


@pytest.mark.backends("asyncio", "uvloop")
async def test_a_stream_that_waits_gets_no_extra_checkpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A writer whose writes let the loop run (a paused transport's drain) needs no checkpoint
    of ours, however long the pickling runs."""
    monkeypatch.setattr(_turns, "perf_counter", clock(0.01))
    answers: list[bool] = []
    due = _turns.Turns.due

    def spy(self: _turns.Turns) -> bool:
        answers.append(due(self))
        return answers[-1]

    monkeypatch.setattr(_turns.Turns, "due", spy)

    class Waits(Writer):
        async def write(self, data: bytes) -> None:
            await anyio.lowlevel.checkpoint()  # the loop runs
            self.writes += 1

    await streampickle.adump(OBJ, Waits(), 5)
    assert len(answers) >= 10 and not any(answers)


@pytest.mark.backends("trio")
async def test_on_trio_every_decision_point_checkpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_turns, "perf_counter", clock(0.0))
    writer = Writer()
    beats = await beats_during(lambda: streampickle.adump(OBJ, writer, 5), lambda: writer.writes)
    assert max(b - a for a, b in itertools.pairwise([0, *beats, writer.writes])) <= 2


async def test_a_run_of_small_receives_lets_others_run(
    monkeypatch: pytest.MonkeyPatch, anyio_backend: Any
) -> None:
    """`PickleStream.receive` of objects already buffered never waits: on asyncio it gives the
    loop a turn once it has run RUN_FOR (ticking: every few receives), on trio at each one."""
    monkeypatch.setattr(_turns, "perf_counter", clock(0.001))
    small = list(range(300))
    stream = streampickle.PickleStream(NeverWaits(b"".join(pickle.dumps(n, 5) for n in small)))
    got: list[int] = []

    async def receive_all() -> None:
        for _ in small:
            got.append(await stream.receive())

    beats = await beats_during(receive_all, lambda: len(got))
    assert got == small
    assert max(b - a for a, b in itertools.pairwise([0, *beats, len(got)])) <= 4


@pytest.mark.usefixtures("checkpoint_every_frame")
async def test_a_restricted_load_lets_others_run_within_a_frame(anyio_backend: Any) -> None:
    """Checking a frame of small objects takes tens of milliseconds under ``allow=``: the
    vetting reader offers the driver a turn every `TURN_EVERY` opcodes (a ``Read(0)``), so
    other tasks run many times within each frame, not once a frame."""
    records = [{"id": i, "name": f"row {i}"} for i in range(5_000)]  # 2 frames, ~20k opcodes
    data = pickle.dumps(records, 5)
    got: list[Any] = []

    async def load() -> None:
        got.append(await streampickle.aload(NeverWaits(data), allow=[]))

    beats = await beats_during(load, lambda: len(got))
    assert got == [records]
    assert len(data) < 3 * 65_536 and len(beats) >= 20


@pytest.mark.usefixtures("checkpoint_every_frame")
async def test_a_restricted_load_lets_others_run_while_its_model_is_freed(
    anyio_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The vetting pass's model of the memo (a model object per container) is freed after
    the pickle's STOP a chunk at a time, with a turn offered after each
    (`CheckedReader.release`): other tasks see it shrink, and the object comes back whole."""
    memos: list[Memo] = []

    class Watched(Memo):
        __slots__ = ()

        def __init__(self) -> None:
            super().__init__()
            memos.append(self)

    monkeypatch.setattr(reader, "Memo", Watched)
    monkeypatch.setattr(reader, "RELEASE_EVERY", 1_000)
    records = [{"id": i, "name": f"row {i}"} for i in range(5_000)]  # ~10,000 memo entries
    got: list[Any] = []

    async def load() -> None:
        got.append(await streampickle.aload(NeverWaits(pickle.dumps(records, 5)), allow=[]))

    beats = await beats_during(load, lambda: len(memos[0].values) if memos else -1)
    assert got == [records]
    assert max(beats) > 9_000  # ~10,000 put (the last turn came a little before the STOP)
    freed = beats[beats.index(max(beats)) :]
    assert freed == sorted(freed, reverse=True)
    # Freed in chunks of 1,000 with a turn after each: 9 sizes between. trio runs the tasks of
    # a batch in random order, so the watcher may miss some (it ran before the loader in one
    # batch and after it in the next); all at once, it would see none.
    assert len({size for size in freed if 0 < size < 9_000}) >= 3  # seen at 8,003, 7,003...
    assert len(memos) == 1 and memos[0].values == []


def test_a_sync_restricted_load_offers_its_file_no_turns() -> None:
    """Only the async drivers are offered turns: a file given to `streampickle.load` is never
    asked for a zero-length read."""

    class NoEmptyReads(io.BytesIO):
        def read(self, size: int | None = -1, /) -> bytes:
            assert size != 0, "read(0) on a sync file"
            return super().read(size)

    records = [{"id": i, "name": f"row {i}"} for i in range(5_000)]
    assert streampickle.load(NoEmptyReads(pickle.dumps(records, 5)), allow=[]) == records


# -- Turnstile: PickleStream's sends and receives, one task at a time -------------------------


async def test_a_turnstile_lets_tasks_through_one_at_a_time_in_arrival_order(
    anyio_backend: Any,
) -> None:
    turnstile = _turns.Turnstile()
    inside: list[str] = []
    order: list[str] = []

    async def through(name: str) -> None:
        async with turnstile:
            inside.append(name)
            assert inside == [name]  # nobody else inside
            order.append(name)
            await anyio.sleep(0.01)
            inside.remove(name)

    async with anyio.create_task_group() as group:
        for name in "abcd":
            group.start_soon(through, name)
            await anyio.wait_all_tasks_blocked()  # each queued before the next starts
    assert order == list("abcd")
    async with turnstile:  # free again, taken without waiting
        pass


async def test_a_free_turnstile_takes_no_event_loop_pass(anyio_backend: Any) -> None:
    """As ``anyio.Lock(fast_acquire=True)``: another task ready to run does not run."""
    turnstile = _turns.Turnstile()
    ran: list[bool] = []

    async def other() -> None:
        ran.append(True)

    async with anyio.create_task_group() as group:
        group.start_soon(other)
        async with turnstile:
            assert ran == []
    assert ran == [True]


async def test_a_cancelled_waiter_leaves_the_queue(anyio_backend: Any) -> None:
    turnstile = _turns.Turnstile()
    order: list[str] = []

    async def through(name: str, scope: anyio.CancelScope) -> None:
        with scope:
            async with turnstile:
                order.append(name)

    first, second = anyio.CancelScope(), anyio.CancelScope()
    with anyio.fail_after(5):  # a turn lost would leave the second waiting for good
        async with anyio.create_task_group() as group, turnstile:
            group.start_soon(through, "first", first)
            group.start_soon(through, "second", second)
            await anyio.wait_all_tasks_blocked()
            first.cancel()  # while it waits in the queue
            await anyio.wait_all_tasks_blocked()
    assert order == ["second"] and first.cancelled_caught


async def test_a_waiter_cancelled_as_it_is_handed_the_turn_passes_it_on(
    anyio_backend: Any,
) -> None:
    """The holder leaves and, in the same step, the first waiter is cancelled: the turn goes
    on to the next waiter, and the turnstile ends free. (anyio delivers a scope's
    cancellation once the woken waiter is inside, at its next checkpoint; asyncio's own
    ``Task.cancel``, as from ``asyncio.timeout``, lands in the wait itself: see the next
    test.)"""
    turnstile = _turns.Turnstile()
    order: list[str] = []

    async def through(name: str, scope: anyio.CancelScope) -> None:
        with scope:
            async with turnstile:
                await anyio.lowlevel.checkpoint()
                order.append(name)

    first, second = anyio.CancelScope(), anyio.CancelScope()
    with anyio.fail_after(5):  # a turn lost would leave the second waiting for good
        async with anyio.create_task_group() as group:
            await turnstile.__aenter__()
            group.start_soon(through, "first", first)
            group.start_soon(through, "second", second)
            await anyio.wait_all_tasks_blocked()
            await turnstile.__aexit__(None, None, None)
            first.cancel()
    assert order == ["second"] and first.cancelled_caught
    with anyio.fail_after(1):
        async with turnstile:
            pass


@pytest.mark.backends("asyncio", "uvloop")
async def test_an_asyncio_waiter_cancelled_in_its_wait_as_it_is_handed_the_turn_passes_it_on(
    anyio_backend: Any,
) -> None:
    turnstile = _turns.Turnstile()
    order: list[str] = []

    async def through(name: str) -> None:
        async with turnstile:
            order.append(name)

    await turnstile.__aenter__()
    first = asyncio.ensure_future(through("first"))
    second = asyncio.ensure_future(through("second"))
    await anyio.wait_all_tasks_blocked()
    await turnstile.__aexit__(None, None, None)  # hands the turn to the first...
    first.cancel()  # ...whose wait then raises CancelledError
    with anyio.fail_after(5):  # a turn lost would leave the second waiting for good
        await second
    assert order == ["second"] and first.cancelled()
    async with turnstile:
        pass
