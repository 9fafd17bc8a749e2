"""The python engine (``engine="python"``): the C pickler's bytes, hooks and errors, at any
depth, streamed at every protocol, from any thread; and the default engine's fallback to it.

Byte identity on the corpus and hypothesis data is in test_identity.py; CPython's own pickle
tests run through it in test_pickletester.py.
"""

from __future__ import annotations

import copyreg
import io
import pickle
import sys
import threading
from collections.abc import Callable
from typing import Any

import anyio
import pytest

import streampickle
from chunks import assert_whole_chunks
from netutil import tcp_pair

PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)


class Node:
    """A linked list node: each level costs the C pickler several C frames."""

    def __init__(self, value: int, link: Node | None) -> None:
        self.value = value
        self.link = link


def nested_list(depth: int) -> list[Any]:
    deep: list[Any] = []
    for _ in range(depth):
        deep = [deep]
    return deep


def linked(count: int) -> Node | None:
    head = None
    for i in range(count):
        head = Node(i, head)
    return head


def python(obj: Any, protocol: int, **kwargs: Any) -> bytes:
    return b"".join(streampickle.iter_dumps(obj, protocol, engine="python", **kwargs))


# -- hooks: what a pickle.Pickler subclass customizes -------------------------------------------


class Ref:
    def __init__(self, key: str) -> None:
        self.key = key


class Tagged:
    def __init__(self, n: int) -> None:
        self.n = n


def _tagged(n: int) -> Tagged:
    return Tagged(n)


class Hooked(pickle.Pickler):
    """persistent_id for `Ref`, reducer_override for `Tagged`, a dispatch_table for complex
    (and a reducer_override asked about ints, which the C pickler never asks about)."""

    dispatch_table = {  # noqa: RUF012 (pickle reads it from the class)
        **copyreg.dispatch_table,
        complex: lambda c: (complex, (c.imag, c.real)),
    }

    def persistent_id(self, obj: Any) -> Any:
        return f"ref:{obj.key}" if isinstance(obj, Ref) else None

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is int:
            raise AssertionError("the C pickler saves ints itself")
        if isinstance(obj, Tagged):
            return (_tagged, (obj.n * 10,))
        return NotImplemented


HOOKED = [Ref("a"), Tagged(4), 3 + 4j, [Ref("b"), Tagged(5), Ref("a")], {"k": (1, 2j)}]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_pickler_classs_hooks_are_honoured_as_the_c_pickler_does(protocol: int) -> None:
    f = io.BytesIO()
    Hooked(f, protocol).dump(HOOKED)
    chunks = streampickle.iter_dumps(HOOKED, protocol, pickler_class=Hooked, engine="python")
    assert b"".join(chunks) == f.getvalue()


class HookedStreampickle(streampickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        return f"ref:{obj.key}" if isinstance(obj, Ref) else None


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_streampickle_pickler_on_the_python_engine_keeps_its_memo_across_dumps(
    protocol: int,
) -> None:
    shared = ["shared", Ref("x")]

    class Theirs(pickle.Pickler):
        persistent_id = HookedStreampickle.persistent_id

    expected, got = io.BytesIO(), io.BytesIO()
    theirs = Theirs(expected, protocol)
    ours = HookedStreampickle(got, protocol, engine="python")
    for pickler in (theirs, ours):
        pickler.dump(shared)
        pickler.dump([shared, "again"])  # a memo reference into the first dump
        pickler.clear_memo()
        pickler.dump(shared)
    assert got.getvalue() == expected.getvalue()
    assert b"g0\n" in got.getvalue() if protocol == 0 else b"h\x00" in got.getvalue()


# -- errors: the C pickler's own ---------------------------------------------------------------


class BadReduce:
    def __init__(self, value: Any) -> None:
        self.value = value

    def __reduce__(self) -> Any:
        return self.value


def _local() -> type:
    class Local:
        pass

    return Local


UNPICKLABLE: dict[str, Callable[[], Any]] = {
    "lambda": lambda: [1, lambda: None],
    "local class": lambda: [_local()],
    "local instance": lambda: {"k": _local()()},
    "reduce returns int": lambda: BadReduce(3),
    "reduce returns 1-tuple": lambda: BadReduce((list,)),
    "reduce func not callable": lambda: BadReduce((3, ())),
    "reduce args not a tuple": lambda: BadReduce((list, [1])),
    "reduce listitems not an iterator": lambda: BadReduce((list, (), None, [1])),
    "generator": lambda: (i for i in range(3)),
    "lock": lambda: [threading.Lock()],
    "picklebuffer below 5": lambda: pickle.PickleBuffer(b"x"),
}


def outcome(dumps: Callable[[], bytes]) -> tuple[str, Any]:
    try:
        return ("ok", dumps())
    except Exception as exc:
        return ("error", (type(exc), str(exc)))


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", sorted(UNPICKLABLE))
def test_unpicklable_objects_raise_what_pickle_raises(name: str, protocol: int) -> None:
    obj = UNPICKLABLE[name]()
    expected = outcome(lambda: pickle.dumps(obj, protocol))
    assert expected[0] == "error" or name == "picklebuffer below 5"
    assert outcome(lambda: python(obj, protocol)) == expected


def test_bad_arguments_are_refused_before_pickling() -> None:
    with pytest.raises(ValueError, match="engine must be 'c', 'python' or None"):
        streampickle.dumps(1, engine="cython")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="frame_size=1000 needs engine='python'"):
        streampickle.iter_dumps(1, frame_size=1000)
    with pytest.raises(ValueError, match="frame_size must be a positive int"):
        streampickle.dumps(1, engine="python", frame_size=0)
    with pytest.raises(ValueError, match="pickle protocol must be <= 5"):
        streampickle.dumps(1, 6, engine="python")


# -- chunks: whole frames at 4-5, chunks of frame_size at 0-3 ----------------------------------

RECORDS = [
    {"id": i, "name": f"user{i}", "tags": ["a", "b"], "blob": b"x" * (i % 300)} for i in range(3000)
]
WITH_PAYLOADS = [b"p" * 200_000, "s" * 100_000, bytearray(70_000), list(range(20_000))]


@pytest.mark.parametrize("protocol", [4, 5])
@pytest.mark.parametrize("obj", [RECORDS, WITH_PAYLOADS], ids=["records", "payloads"])
def test_chunks_are_whole_frames_and_large_payloads(obj: Any, protocol: int) -> None:
    chunks = list(streampickle.iter_dumps(obj, protocol, engine="python"))
    assert len(chunks) > 3
    assert_whole_chunks(chunks, pickle.dumps(obj, protocol))


@pytest.mark.parametrize("protocol", [0, 1, 2, 3])
@pytest.mark.parametrize("frame_size", [1, 4096, 65536])
def test_protocols_0_to_3_stream_in_chunks_of_frame_size(protocol: int, frame_size: int) -> None:
    chunks = list(
        streampickle.iter_dumps(RECORDS, protocol, engine="python", frame_size=frame_size)
    )
    data = pickle.dumps(RECORDS, protocol)
    assert b"".join(chunks) == data
    assert len(chunks) >= len(data) // (frame_size + 400)
    # Cut at opcode boundaries only: each chunk but the last ends just past frame_size, by at
    # most one opcode (the records' longest is a 300-byte string with its header).
    assert all(frame_size <= len(chunk) < frame_size + 400 for chunk in chunks[1:-1])


def test_frame_size_sets_the_frames_at_protocols_4_and_5() -> None:
    chunks = list(streampickle.iter_dumps(RECORDS, 5, engine="python", frame_size=4096))
    assert max(len(chunk) for chunk in chunks) < 4096 + 400
    assert streampickle.loads(b"".join(chunks)) == RECORDS


# -- depth: graphs the C pickler cannot pickle --------------------------------------------------

C_LIMIT_BEATEN = 100_000  # far past the C pickler's depth on every supported Python


def _assert_round_trips(data: bytes, protocol: int) -> None:
    # Deep structures cannot be compared with == (it recurses): pickle what loaded again.
    assert python(pickle.loads(data), protocol) == data


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_deep_nested_list_pickles_streams_and_loads(protocol: int) -> None:
    deep = nested_list(C_LIMIT_BEATEN)
    with pytest.raises(RecursionError):
        pickle.dumps(deep, protocol)  # the control
    chunks = list(streampickle.iter_dumps(deep, protocol, engine="python"))
    data = b"".join(chunks)
    assert streampickle.dumps(deep, protocol) == data  # the default reruns on python
    _assert_round_trips(data, protocol)


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_a_long_linked_list_of_objects_pickles_and_loads(protocol: int) -> None:
    head = linked(30_000)
    with pytest.raises(RecursionError):
        pickle.dumps(head, protocol)
    data = streampickle.dumps(head, protocol)
    back = pickle.loads(data)
    count = 0
    while back is not None:
        assert back.value == 29_999 - count
        back, count = back.link, count + 1
    assert count == 30_000


@pytest.mark.slow
@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("make", [nested_list, linked], ids=["nested-list", "linked-nodes"])
def test_a_million_levels(make: Callable[[int], Any], protocol: int) -> None:
    obj = make(1_000_000)
    assert sys.getrecursionlimit() == 1000
    data = python(obj, protocol)
    _assert_round_trips(data, protocol)


@pytest.mark.anyio
async def test_adump_and_pickle_stream_send_deep_graphs(anyio_backend: Any) -> None:
    deep = nested_list(C_LIMIT_BEATEN)
    expected = python(deep, 5)
    async with tcp_pair() as (client, server), anyio.create_task_group() as group:

        async def send() -> None:
            await streampickle.adump(deep, client, 5)  # the default falls back
            await streampickle.PickleStream(client, engine="python").send(linked(20_000))
            await client.send_eof()

        group.start_soon(send)
        got = await streampickle.aload(server)
        assert python(got, 5) == expected
        node = await streampickle.PickleStream(server).receive()
        assert node.value == 19_999


def test_a_recursion_error_after_chunks_went_out_names_the_python_engine() -> None:
    wide_then_deep = [list(range(100_000)), nested_list(C_LIMIT_BEATEN)]
    chunks = streampickle.iter_dumps(wide_then_deep, 5)
    assert next(chunks)  # a frame went out: too late to rerun
    with pytest.raises(RecursionError, match=r"pass engine='python'"):
        list(chunks)
    f = io.BytesIO()
    with pytest.raises(RecursionError, match=r"bytes had been written to the file"):
        streampickle.dump(wide_then_deep, f, 5)
    assert streampickle.loads(python(wide_then_deep, 5))[0] == list(range(100_000))


def test_engine_c_does_not_fall_back() -> None:
    with pytest.raises(RecursionError):
        streampickle.dumps(nested_list(C_LIMIT_BEATEN), 5, engine="c")
    with pytest.raises(RecursionError):
        streampickle.dump(nested_list(C_LIMIT_BEATEN), io.BytesIO(), 5, engine="c")


# -- threads, closing, memory -------------------------------------------------------------------


def test_a_python_engine_generator_is_resumed_from_any_thread() -> None:
    """As a framework's thread pool resumes a sync iterator from different workers."""
    chunks = streampickle.iter_dumps(RECORDS * 5, 5, engine="python")
    got: list[Any] = []

    def take() -> None:
        chunk = next(chunks, None)
        if chunk is not None:
            got.append(chunk)

    for _ in range(len(pickle.dumps(RECORDS * 5, 5)) // 60_000 + 3):
        thread = threading.Thread(target=take)
        thread.start()
        thread.join()
    assert b"".join(got) == pickle.dumps(RECORDS * 5, 5)


def test_closing_early_leaves_nothing_running() -> None:
    import gc
    import weakref

    chunks = streampickle.iter_dumps([RECORDS, nested_list(50_000)], 5, engine="python")
    next(chunks)
    ref = weakref.ref(chunks)
    chunks.close()
    del chunks
    gc.collect()
    assert ref() is None


def test_memory_holds_about_a_frame_not_the_pickle() -> None:
    import tracemalloc

    obj = [b"x" * 1000 for _ in range(20_000)]  # 20 MB of pickle, the objects exist already
    tracemalloc.start()
    try:
        peak_before = tracemalloc.get_traced_memory()[1]
        for _ in streampickle.iter_dumps(obj, 2, engine="python"):
            pass
        peak = tracemalloc.get_traced_memory()[1] - peak_before
    finally:
        tracemalloc.stop()
    # The memo (20,000 entries: ~3 MB) and a frame; the C engine holds 20 MB at protocol 2.
    assert peak < 6 << 20


def test_the_engines_benchmark_runs_and_finds_the_bytes_identical(tmp_path: Any) -> None:
    import subprocess
    from pathlib import Path

    script = Path(__file__).parent.parent / "benchmarks" / "bench_engines.py"
    table = tmp_path / "engines.md"
    args = ["--quick", "--rounds", "1", "--protocols", "5", "--markdown", str(table)]
    subprocess.run([sys.executable, str(script), *args], check=True, capture_output=True)
    text = table.read_text()
    assert "| records | 5 |" in text and "| linked objects | 5 |" in text
    assert "identical to `pickle.dumps`: True" in text


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.backends("asyncio", "trio")
@pytest.mark.parametrize("protocol", [0, 2, 5])
async def test_a_million_levels_through_adump_and_pickle_stream(protocol: int) -> None:
    deep = nested_list(1_000_000)
    expected = python(deep, protocol)
    async with tcp_pair() as (client, server), anyio.create_task_group() as group:

        async def send() -> None:
            await streampickle.adump(deep, client, protocol, engine="python")
            stream = streampickle.PickleStream(client, protocol, engine="python")
            await stream.send(deep)
            await client.send_eof()

        group.start_soon(send)
        got = await streampickle.aload(server)
        assert python(got, protocol) == expected
        del got
        got = await streampickle.PickleStream(server).receive()
        assert python(got, protocol) == expected
