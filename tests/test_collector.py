"""The garbage collector during loads (`streampickle._collector`): no full collection while a
large graph is built, the caller's setting restored, never paused while other tasks run, their
garbage still collected, and dropped cyclic graphs freed.

Counts of full collections are taken in a fresh interpreter (a child process), where nothing
else allocates; the rest runs here.
"""

from __future__ import annotations

import gc
import io
import pickle
import subprocess
import sys
import textwrap
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import anyio
import anyio.lowlevel
import pytest

import streampickle
from streampickle import _collector

needs_support = pytest.mark.skipif(not _collector.SUPPORTED, reason="CPython 3.10-3.13 only")


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    """The suite freezes what its modules built (conftest.py, for cheap leak checks), and
    frozen objects turn the pause off: unfreeze them for each test here, refreeze after."""
    gc.unfreeze()
    _collector._frozen_until = 0.0  # what earlier tests' frozen objects left noted
    try:
        yield
    finally:
        gc.collect()
        gc.freeze()


def settled_during(work: Callable[[], Any]) -> tuple[Any, int]:
    """*work()*'s result, and how many objects loads settled meanwhile (see _collector)."""
    gc.collect()  # pays any debt: the next begin() starts the count afresh
    before = _collector._Debt.total
    result = work()
    return result, _collector._Debt.total - before


def tracked_records(count: int) -> list[dict[str, Any]]:
    """Records the collector tracks (each holds a list): the graph a full collection walks."""
    return [{"id": i, "name": f"r{i}", "tags": [i, "x"]} for i in range(count)]


def run_child(code: str) -> str:
    """Run *code* in a fresh interpreter; its stdout (it must exit 0)."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


CHILD = """
import asyncio, gc, io, pickle, sys
import anyio
import streampickle

DATA = pickle.dumps([{"id": i, "name": f"r{i}", "tags": [i, "x"]} for i in range(300_000)], 5)
gc.collect()


async def aload() -> object:
    send, receive = anyio.create_memory_object_stream[bytes](10)
    async with anyio.create_task_group() as tasks:
        async def feed() -> None:
            async with send:
                for start in range(0, len(DATA), 1 << 16):
                    await send.send(DATA[start : start + (1 << 16)])
        tasks.start_soon(feed)
        async with receive:
            return await streampickle.aload(receive)


def load(way: str) -> object:
    if way == "loads":
        return streampickle.loads(DATA)
    if way == "load":  # from a file: the pause begins once 1 MiB was read
        return streampickle.load(io.BufferedReader(io.BytesIO(DATA)))
    if way == "pickle":
        return pickle.loads(DATA)
    return anyio.run(aload, backend=way)


way, pause = sys.argv[1], sys.argv[2] == "on"
streampickle.set_gc_pause(pause)
load(way)  # warm up (imports, the event loop's first allocations)
gc.collect()
older = []  # the generations of the collections of more than the young one


def note(phase, info):
    if phase == "start" and info["generation"] > 0:
        older.append(info["generation"])


gc.callbacks.append(note)
obj = load(way)
gc.callbacks.remove(note)
assert gc.isenabled()
assert obj == pickle.loads(DATA)
print(older.count(2), len(older))
"""


def collections(way: str, pause: bool) -> tuple[int, int]:
    """Full collections, and collections of the older generations (full ones included),
    during one load of 300k tracked records in a fresh interpreter."""
    code = f"import sys; sys.argv = ['-', {way!r}, {'on' if pause else 'off'!r}]\n" + CHILD
    full, older = map(int, run_child(code).split())
    return full, older


def full_collections(way: str, pause: bool) -> int:
    return collections(way, pause)[0]


@needs_support
@pytest.mark.parametrize("way", ["loads", "load", "asyncio", "trio"])
def test_a_large_load_runs_no_full_collection(way: str) -> None:
    """300k tracked records: no full collection while they are built. The control, the same
    load with the pause off, runs several on 3.10 and 3.11 (3.12+ collect less often)."""
    assert full_collections(way, pause=True) == 0
    if sys.version_info < (3, 12):
        assert full_collections(way, pause=False) >= 2


class Probe:
    """Notes, as it is unpickled, whether the collector is enabled at that point of the load."""

    seen: ClassVar[list[bool]] = []

    def __setstate__(self, state: Any) -> None:
        Probe.seen.append(gc.isenabled())


@needs_support
def test_a_load_from_a_file_pauses_only_once_it_is_large() -> None:
    """``load`` of a file (whose size is not known in advance) leaves the collector on for
    its first MiB: a small load pays no pause and no young collection of its own; a large
    one is paused from there on, and the collector is on again afterwards."""
    probe = Probe()
    probe.__dict__["x"] = 1  # a state, so that __setstate__ runs
    small = pickle.dumps([probe, [[i] for i in range(100)], probe], 5)
    large = pickle.dumps([probe, b"x" * (2 << 20), [[i] for i in range(100)], _fresh(probe)], 5)
    for file in (io.BytesIO, lambda data: io.BufferedReader(io.BytesIO(data))):
        Probe.seen.clear()
        streampickle.load(file(small))
        assert Probe.seen == [True]  # (the second is a memo reference)
        Probe.seen.clear()
        streampickle.load(file(large))
        assert Probe.seen == [True, False]
        assert gc.isenabled()


def _fresh(probe: Probe) -> Probe:
    other = Probe()
    other.__dict__.update(vars(probe))
    return other


@needs_support
@pytest.mark.parametrize("way", ["loads", "asyncio"])
def test_the_built_objects_skip_the_older_generations(way: str) -> None:
    """On every supported version (3.12 starts with frozen objects of its own, which must not
    turn the pause off): with the pause, no collection of an older generation runs during the
    load but in its first MiB (aload pauses from there on; loads is one segment); without it,
    the graph goes through them (3.12+ run no collection inside one C call such as loads': it
    waits for the next bytecode)."""
    paused, unpaused = collections(way, pause=True), collections(way, pause=False)
    assert paused[0] == 0
    if way == "loads":
        assert paused == (0, 0)
    if way == "asyncio" or sys.version_info < (3, 12):
        assert unpaused[1] >= 5 * max(1, paused[1]), (paused, unpaused)


@needs_support
def test_the_control_is_plain_pickle() -> None:
    """``pickle.loads`` of the same bytes pays the full collections the pause avoids."""
    if sys.version_info >= (3, 12):
        pytest.skip("3.12+ run about one full collection for this load")
    assert full_collections("pickle", pause=True) >= 2


def test_set_gc_pause_returns_the_previous_setting() -> None:
    previous = streampickle.set_gc_pause(False)
    try:
        assert previous is _collector.SUPPORTED
        assert streampickle.set_gc_pause(True) is False
        assert streampickle.set_gc_pause(True) is _collector.SUPPORTED
    finally:
        streampickle.set_gc_pause(previous)


DATA = pickle.dumps(tracked_records(100_000), 5)


def test_a_caller_that_disabled_the_collector_keeps_it_disabled() -> None:
    gc.disable()
    try:
        gc.collect()
        obj = streampickle.loads(DATA)
        assert not gc.isenabled()
        assert gc.get_count()[0] > 100_000  # nothing was settled behind the caller's back
        assert obj == pickle.loads(DATA)
    finally:
        gc.enable()


def test_frozen_objects_stay_frozen() -> None:
    """With objects frozen (``gc.freeze()``), loads leave the collector alone: settling would
    unfreeze them."""
    gc.collect()
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        assert frozen > 0
        assert streampickle.loads(DATA) == pickle.loads(DATA)
        assert gc.get_freeze_count() == frozen
        assert gc.isenabled()
    finally:
        gc.unfreeze()


@needs_support
def test_loads_in_two_threads() -> None:
    """Two threads loading at once: each pauses and resumes around its own load; both
    objects are right and the collector is enabled afterwards."""
    results: list[Any] = [None, None]

    def work(index: int) -> None:
        for _ in range(3):
            results[index] = streampickle.loads(DATA)

    threads = [threading.Thread(target=work, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expected = pickle.loads(DATA)
    assert results == [expected, expected]
    assert gc.isenabled()
    _, settled = settled_during(lambda: streampickle.loads(DATA))
    assert settled > 0  # loads pause here (nothing frozen)


# -- other tasks, while a load runs ------------------------------------------------------------


class Cycle:
    """A garbage cycle: an object that refers to itself."""

    def __init__(self) -> None:
        self.me = self


async def load_slowly(data: bytes) -> Any:
    """aload *data* from a memory stream fed a frame at a time, other tasks running between."""
    send, receive = anyio.create_memory_object_stream[bytes](1)
    async with anyio.create_task_group() as tasks:

        async def feed() -> None:
            async with send:
                for start in range(0, len(data), 1 << 16):
                    await send.send(data[start : start + (1 << 16)])
                    await anyio.lowlevel.checkpoint()

        tasks.start_soon(feed)
        async with receive:
            return await streampickle.aload(receive)


@pytest.mark.anyio
@needs_support
async def test_never_paused_while_other_tasks_run() -> None:
    """A task running between the load's segments always finds the collector enabled; the
    load did settle what it built."""
    seen: list[bool] = []
    done = anyio.Event()

    async def watch() -> None:
        while not done.is_set():
            seen.append(gc.isenabled())
            await anyio.lowlevel.checkpoint()

    gc.collect()
    before = _collector._Debt.total
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(watch)
        obj = await load_slowly(DATA)
        done.set()
    assert obj == pickle.loads(DATA)
    assert len(seen) > 20 and all(seen)
    assert _collector._Debt.total > before  # the load did pause and settle


@pytest.mark.anyio
@needs_support
async def test_other_tasks_garbage_is_collected_during_a_load() -> None:
    """Another task drops a garbage cycle each time it runs while a large load streams: they
    are collected as the load goes, not kept until it ends. The control, the collector
    disabled for the whole load, keeps them all."""

    async def garbage_during_load(disable: bool) -> tuple[int, int]:
        created, freed = 0, [0]
        done = anyio.Event()

        def count() -> None:
            freed[0] += 1

        async def litter() -> None:
            nonlocal created
            while not done.is_set():
                for _ in range(50):
                    weakref.finalize(Cycle(), count)
                    created += 1
                await anyio.lowlevel.checkpoint()

        gc.collect()
        before = _collector._Debt.total
        if disable:
            gc.disable()
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(litter)
                await load_slowly(DATA)
                done.set()
            assert disable or _collector._Debt.total > before  # it paused and settled
            return created, freed[0]
        finally:
            gc.enable()
            gc.collect()

    created, freed = await garbage_during_load(disable=False)
    assert created > 1000
    assert freed >= created * 0.9, (created, freed)
    created, freed = await garbage_during_load(disable=True)  # the control
    assert freed < created * 0.1, (created, freed)


@needs_support
def test_dropped_cyclic_graphs_are_freed() -> None:
    """Graphs with cycles, loaded and dropped one after another without any gc.collect(): the
    settled objects are counted and a full collection runs when the heap has grown by a
    quarter with them, so only a few graphs are ever alive at once (without the count: all
    40)."""
    output = run_child(
        """
        import gc, pickle, weakref
        import streampickle

        class Node:
            def __init__(self, parent):
                self.parent, self.children = parent, []

        root = Node(None)
        for _ in range(80_000):
            root.children.append(Node(root))
        DATA = pickle.dumps(root, 5)
        assert len(DATA) > streampickle._collector.SMALL  # a load that pauses
        del root
        gc.collect()
        alive = [0]
        most = 0

        def dropped():
            alive[0] -= 1

        for _ in range(40):
            graph = streampickle.loads(DATA)
            alive[0] += 1
            weakref.finalize(graph, dropped)
            most = max(most, alive[0])
            del graph
        print(most, alive[0])
        """
    )
    most, _alive = map(int, output.split())
    assert most <= 4, output


@needs_support
def test_frozen_objects_are_counted_once_per_recheck(monkeypatch: pytest.MonkeyPatch) -> None:
    """Counting frozen objects walks them all (``gc.get_freeze_count`` took 10 ms per load
    in this suite's frozen heap): with some frozen, large loads count them once per
    `RECHECK` seconds, leave the collector alone meanwhile, and look again after."""
    frozen = [[i] for i in range(1000)]
    gc.freeze()
    calls: list[int] = []
    count = gc.get_freeze_count

    def counting() -> int:
        calls.append(1)
        return count()

    monkeypatch.setattr(gc, "get_freeze_count", counting)
    data = pickle.dumps([[i] for i in range(200_000)], 5)  # over 1 MiB: loads pause
    assert len(data) >= _collector.SMALL
    try:
        for _ in range(5):
            assert streampickle.loads(data) == pickle.loads(data)
        for _ in range(200):  # as many large loads beginning
            assert not _collector.begin()  # the pause stays off meanwhile
        assert len(calls) == 1
        gc.unfreeze()
        assert not _collector.begin()  # until the finding expires...
        monkeypatch.setattr(_collector, "_frozen_until", 1.0)  # (long ago)
        assert _collector.begin()  # ...then the unfrozen heap is seen
        assert len(calls) == 2
    finally:
        gc.unfreeze()
        del frozen
