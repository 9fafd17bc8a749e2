"""The C engine: CPython's C pickler and unpickler, run as generators on a greenlet bridge.

CPython's C ``Pickler`` calls ``file.write`` once per committed protocol-4 frame and the C
``Unpickler`` calls ``file.read``/``readinto``/``readline``/``peek`` for its input. Here those
calls run on a greenlet of their own and *switch out* to the consumer of a generator: the
pickler's writes become the chunks the generator yields, and the unpickler's reads become
requests that the driver answers with ``generator.send``. Nothing in this module does I/O, and
nothing here knows about async: adapters drive the generators however they like.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from typing import Any, TypeVar

from greenlet import error as greenlet_error
from greenlet import getcurrent, greenlet

from ._collector import Lazy
from ._sansio import Chunk, Peek, Read, ReadInto, ReadLine, Request, as_chunk

__all__ = ["Loading", "Sink", "Source", "generate", "iter_dump", "iter_load", "suspend"]

Y = TypeVar("Y")
S = TypeVar("S")
R = TypeVar("R")


def suspend(value: Any) -> Any:
    """Switch from the worker greenlet out to the generator's consumer, handing it *value*.

    Returns what the consumer sends back. Only valid on a greenlet started by `generate`.
    """
    parent = getcurrent().parent
    if parent is None:  # pragma: no cover - misuse, not reachable from the public API
        raise RuntimeError("suspend() called outside a streampickle engine greenlet")
    return parent.switch(value)


def generate(func: Callable[..., R], *args: Any) -> Generator[Any, Any, R]:
    """Run ``func(*args)`` on a greenlet (a worker of this thread's pool, `_Worker`); each
    `suspend` (value) inside it is yielded from here.

    The value the consumer sends in (``generator.send``) is what `suspend` returns; an exception
    the consumer throws in is raised from `suspend`, so it unwinds *func*'s stack. The return
    value of *func* is the generator's return value (``StopIteration.value``) and its exceptions
    propagate from the ``next``/``send`` call that was running it.

    The caller's ``contextvars`` context is shared with *func* on every resume, so reducers see
    (and may set) the caller's context variables. Closing the generator early, or garbage
    collecting it, unwinds *func* with ``GreenletExit`` so no frame of *func* stays alive.
    Greenlets cannot switch across threads: once started, the generator raises
    ``RuntimeError`` (and stays usable) if resumed from another thread.
    """
    return _ThreadBound(_run_on_greenlet(func, *args))


class _ThreadBound(Generator[Y, S, R]):
    """Wraps a generator so that resuming it from a foreign thread fails *before* it runs.

    A check inside the generator itself would end it (an exception raised from a generator
    finishes it), leaving its greenlet suspended and unreachable.
    """

    __slots__ = ("_inner", "_owner")

    def __init__(self, inner: Generator[Y, S, R]) -> None:
        self._inner = inner
        self._owner: int | None = None

    def _check_thread(self) -> None:
        current = threading.get_ident()
        if self._owner is None:
            self._owner = current
        elif current != self._owner:
            raise RuntimeError(
                f"streampickle generator started in thread {self._owner} was resumed from "
                f"thread {current}; greenlets cannot switch across threads, so consume each "
                "incremental pickler/loader in the thread that started it (a framework that "
                "iterates sync iterators in a thread pool, such as Starlette's "
                "StreamingResponse, wants streampickle.aiter_dumps instead)"
            )

    def send(self, value: S) -> Y:
        self._check_thread()
        return self._inner.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Y:
        self._check_thread()
        if val is None and tb is None:
            return self._inner.throw(typ)
        return self._inner.throw(typ, val, tb)  # pragma: no cover - deprecated signature

    def close(self) -> None:
        if self._owner is not None:
            self._check_thread()
        self._inner.close()


class _Worker(greenlet):
    """A greenlet that runs one job after another (`_serve`), kept in a per-thread pool.

    Starting a greenlet costs little on 3.10 (2 us) but 13-17 us on 3.11+, where each one gets
    a Python data stack of its own on its first frame: more than the rest of the engine's
    cost for a small pickle. An idle worker holds no job's frames (``idle`` is then True).
    """

    idle = False
    done: _Done | None = None


class _Done:
    """What a worker leaves in its ``done`` attribute when its job ended (and hands back
    `_ENDED`): the job's return value or exception."""

    __slots__ = ("error", "value")

    def __init__(self) -> None:
        self.value: Any = None
        self.error: BaseException | None = None


#: What a worker switches back with when its job ended (the consumer takes its ``done``).
_ENDED = _Done()


def _serve(func: Callable[..., Any] | None, args: tuple[Any, ...]) -> None:
    """A `_Worker`'s body: run ``func(*args)``, hand back its `_Done`, wait for the next job;
    a job of None ends it. While idle, its frame refers to nothing: not to the last job (a
    value passed to ``switch`` stays referenced until the switch returns) and not to the
    worker itself (a cycle through a suspended greenlet lives until a full collection)."""
    while func is not None:
        done = _Done()
        try:
            done.value = func(*args)
        except BaseException as exc:  # the job's own, or what the consumer threw in
            done.error = exc
        del func, args
        worker: Any = getcurrent()
        worker.done = done
        del done
        func, args = worker.parent.switch(_ENDED)


#: Idle workers kept per thread; more in flight at once are made and dropped as needed.
POOL_SIZE = 32


class _Pool(threading.local):
    def __init__(self) -> None:
        self.idle: list[_Worker] = []
        root = getcurrent()
        while root.parent is not None:
            root = root.parent
        self.root = root  # this thread's main greenlet: the idle workers' parent


_pool = _Pool()


def _take_worker() -> _Worker:
    if _pool.idle:
        worker = _pool.idle.pop()
        worker.idle = False
        return worker
    return _Worker(_serve)


def _release(worker: _Worker) -> None:
    """Put *worker*, whose job has ended, back in this thread's pool, or end it."""
    worker.gr_context = None
    if len(_pool.idle) < POOL_SIZE:
        worker.parent = _pool.root  # hold no consumer's greenlet
        worker.idle = True
        _pool.idle.append(worker)
    else:
        worker.parent = getcurrent()
        worker.switch(None, ())  # ends: cheaper than killing it when it is dropped


def _run_on_greenlet(func: Callable[..., R], *args: Any) -> Generator[Any, Any, R]:
    worker = _take_worker()
    busy = True  # the worker runs this job (until it is released)

    def resume(method: Callable[..., Any], *arg: Any) -> Any:
        this = getcurrent()
        worker.parent = this
        worker.gr_context = this.gr_context
        return method(*arg)

    try:
        out = resume(worker.switch, func, args)
        while out is not _ENDED:
            try:
                sent = yield out
            except GeneratorExit:
                raise
            except BaseException as exc:  # thrown in by the consumer: unwind func with it
                out = resume(worker.throw, exc)
            else:
                out = resume(worker.switch, sent)
        done, worker.done = worker.done, None
        busy = False
        _release(worker)
        assert done is not None
        result: R = done.value
        error, done = done.error, None
        if error is not None:
            try:
                raise error
            finally:  # no cycle from the traceback's frames back to the exception
                error = None
        return result
    finally:
        # Unwind a job left suspended (early close, GC, error): GreenletExit thrown in ends
        # it, and the worker goes back to the pool. Two cases cannot switch to it:
        # finalization from a foreign thread (greenlet.error, or ValueError from setting the
        # parent) and a garbage cycle holding both the generator and the worker, whose
        # deallocation has begun (RuntimeError). In both, greenlet itself kills the worker
        # when it deallocates it.
        if busy and not worker.dead:
            try:
                worker.parent = getcurrent()
                out = worker.throw()
            except (greenlet_error, ValueError, RuntimeError):
                if not _unreachable(worker):
                    raise
            else:
                if out is _ENDED:  # (a job that swallowed GreenletExit is dropped instead)
                    worker.done = None
                    _release(worker)


def _unreachable(worker: greenlet) -> bool:
    """True if *worker* cannot be switched to from here (see `_run_on_greenlet`)."""
    try:
        worker.parent = getcurrent()
    except (greenlet_error, ValueError, RuntimeError):
        return True
    return False


# ---------------------------------------------------------------------------------------------
# File objects handed to the C pickler/unpickler. They look up ``write``/``read`` once, at
# ``__init__``, so we give them these stable proxies and retarget the proxies instead.


class Sink:
    """The ``file`` a pickler writes to: forwards each write to ``target``."""

    __slots__ = ("target",)

    def __init__(self, target: Callable[[Any], Any] | None) -> None:
        self.target = target

    def write(self, data: Any) -> Any:
        target = self.target
        if target is None:
            raise RuntimeError("this pickler has no file; use iter_dump() to get its chunks")
        return target(data)


def _yield_write(data: Any) -> None:
    suspend(as_chunk(data))


def iter_dump(dump: Callable[[Any], None], sink: Sink, obj: Any) -> Generator[Chunk, None, None]:
    """Yield the chunks ``dump(obj)`` writes to *sink*, one per write call.

    *dump* is a pickler's bound ``dump`` whose file is *sink*. While the generator runs, the
    sink's target is the generator; afterwards it is restored. A second generator on the same
    pickler raises ``RuntimeError`` when started while the first is running.
    """

    def run() -> None:
        if sink.target is _yield_write:
            raise RuntimeError("this pickler is already dumping from another iter_dump()")
        saved, sink.target = sink.target, _yield_write
        try:
            dump(obj)
        finally:
            sink.target = saved

    return generate(run)


# ---------------------------------------------------------------------------------------------
# The sans-IO loader: the unpickler's reads become requests.


class Source:
    """The ``file`` an unpickler reads from: forwards each call to ``target``.

    ``peek`` is always offered so that the C unpickler prefetches when it can; a target without
    ``peek`` answers ``b""``, which makes the unpickler read exactly what it needs instead.
    While ``segment`` is set, each read is counted on it (`streampickle._collector.Lazy`).
    """

    __slots__ = ("segment", "target")

    def __init__(self, target: Any) -> None:
        self.target = target
        self.segment: Lazy | None = None

    def read(self, size: int = -1) -> bytes:
        data: bytes = self.target.read(size)
        if self.segment is not None:
            self.segment.read(len(data))
        return data

    def readinto(self, buffer: Any) -> int:
        readinto = getattr(self.target, "readinto", None)
        if readinto is not None:
            count: int = readinto(buffer)
        else:
            view = memoryview(buffer).cast("B")
            data = self.target.read(len(view))
            view[: len(data)] = data
            count = len(data)
        if self.segment is not None:
            self.segment.read(count)
        return count

    def readline(self, size: int = -1) -> bytes:
        readline = getattr(self.target, "readline", None)
        if readline is not None:
            line: bytes = readline() if size < 0 else readline(size)
        else:  # a file with only read(): one byte at a time, never past the newline
            out = bytearray()
            while not out.endswith(b"\n") and len(out) != size and (byte := self.target.read(1)):
                out += byte
            line = bytes(out)
        if self.segment is not None:
            self.segment.read(len(line))
        return line

    def peek(self, size: int = 0) -> bytes:
        peek = getattr(self.target, "peek", None)
        return _peeked(peek(size)) if peek is not None else b""


class _Requester:
    """A `Source` target that turns each call into a request yielded out of `generate`, or,
    with an ``answer`` (`Loading.answer_from`), first offers it to that: what it answers never
    leaves the worker."""

    __slots__ = ("answer",)

    #: A file whose ``read(0)`` reaches an async driver, which may let other tasks run there
    #: (the vetting reader offers it, `streampickle._policy.reader.CheckedReader`).
    offers_turns = True

    def __init__(self) -> None:
        self.answer: Callable[[Request], Any] | None = None

    def _ask(self, request: Request) -> Any:
        answer = self.answer
        if answer is not None:
            reply = answer(request)
            if reply is not None:
                return reply
        return suspend(request)

    def read(self, size: int) -> bytes:
        data: bytes = self._ask(Read(size))
        return data

    def readinto(self, buffer: Any) -> int:
        count: int = self._ask(ReadInto(memoryview(buffer).cast("B")))
        return count

    def readline(self, size: int = -1) -> bytes:
        line: bytes = self._ask(ReadLine(None if size < 0 else size))
        return line

    def peek(self, size: int) -> bytes:
        return _peeked(self._ask(Peek(size)))


def _peeked(data: Any) -> bytes:
    """A ``peek`` reply as exact ``bytes``: the C unpickler takes the size of what ``peek``
    returns with ``PyBytes_GET_SIZE`` without checking its type, so anything else (a
    memoryview, ``None``) would make it compute sizes from garbage."""
    if type(data) is bytes:
        return data
    try:
        return bytes(memoryview(data))
    except TypeError:
        raise TypeError(f"peek() must return bytes, not {type(data).__name__}") from None


def iter_load(load: Callable[[], Any], source: Source) -> Loading:
    """Run ``load()`` (an unpickler reading from *source*) as a generator of `Request` s.

    The driver answers each request with ``generator.send(reply)``; the loaded object is the
    generator's return value. The unpickler consumes exactly the pickle's bytes: data past its
    STOP opcode is only ever *peeked*, never requested with `Read`. A second generator on the
    same unpickler raises ``RuntimeError`` when started while the first is running. A driver
    may also answer requests without a switch out of the worker (`Loading.answer_from`).
    """
    requester = _Requester()

    def run() -> Any:
        if isinstance(source.target, _Requester):
            raise RuntimeError("this unpickler is already loading from another iter_load()")
        saved, source.target = source.target, requester
        try:
            return load()
        finally:
            source.target = saved

    return Loading(_run_on_greenlet(run), requester)


class Loading(_ThreadBound[Request, Any, Any]):
    """The generator `iter_load` returns."""

    __slots__ = ("_requester",)

    def __init__(self, inner: Generator[Request, Any, Any], requester: _Requester) -> None:
        super().__init__(inner)
        self._requester = requester

    def answer_from(self, answer: Callable[[Request], Any] | None) -> None:
        """Have the unpickler call ``answer(request)`` for each request, inside the worker, and
        yield only those it answers None to. A switch between greenlets costs more the deeper
        the unpickler's stack is (about 4 us a round trip inside the C unpickler, against 1 us
        for a bare one), so a driver with the bytes buffered answers without one. *answer*
        must not switch greenlets or await; None stops it."""
        self._requester.answer = answer
