"""The incremental pickler: chunk boundaries, zero copy, errors, early exit, contexts, threads."""

from __future__ import annotations

import contextvars
import copyreg
import gc
import io
import pickle
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import cloudpickle
import pytest

import streampickle
from chunks import FRAME_TARGET, assert_whole_chunks
from corpus import Plain, Reduced
from leaks import GreenletLedger
from streampickle import _cengine


def big_graph() -> list[Any]:
    return [
        [{"id": i, "name": f"record {i}", "score": i / 7} for i in range(30_000)],
        b"B" * 300_000,
        "S" * 150_000,
        bytearray(b"A" * 100_000),
        list(range(40_000)),
    ]


@pytest.mark.parametrize("protocol", [4, 5])
def test_every_chunk_is_a_whole_frame_or_a_whole_large_payload(protocol: int) -> None:
    obj = big_graph()
    found = assert_whole_chunks(
        list(streampickle.iter_dumps(obj, protocol)), pickle.dumps(obj, protocol)
    )
    assert len(found.frames) > 10 and len(found.payloads) == 3  # the graph exercises both rules


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize(
    "obj",
    [
        pytest.param(list(range(50)), id="one-frame"),
        pytest.param([b"x" * FRAME_TARGET, b"y" * FRAME_TARGET], id="payloads-back-to-back"),
        pytest.param(["s" * (FRAME_TARGET - 1), "é" * FRAME_TARGET], id="str-at-the-target"),
        pytest.param([bytearray(3 * FRAME_TARGET), 1], id="bytearray"),
    ],
)
def test_chunk_rule_holds_at_edges(obj: Any, protocol: int) -> None:
    assert_whole_chunks(list(streampickle.iter_dumps(obj, protocol)), pickle.dumps(obj, protocol))


def test_chunk_checker_refuses_a_cut_inside_a_frame() -> None:
    """The checker itself: a frame split across two chunks, or two frames in one chunk, fail."""
    obj = big_graph()
    chunks = [bytes(c) for c in streampickle.iter_dumps(obj, 5)]
    data = b"".join(chunks)
    split = [chunks[0][:100], chunks[0][100:], *chunks[1:]]
    with pytest.raises(AssertionError):
        assert_whole_chunks(split, data)
    merged = [chunks[0] + chunks[1], *chunks[2:]]
    with pytest.raises(AssertionError):
        assert_whole_chunks(merged, data)


def test_large_buffers_pass_through_without_copy() -> None:
    blob = bytearray(b"z" * 200_000)
    payload = b"y" * 100_000
    chunks = list(streampickle.iter_dumps([blob, payload], 5))
    views = [c for c in chunks if isinstance(c, memoryview)]
    assert len(views) == 1 and views[0].obj is blob and views[0].readonly
    assert any(c is payload for c in chunks)  # the user's bytes object itself
    assert all(isinstance(c, bytes | memoryview) for c in chunks)


def test_picklebuffer_chunk_is_a_flat_view_of_the_user_buffer() -> None:
    array = memoryview(bytearray(range(256)) * 1024).cast("B", (512, 512))
    chunks = list(streampickle.iter_dumps(pickle.PickleBuffer(array), 5))
    views = [c for c in chunks if isinstance(c, memoryview)]
    assert len(views) == 1 and views[0].ndim == 1 and views[0].format == "B"
    assert views[0].tobytes() == array.tobytes()


@pytest.mark.parametrize("protocol", [0, 1, 2, 3])
def test_protocols_without_frames_come_out_whole_at_the_end(protocol: int) -> None:
    obj = [list(range(20_000)), {"a": "b" * 1000}]
    gen = streampickle.iter_dumps(obj, protocol)
    assert list(gen) == [pickle.dumps(obj, protocol)]


class Boom:
    def __reduce__(self) -> Any:
        raise ValueError("boom at depth")


def test_pickling_error_raised_where_it_happens_after_earlier_chunks(
    no_leaked_greenlets: GreenletLedger,
) -> None:
    obj = [list(range(100_000)), Boom()]
    gen = streampickle.iter_dumps(obj, 4)
    first = next(gen)  # the frames before the bad object are produced first
    assert first == pickle.dumps([obj[0], None], 4)[: len(first)]
    with pytest.raises(ValueError, match="boom at depth"):
        list(gen)
    with pytest.raises(StopIteration):
        next(gen)
    assert no_leaked_greenlets.leaked() == 0


def test_unpicklable_error_is_the_one_pickle_raises() -> None:
    obj = {"k": [1, 2, threading.Lock()]}
    with pytest.raises(TypeError) as ours:
        list(streampickle.iter_dumps(obj, 5))
    with pytest.raises(TypeError) as theirs:
        pickle.dumps(obj, 5)
    assert str(ours.value) == str(theirs.value)
    assert getattr(ours.value, "__notes__", None) == getattr(theirs.value, "__notes__", None)


def test_recursion_error_as_pickle(no_leaked_greenlets: GreenletLedger) -> None:
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(RecursionError):
        pickle.dumps(deep, 4)
    with pytest.raises(RecursionError):
        list(streampickle.iter_dumps(deep, 4, engine="c"))
    assert no_leaked_greenlets.leaked() == 0
    # The default engine reruns it on the python engine: nothing had gone out.
    assert b"".join(streampickle.iter_dumps(deep, 4)) == streampickle.dumps(
        deep, 4, engine="python"
    )
    assert no_leaked_greenlets.leaked() == 0


def test_early_close_unwinds_the_pickler(no_leaked_greenlets: GreenletLedger) -> None:
    gen = streampickle.iter_dumps([list(range(50_000)), list(range(50_000))], 4)
    next(gen)
    assert no_leaked_greenlets.leaked() == 1
    gen.close()
    assert no_leaked_greenlets.leaked() == 0


def test_garbage_collected_generator_leaves_no_greenlet(
    no_leaked_greenlets: GreenletLedger,
) -> None:
    gen = streampickle.iter_dumps(list(range(200_000)), 4)
    next(gen)
    del gen
    assert no_leaked_greenlets.leaked() == 0


def test_exception_thrown_in_unwinds_and_propagates(no_leaked_greenlets: GreenletLedger) -> None:
    gen = streampickle.iter_dumps(list(range(200_000)), 4)
    next(gen)
    with pytest.raises(KeyError, match="consumer gave up"):
        gen.throw(KeyError("consumer gave up"))
    assert no_leaked_greenlets.leaked() == 0


request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")


class ContextReader:
    def __reduce__(self) -> Any:
        return (str, (request_id.get(),))


def test_contextvars_reach_reducers() -> None:
    token = request_id.set("req-42")
    try:
        data = b"".join(streampickle.iter_dumps([list(range(30_000)), ContextReader()], 4))
    finally:
        request_id.reset(token)
    assert pickle.loads(data)[1] == "req-42"


def test_context_of_each_resume_is_used() -> None:
    gen = streampickle.iter_dumps([list(range(30_000)), ContextReader()], 4)
    ctx = contextvars.copy_context()
    ctx.run(request_id.set, "from-ctx")
    chunks = [ctx.run(next, gen)]
    chunks += ctx.run(list, gen)
    assert pickle.loads(b"".join(chunks))[1] == "from-ctx"


def test_resuming_from_another_thread_is_refused(no_leaked_greenlets: GreenletLedger) -> None:
    gen = streampickle.iter_dumps(list(range(200_000)), 4)
    next(gen)
    errors: list[BaseException] = []

    def other() -> None:
        try:
            next(gen)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
    assert "resumed from thread" in str(errors[0])
    gen.close()
    assert no_leaked_greenlets.leaked() == 0


class PersistentPickler(streampickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        return f"ref:{obj.a}" if isinstance(obj, Plain) else None


class StdPersistentPickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        return f"ref:{obj.a}" if isinstance(obj, Plain) else None


def std_dump(pickler_class: type[pickle.Pickler], *objs: Any, protocol: int = 5) -> bytes:
    f = io.BytesIO()
    pickler = pickler_class(f, protocol)
    for obj in objs:
        pickler.dump(obj)
    return f.getvalue()


def test_persistent_id_subclass() -> None:
    obj = [Plain(1, 2), list(range(40_000)), Plain(3, 4)]
    ours = b"".join(PersistentPickler(None, 5).iter_dump(obj))
    assert ours == std_dump(StdPersistentPickler, obj)
    via_arg = b"".join(streampickle.iter_dumps(obj, 5, pickler_class=StdPersistentPickler))
    assert via_arg == ours


def test_reducer_override_and_dispatch_table() -> None:
    class Override(streampickle.Pickler):
        def reducer_override(self, obj: Any) -> Any:
            return (str, ("overridden",)) if isinstance(obj, Reduced) else NotImplemented

    obj = [Reduced(1), 2.5]
    data = b"".join(Override(None, 4).iter_dump(obj))
    assert pickle.loads(data) == ["overridden", 2.5]

    table = copyreg.dispatch_table.copy()
    table[complex] = lambda c: (str, (f"complex {c}",))
    pickler = streampickle.Pickler(None, 4)
    pickler.dispatch_table = table
    assert pickle.loads(b"".join(pickler.iter_dump([1j]))) == ["complex 1j"]


def test_memo_kept_across_dumps_until_cleared() -> None:
    shared = ["shared"] * 3
    pickler = streampickle.Pickler(None, 4)
    first = b"".join(pickler.iter_dump(shared))
    second = b"".join(pickler.iter_dump(shared))  # memo hit: a reference, not a copy
    expected = std_dump(pickle.Pickler, shared, shared, protocol=4)
    assert first + second == expected
    pickler.clear_memo()
    assert b"".join(pickler.iter_dump(shared)) == first


def test_mixed_file_dump_and_iter_dump_share_the_memo() -> None:
    f = io.BytesIO()
    pickler = streampickle.Pickler(f, 4)
    shared = {"x": 1}
    pickler.dump(shared)
    first = f.getvalue()
    middle = b"".join(pickler.iter_dump(shared))
    pickler.dump(shared)  # the file is the target again after iter_dump
    last = f.getvalue()[len(first) :]
    assert first + middle + last == std_dump(pickle.Pickler, *[shared] * 3, protocol=4)


def test_cloudpickle_as_pickler_class() -> None:
    offset = 10

    def add(x: int) -> int:
        return x + offset

    chunks = list(streampickle.iter_dumps(add, 5, pickler_class=cloudpickle.Pickler))
    assert b"".join(chunks) == cloudpickle.dumps(add, protocol=5)
    assert pickle.loads(b"".join(chunks))(1) == 11


def test_pickler_without_file() -> None:
    pickler = streampickle.Pickler(None, 4)
    with pytest.raises(RuntimeError, match="without a file"):
        pickler.dump(1)
    with pytest.raises(TypeError, match="'write'"):
        streampickle.Pickler(object())


def test_concurrent_iter_dump_on_one_pickler_is_refused() -> None:
    obj = list(range(100_000))
    pickler = streampickle.Pickler(None, 4)
    first: Iterator[streampickle.Chunk] = pickler.iter_dump(obj)
    second = pickler.iter_dump(1)  # created before the first starts: refused once started
    head = next(first)
    with pytest.raises(RuntimeError, match="already dumping"):
        next(second)
    assert bytes(head) + b"".join(first) == pickle.dumps(obj, 4)  # the first stream is unharmed


def test_concurrent_iter_load_on_one_unpickler_is_refused() -> None:
    unpickler = streampickle.Unpickler(None)
    first = unpickler.iter_load()
    second = unpickler.iter_load()
    next(first)
    with pytest.raises(RuntimeError, match="already loading"):
        next(second)
    first.close()  # the unpickler is free again
    data = pickle.dumps([1, 2], 4)
    assert streampickle.drive_load(unpickler.iter_load(), io.BytesIO(data)) == [1, 2]


@pytest.mark.parametrize("reply", [None, 42, memoryview(b"\x80\x04K\x01."), bytearray(b"K")])
def test_peek_replies_are_checked_before_the_c_unpickler_sees_them(reply: Any) -> None:
    gen = streampickle.iter_loads()
    assert isinstance(next(gen), streampickle.Peek)
    if isinstance(reply, memoryview | bytearray):  # bytes-like: taken as its bytes
        request = gen.send(reply)
        assert isinstance(request, streampickle.Read)
        gen.close()
    else:
        with pytest.raises(TypeError, match="peek\\(\\) must return bytes"):
            gen.send(reply)


def test_requests_answered_from_the_driver_buffer_never_leave_the_worker() -> None:
    """`Loading.answer_from`: what the answerer answers is used inside the worker; only what
    it answers None to is yielded, and the object is the same as ``pickle.loads`` gives."""
    data = pickle.dumps([{"n": n, "s": "x" * (n % 300)} for n in range(3000)], 5)
    seen: list[Any] = []
    stream = io.BytesIO(data)

    def answer(request: Any) -> Any:
        seen.append(request)
        if isinstance(request, streampickle.Peek) or len(seen) % 3 == 0:
            return None  # every third read, and every peek, is asked of the driver
        return stream.read(request.size)

    requests = streampickle.iter_loads()
    assert isinstance(requests, _cengine.Loading)
    requests.answer_from(answer)
    yielded: list[Any] = []

    class Driver:  # records what comes out of the worker
        def read(self, size: int) -> bytes:
            yielded.append(streampickle.Read(size))
            return stream.read(size)

        def peek(self, size: int) -> bytes:
            yielded.append(streampickle.Peek(size))
            return b""

    assert streampickle.drive_load(requests, Driver()) == pickle.loads(data)
    asked = [r for i, r in enumerate(seen, 1) if isinstance(r, streampickle.Peek) or i % 3 == 0]
    assert yielded == asked and len(seen) > len(yielded) > 0

    requests = streampickle.iter_loads()
    assert isinstance(requests, _cengine.Loading)
    requests.answer_from(answer)
    requests.answer_from(None)  # no answerer: every request is yielded, as without one
    stream, seen = io.BytesIO(data), []
    assert streampickle.drive_load(requests, stream) == pickle.loads(data) and not seen


# -- the worker pool ---------------------------------------------------------------------------


def _workers() -> list[Any]:
    return [o for o in gc.get_objects() if isinstance(o, _cengine._Worker)]


def test_workers_are_reused_and_hold_nothing_of_their_last_job() -> None:
    """A finished job's worker runs the next job, and while idle refers to nothing of the
    last one: its result and its exception's frames are freed by reference counting alone."""
    data = pickle.dumps(Plain(1, 2), 5)
    streampickle.loads(data)  # (no worker: loads of bytes is pickle's own)
    list(streampickle.iter_dumps([1], 5))
    before = len(_workers())
    for _ in range(50):
        list(streampickle.iter_dumps([Plain(2, 3)], 5))
    assert len(_workers()) == before  # one worker ran them all

    class Tracked:
        pass

    def job() -> Tracked:
        return Tracked()

    def failing() -> None:
        local = Tracked()  # noqa: F841  (referenced by the traceback's frame)
        raise ValueError("boom")

    gc.disable()
    try:
        result = _cengine.generate(job)
        with pytest.raises(StopIteration) as stop:
            next(result)
        alive = weakref.ref(stop.value.value)
        del stop
        assert alive() is None

        refs: list[weakref.ref[Any]] = []
        gen = _cengine.generate(failing)
        with pytest.raises(ValueError, match="boom") as raised:
            next(gen)
        frame = raised.value.__traceback__
        while frame is not None:  # the job's frame, with its local (only its f_locals: a
            # snapshot of this test's own would hold the exception)
            if frame.tb_frame.f_code is failing.__code__:
                refs.append(weakref.ref(frame.tb_frame.f_locals["local"]))
            frame = frame.tb_next
        assert refs
        del raised, frame, gen
        assert [r() for r in refs] == [None]
    finally:
        gc.enable()


def test_workers_beyond_the_pool_end_without_the_collector(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """More jobs in flight at once than the pool keeps: the extra workers end when their jobs
    do, with the cyclic collector off (a worker referring to itself would live until a full
    collection, with its stacks). The workers are those the jobs took (``gc.get_objects``
    missed one once in CI)."""
    taken: list[Any] = []
    take = _cengine._take_worker

    def take_and_note() -> Any:
        worker = take()
        taken.append(worker)
        return worker

    monkeypatch.setattr(_cengine, "_take_worker", take_and_note)
    count = _cengine.POOL_SIZE + 20
    gc.disable()
    try:
        gens = [streampickle.iter_dumps(list(range(30_000)), 4) for _ in range(count)]
        for gen in gens:
            next(gen)  # each waits on a worker of its own
        assert len({id(w) for w in taken if not w.idle and not w.dead}) == count
        for gen in gens:
            for _ in gen:
                pass
        del gens
        assert len([w for w in taken if not w.dead]) <= _cengine.POOL_SIZE
    finally:
        gc.enable()


def test_each_thread_has_its_own_workers() -> None:
    """Jobs started in other threads run on those threads' workers (greenlets cannot switch
    across threads) and give the same chunks."""
    expected = list(streampickle.iter_dumps([Plain(3, 4)] * 3, 5))
    results: list[list[Any]] = []

    def run() -> None:
        results.append(list(streampickle.iter_dumps([Plain(3, 4)] * 3, 5)))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected] * 4
