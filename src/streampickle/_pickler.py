"""The drop-in pickling API and the incremental pickler: the one place an engine is chosen.

`Pickler` subclasses the standard library's C class, so everything a ``pickle.Pickler``
subclass can do (``persistent_id``, ``reducer_override``, ``dispatch_table``,
``buffer_callback``, memo across dumps) works the same, and ``dump`` writes exactly the bytes
``pickle`` does. What it adds is `Pickler.iter_dump` (and `Pickler.adump`): the same pickler,
driven as a generator of chunks by an engine.

The engine boundary: an engine is a `DumpEngine`, a function of a pickler (built on a `Sink`,
whose hooks and memo it honours), that sink and an object, returning the generator of chunks.
`ENGINES` lists them; the C engine (`streampickle._cengine`) runs the pickler itself on a
greenlet. The python engine (`streampickle._pyengine`) is a pickler of its own, iterative, given
the protocol and the pickler's hooks (`Hooks.of`).

Which engine (*engine*): ``"c"``, CPython's C pickler, the fastest (5-10x the python engine),
recursive (``RecursionError`` past ~1,000 levels of nesting on 3.10-3.12), one chunk at the end
at protocols 0-3; ``"python"``, any depth, chunks of *frame_size* at every protocol, resumable
from any thread, the same bytes; ``None`` (the default), the C engine, rerun on the python
engine if it raises ``RecursionError`` before any byte went out (`_FallingBack`).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Generator
from typing import Any, Literal

from . import _cengine
from ._cengine import Sink
from ._dump import write_chunks
from ._pyengine import FRAME_SIZE, Hooks, Saver
from ._sansio import BufferCallback, Chunk, Progress

__all__ = ["ENGINES", "DumpEngine", "Engine", "Pickler", "dump", "dumps", "iter_dumps"]

#: An engine choice: ``"c"``, ``"python"``, or None (C, falling back to python on
#: ``RecursionError`` while nothing went out); see the module docstring.
Engine = Literal["c", "python"] | None

#: A pickling engine: ``engine(pickler, sink, obj)`` yields the chunks of *obj*'s pickle, as
#: *pickler* (whose file is *sink*) would write them.
DumpEngine = Callable[[pickle.Pickler, Sink, Any], Generator[Chunk, None, None]]


def _c_engine(pickler: pickle.Pickler, sink: Sink, obj: Any) -> Generator[Chunk, None, None]:
    """CPython's C pickler on the greenlet bridge: each write to *sink* becomes a chunk."""
    return _cengine.iter_dump(pickler.dump, sink, obj)


#: The engines, by name.
ENGINES: dict[str, DumpEngine] = {"c": _c_engine}


def _chunks(
    pickler: pickle.Pickler, sink: Sink, obj: Any, engine: str = "c"
) -> Generator[Chunk, None, None]:
    """*obj* pickled by *pickler* as chunks, on *engine*."""
    return ENGINES[engine](pickler, sink, obj)


def check_engine(engine: object, frame_size: object) -> None:
    """``ValueError`` for an unknown *engine*, or a *frame_size* without the python engine."""
    if engine not in (None, "c", "python"):
        raise ValueError(
            f"engine={engine!r}: engine must be 'c', 'python' or None (the C engine, rerun on "
            "the python engine when it raises RecursionError before any byte went out)"
        )
    if frame_size is not None and engine != "python":
        raise ValueError(
            f"frame_size={frame_size!r} needs engine='python' (the C pickler's frames are "
            f"fixed at {FRAME_SIZE} bytes)"
        )


def _saver(
    pickler: pickle.Pickler | None,
    protocol: int | None,
    fix_imports: bool,
    buffer_callback: BufferCallback,
    frame_size: int | None,
) -> Saver:
    """A python-engine pickler with *pickler*'s hooks (None: a plain ``pickle.Pickler``)."""
    return Saver(
        protocol,
        fix_imports=fix_imports,
        buffer_callback=buffer_callback,
        hooks=None if pickler is None else Hooks.of(pickler),
        frame_size=FRAME_SIZE if frame_size is None else frame_size,
    )


class _FallingBack(Generator[Chunk, None, None]):
    """The C engine's *chunks*; if they raise ``RecursionError`` before the first chunk, the
    chunks of ``rerun()`` (the python engine's) instead. Past the first chunk the bytes have
    gone out: the ``RecursionError`` is raised, naming ``engine='python'``.

    A class, not a generator function: it delegates each resume, so an error the inner
    generator raises without ending (the C engine's "resumed from another thread") leaves it
    usable, as the C engine's own generator is."""

    __slots__ = ("_inner", "_rerun", "_sent")

    def __init__(
        self,
        chunks: Generator[Chunk, None, None],
        rerun: Callable[[], Generator[Chunk, None, None]],
    ) -> None:
        self._inner = chunks
        self._rerun: Callable[[], Generator[Chunk, None, None]] | None = rerun
        self._sent = 0

    def send(self, value: None) -> Chunk:
        try:
            chunk = self._inner.send(value)
        except RecursionError as exc:
            if self._rerun is None:
                raise
            if self._sent:
                raise RecursionError(
                    f"{exc} (the C engine; {self._sent} bytes of the pickle had gone out, so "
                    "it could not be rerun on the python engine: pass engine='python' for "
                    "graphs this deep)"
                ) from exc
            self._inner, self._rerun = self._rerun(), None
            chunk = next(self._inner)
        self._sent += len(chunk)
        return chunk

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Chunk:
        if val is None and tb is None:
            return self._inner.throw(typ)
        return self._inner.throw(typ, val, tb)  # pragma: no cover - deprecated signature

    def close(self) -> None:
        self._inner.close()


_C_MEMO: Any = pickle.Pickler.memo  # the C pickler's memo descriptor


class Pickler(pickle.Pickler):
    """``pickle.Pickler`` that can also stream: ``Pickler(file, protocol).dump(obj)`` writes
    the same bytes as ``pickle``; ``iter_dump(obj)`` yields them as chunks instead.

    The memo is kept across ``dump``/``iter_dump`` calls until ``clear_memo()``, as in
    ``pickle``. ``file`` must have a ``write`` method (else ``TypeError``), or be ``None`` for a
    pickler used only through ``iter_dump``.

    *engine* (see `iter_dumps`): ``"python"`` pickles on the iterative engine, with this
    pickler's hooks (``persistent_id``, ``reducer_override``, ``dispatch_table``, read at each
    dump) and a memo of its own (``clear_memo`` clears it; the ``memo`` attribute is the C
    pickler's, unused); *frame_size* is its frame target. ``"c"`` and None (the default) both
    run the C pickler: a pickler's memo spans dumps, so a deep dump is not rerun on the python
    engine behind its back (it raises ``RecursionError``; pass ``engine="python"``).
    """

    def __init__(
        self,
        file: Any,
        protocol: int | None = None,
        *,
        fix_imports: bool = True,
        buffer_callback: BufferCallback = None,
        engine: Engine = None,
        frame_size: int | None = None,
    ) -> None:
        check_engine(engine, frame_size)
        if file is None:
            target = None
        else:
            try:
                target = file.write
            except AttributeError:
                raise TypeError("file must have a 'write' attribute") from None
        self._sink = Sink(target)
        super().__init__(
            self._sink, protocol, fix_imports=fix_imports, buffer_callback=buffer_callback
        )
        self._saver: Saver | None = None
        if engine == "python":
            self._saver = _saver(None, protocol, fix_imports, buffer_callback, frame_size)

    def dump(self, obj: Any, /) -> None:
        """Write the pickled representation of *obj* to the file, as ``pickle.Pickler.dump``."""
        sink: Sink | None = getattr(self, "_sink", None)
        if sink is not None and sink.target is None:
            raise RuntimeError("this Pickler was created without a file; use iter_dump()")
        saver: Saver | None = getattr(self, "_saver", None)
        if saver is None:
            super().dump(obj)
            return
        assert sink is not None
        for chunk in self._python_dump(saver, obj):
            sink.write(chunk)

    def _python_dump(self, saver: Saver, obj: Any) -> Generator[Chunk, None, None]:
        saver.hooks = Hooks.of(self)  # read at each dump, as the C pickler does
        try:
            yield from saver.iter_dump(obj)
        finally:
            saver.hooks = Hooks()  # its methods refer to self: no cycle through the memo

    @property
    def memo(self) -> Any:
        """The memo (``pickle.Pickler.memo``; the python engine's own with ``engine="python"``:
        a dict ``id(obj) -> (index, obj)``, which a C pickler's memo may be set to as well)."""
        saver: Saver | None = getattr(self, "_saver", None)
        if saver is not None:
            return saver.memo
        return _C_MEMO.__get__(self)

    @memo.setter
    def memo(self, value: Any) -> None:
        saver: Saver | None = getattr(self, "_saver", None)
        if saver is None:
            _C_MEMO.__set__(self, value)
            return
        saver.memo = dict(value.copy() if hasattr(value, "copy") else value)

    def clear_memo(self) -> None:
        super().clear_memo()
        saver: Saver | None = getattr(self, "_saver", None)
        if saver is not None:
            saver.clear_memo()

    def iter_dump(self, obj: Any) -> Generator[Chunk, None, None]:
        """Pickle *obj* as a generator of chunks; joined, they are what `dump` would write.

        At protocols 4 and 5 each chunk is one committed frame (about 64 KiB, or *frame_size*
        on the python engine; a frame only ends at an opcode boundary, so it may reach ~130 KB)
        or one large payload (a ``bytes``, ``str`` or buffer of 64 KiB or more) passed through
        without a copy. At protocols 0-3 pickles have no frames: on the C engine the whole
        pickle is one chunk, at the end; on the python engine chunks of about *frame_size*.

        A chunk is ``bytes`` or a read-only ``memoryview`` into a buffer of the object being
        pickled; it stays valid as long as that buffer is not mutated. Pickling errors are
        raised from the ``next()`` that reaches the bad object, after the chunks before it were
        yielded. Closing the generator early unwinds the pickler; the memo then holds what was
        pickled so far, so call ``clear_memo()`` before reusing the pickler for an unrelated
        stream.
        """
        saver: Saver | None = getattr(self, "_saver", None)
        if saver is not None:
            return self._python_dump(saver, obj)
        return _chunks(self, self._sink, obj)

    async def adump(self, obj: Any, writer: object, *, progress: Progress | None = None) -> int:
        """Stream *obj*, pickled by this pickler, into the async *writer*; return the byte count.

        Writers, errors and what a cancelled stream holds are as in `streampickle.adump`; the
        memo is kept as after `iter_dump` (call ``clear_memo()`` after a failed dump).
        """
        return await write_chunks(self.iter_dump(obj), writer, progress)


def dump(
    obj: Any,
    file: Any,
    protocol: int | None = None,
    *,
    fix_imports: bool = True,
    buffer_callback: BufferCallback = None,
    engine: Engine = None,
    frame_size: int | None = None,
) -> None:
    """Write the pickled representation of *obj* to *file*, exactly as ``pickle.dump``.

    *engine* and *frame_size* as in `iter_dumps`. With the default engine a ``RecursionError``
    is rerun on the python engine only if the C pickler had written nothing to *file* yet (it
    writes a frame at a time); past that it is raised, naming ``engine='python'``.
    """
    check_engine(engine, frame_size)
    try:
        write = file.write
    except AttributeError:
        raise TypeError("file must have a 'write' attribute") from None
    if engine == "python":
        for chunk in _saver(None, protocol, fix_imports, buffer_callback, frame_size).iter_dump(
            obj
        ):
            write(chunk)
        return
    written = 0

    class Counting:
        def write(self, data: Any) -> Any:
            nonlocal written
            written += len(memoryview(data))
            return write(data)

    try:
        pickler = pickle.Pickler(
            Counting(), protocol, fix_imports=fix_imports, buffer_callback=buffer_callback
        )
        pickler.dump(obj)
    except RecursionError as exc:
        if engine == "c":
            raise
        if written:
            raise RecursionError(
                f"{exc} (the C engine; {written} bytes had been written to the file, so it "
                "could not be rerun on the python engine: pass engine='python' for graphs "
                "this deep)"
            ) from exc
        dump(
            obj,
            file,
            protocol,
            fix_imports=fix_imports,
            buffer_callback=buffer_callback,
            engine="python",
        )


def dumps(
    obj: Any,
    protocol: int | None = None,
    *,
    fix_imports: bool = True,
    buffer_callback: BufferCallback = None,
    engine: Engine = None,
    frame_size: int | None = None,
) -> bytes:
    """Return the pickled representation of *obj* as ``bytes``, exactly as ``pickle.dumps``.

    *engine* and *frame_size* as in `iter_dumps`; with the default engine a ``RecursionError``
    of the C pickler is always rerun on the python engine (nothing has gone out).
    """
    check_engine(engine, frame_size)
    if engine != "python":
        # The C implementation builds the result in one buffer: nothing to stream, nothing
        # faster.
        try:
            return pickle.dumps(
                obj, protocol, fix_imports=fix_imports, buffer_callback=buffer_callback
            )
        except RecursionError:
            if engine == "c":
                raise
    saver = _saver(None, protocol, fix_imports, buffer_callback, frame_size)
    return b"".join(saver.iter_dump(obj))


def iter_dumps(
    obj: Any,
    protocol: int | None = None,
    *,
    fix_imports: bool = True,
    buffer_callback: BufferCallback = None,
    pickler_class: Callable[..., pickle.Pickler] = pickle.Pickler,
    engine: Engine = None,
    frame_size: int | None = None,
) -> Generator[Chunk, None, None]:
    """The incremental pickler: *obj* pickled as a generator of chunks.

    ``b"".join(iter_dumps(obj, protocol))`` equals ``pickle.dumps(obj, protocol)``. Chunks are
    as described in `Pickler.iter_dump`. *pickler_class* is any ``pickle.Pickler`` subclass
    (cloudpickle's ``Pickler``, one with ``persistent_id`` or ``reducer_override``); it is
    called as ``pickler_class(file, protocol)``, plus ``fix_imports``/``buffer_callback`` when
    they differ from their defaults.

    *engine*: ``"c"`` runs CPython's C pickler (the fastest; recursive, so ``RecursionError``
    past about a thousand levels of nesting on 3.10-3.12; at protocols 0-3 one chunk at the
    end). ``"python"`` runs streampickle's iterative pickler: the same bytes, any depth (its
    stack is a list), chunks of about *frame_size* bytes (default 64 KiB, CPython's frame
    target) at every protocol, so protocols 0-3 stream too; *pickler_class*'s hooks are
    honoured; the generator may be resumed from any thread; it holds its memo, its stack and
    about one frame (a frame closing very deep containers grows by a few bytes a level). None
    (the default): the C engine, rerun on the python engine if it raises ``RecursionError``
    before yielding its first chunk (its reducers then run twice); a ``RecursionError`` after
    that (chunks have gone out) is raised, naming ``engine='python'``.
    """
    check_engine(engine, frame_size)
    sink = Sink(None)
    kwargs: dict[str, Any] = {}
    if not fix_imports:
        kwargs["fix_imports"] = False
    if buffer_callback is not None:
        kwargs["buffer_callback"] = buffer_callback
    pickler = pickler_class(sink, protocol, **kwargs)
    hooked = None if pickler_class is pickle.Pickler else pickler

    def python() -> Generator[Chunk, None, None]:
        return _saver(hooked, protocol, fix_imports, buffer_callback, frame_size).iter_dump(obj)

    if engine == "python":
        return python()
    chunks = _chunks(pickler, sink, obj)
    return chunks if engine == "c" else _FallingBack(chunks, python)
