"""The drop-in pickling API and the incremental pickler: the one place an engine is chosen.

`Pickler` subclasses the standard library's C class, so everything a ``pickle.Pickler``
subclass can do (``persistent_id``, ``reducer_override``, ``dispatch_table``,
``buffer_callback``, memo across dumps) works the same, and ``dump`` writes exactly the bytes
``pickle`` does. What it adds is `Pickler.iter_dump` (and `Pickler.adump`): the same pickler,
driven as a generator of chunks by an engine.

The engine boundary: an engine is a `DumpEngine`, a function of a pickler (built on a `Sink`,
whose hooks and memo it honours), that sink and an object, returning the generator of chunks.
`ENGINES` lists them; the C engine (`streampickle._cengine`) runs the pickler itself on a
greenlet.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Generator
from typing import Any

from . import _cengine
from ._cengine import Sink
from ._dump import write_chunks
from ._sansio import BufferCallback, Chunk, Progress

__all__ = ["ENGINES", "DumpEngine", "Pickler", "dump", "dumps", "iter_dumps"]

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


class Pickler(pickle.Pickler):
    """``pickle.Pickler`` that can also stream: ``Pickler(file, protocol).dump(obj)`` writes
    the same bytes as ``pickle``; ``iter_dump(obj)`` yields them as chunks instead.

    The memo is kept across ``dump``/``iter_dump`` calls until ``clear_memo()``, as in
    ``pickle``. ``file`` must have a ``write`` method (else ``TypeError``), or be ``None`` for a
    pickler used only through ``iter_dump``.
    """

    def __init__(
        self,
        file: Any,
        protocol: int | None = None,
        *,
        fix_imports: bool = True,
        buffer_callback: BufferCallback = None,
    ) -> None:
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

    def dump(self, obj: Any, /) -> None:
        """Write the pickled representation of *obj* to the file, as ``pickle.Pickler.dump``."""
        sink: Sink | None = getattr(self, "_sink", None)
        if sink is not None and sink.target is None:
            raise RuntimeError("this Pickler was created without a file; use iter_dump()")
        super().dump(obj)

    def iter_dump(self, obj: Any) -> Generator[Chunk, None, None]:
        """Pickle *obj* as a generator of chunks; joined, they are what `dump` would write.

        At protocols 4 and 5 each chunk is one committed frame (about 64 KiB; a frame only ends
        at an opcode boundary, so it may reach ~130 KB) or one large payload (a ``bytes``,
        ``str`` or buffer of 64 KiB or more) passed through without a copy. At protocols 0-3
        pickles have no frames and the whole pickle is one chunk, at the end.

        A chunk is ``bytes`` or a read-only ``memoryview`` into a buffer of the object being
        pickled; it stays valid as long as that buffer is not mutated. Pickling errors are
        raised from the ``next()`` that reaches the bad object, after the chunks before it were
        yielded. Closing the generator early unwinds the pickler; the memo then holds what was
        pickled so far, so call ``clear_memo()`` before reusing the pickler for an unrelated
        stream.
        """
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
) -> None:
    """Write the pickled representation of *obj* to *file*, exactly as ``pickle.dump``."""
    Pickler(file, protocol, fix_imports=fix_imports, buffer_callback=buffer_callback).dump(obj)


def dumps(
    obj: Any,
    protocol: int | None = None,
    *,
    fix_imports: bool = True,
    buffer_callback: BufferCallback = None,
) -> bytes:
    """Return the pickled representation of *obj* as ``bytes``, exactly as ``pickle.dumps``."""
    # The C implementation builds the result in one buffer: nothing to stream, nothing faster.
    return pickle.dumps(obj, protocol, fix_imports=fix_imports, buffer_callback=buffer_callback)


def iter_dumps(
    obj: Any,
    protocol: int | None = None,
    *,
    fix_imports: bool = True,
    buffer_callback: BufferCallback = None,
    pickler_class: Callable[..., pickle.Pickler] = pickle.Pickler,
) -> Generator[Chunk, None, None]:
    """The incremental pickler: *obj* pickled as a generator of chunks.

    ``b"".join(iter_dumps(obj, protocol))`` equals ``pickle.dumps(obj, protocol)``. Chunks are
    as described in `Pickler.iter_dump`. *pickler_class* is any ``pickle.Pickler`` subclass
    (cloudpickle's ``Pickler``, one with ``persistent_id`` or ``reducer_override``); it is
    called as ``pickler_class(file, protocol)``, plus ``fix_imports``/``buffer_callback`` when
    they differ from their defaults.
    """
    sink = Sink(None)
    kwargs: dict[str, Any] = {}
    if not fix_imports:
        kwargs["fix_imports"] = False
    if buffer_callback is not None:
        kwargs["buffer_callback"] = buffer_callback
    pickler = pickler_class(sink, protocol, **kwargs)
    return _chunks(pickler, sink, obj)
