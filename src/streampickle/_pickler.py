"""The drop-in ``pickle`` API and the incremental pickler/loader built on the engine.

`Pickler` and `Unpickler` subclass the standard library's C classes, so everything a
``pickle.Pickler`` subclass can do (``persistent_id``, ``reducer_override``,
``dispatch_table``, ``buffer_callback``, memo across dumps) works the same, and ``dump`` /
``load`` produce and accept exactly the bytes ``pickle`` does. What they add is
`Pickler.iter_dump` and `Unpickler.iter_load`: the same pickler, driven as a generator.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any

from . import _engine, _policy
from ._engine import Chunk, Request

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "Pickler",
    "Unpickler",
    "dump",
    "dumps",
    "iter_dumps",
    "iter_loads",
    "load",
    "loads",
]

BufferCallback = Callable[[pickle.PickleBuffer], Any] | None


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
        self._sink = _engine.Sink(target)
        super().__init__(
            self._sink, protocol, fix_imports=fix_imports, buffer_callback=buffer_callback
        )

    def dump(self, obj: Any, /) -> None:
        """Write the pickled representation of *obj* to the file, as ``pickle.Pickler.dump``."""
        sink: _engine.Sink | None = getattr(self, "_sink", None)
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
        return _engine.iter_dump(super().dump, self._sink, obj)

    async def adump(
        self, obj: Any, writer: object, *, progress: Callable[[int], object] | None = None
    ) -> int:
        """Stream *obj*, pickled by this pickler, into the async *writer*; return the byte count.

        Writers, errors and what a cancelled stream holds are as in `streampickle.adump`; the
        memo is kept as after `iter_dump` (call ``clear_memo()`` after a failed dump).
        """
        from ._writers import write_chunks  # _writers imports this module

        return await write_chunks(self.iter_dump(obj), writer, progress)


class Unpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that can also be driven sans-IO with `iter_load`.

    ``load()`` reads from *file* exactly as ``pickle.Unpickler`` does (``file`` needs ``read``
    and ``readline``, else ``TypeError``); ``file`` may be ``None`` for an unpickler used only
    through `iter_load`.

    With ``allow=`` (an `Allowlist` or pairs, see ``streampickle._policy``) loading is
    restricted: only the listed globals resolve (`ForbiddenGlobal` otherwise) and the opcode
    stream is vetted before the unpickler acts on it (`PolicyViolation`), within the resource
    limits given as keyword arguments (the fields of `Limits`, with its defaults; `LimitExceeded`
    names the one hit). Bad data then raises only ``UnpicklingError`` (or a subclass) or
    ``EOFError``. Limits need ``allow=`` (else ``TypeError``). A subclass that overrides
    ``find_class`` must call ``super().find_class()`` to keep the restriction.
    """

    def __init__(
        self,
        file: Any,
        *,
        fix_imports: bool = True,
        encoding: str = "ASCII",
        errors: str = "strict",
        buffers: Iterable[Any] | None = None,
        allow: _policy.AllowSpec = None,
        **limits: Unpack[_policy.LimitOptions],
    ) -> None:
        if allow is None and limits:
            raise TypeError(
                f"{', '.join(sorted(limits))}: an Unpickler checks limits only when it restricts "
                "loading: pass allow= as well (aload and PickleStream check the byte limits "
                "without it)"
            )
        if file is not None:
            # Look the methods up now, as the C Unpickler does, so a bad file fails here.
            read, readline = getattr(file, "read", None), getattr(file, "readline", None)
            if read is None or readline is None:
                raise TypeError("file must have 'read' and 'readline' attributes")
        self._source = _engine.Source(file)
        self._restriction = (
            None
            if allow is None
            else _policy.Restriction(allow, self._source, fix_imports, _policy.Limits(**limits))
        )
        super().__init__(
            self._source if self._restriction is None else self._restriction.reader,
            fix_imports=fix_imports,
            encoding=encoding,
            errors=errors,
            buffers=buffers,
        )

    def find_class(self, module_name: str, global_name: str, /) -> Any:
        """As ``pickle.Unpickler.find_class``; restricted by ``allow=`` when given."""
        restriction: _policy.Restriction | None = getattr(self, "_restriction", None)
        if restriction is None:
            return super().find_class(module_name, global_name)
        return restriction.find_class(module_name, global_name)

    def load(self) -> Any:
        """Read one pickled object from the file and return it, as ``pickle.Unpickler.load``."""
        source: _engine.Source | None = getattr(self, "_source", None)
        if source is not None and source.target is None:
            raise RuntimeError("this Unpickler was created without a file; use iter_load()")
        return self._load()

    def iter_load(self) -> Generator[Request, Any, Any]:
        """Load one object sans-IO: a generator of read requests whose return value is the object.

        Answer each `Read`/`ReadInto`/`ReadLine`/`Peek` request with ``generator.send(reply)``
        (see their docs); ``StopIteration.value`` is the object. The unpickler consumes exactly
        the pickle's bytes: anything after its STOP opcode is at most peeked, never read.
        Errors are those of ``pickle.Unpickler.load``: ``EOFError`` when the stream ends before
        the first byte, ``UnpicklingError`` (or ``EOFError``) for a truncated or bad pickle.
        """
        return _engine.iter_load(self._load, self._source)

    def _load(self) -> Any:
        restriction: _policy.Restriction | None = getattr(self, "_restriction", None)
        return super().load() if restriction is None else restriction.run(super().load)


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


def load(
    file: Any,
    *,
    fix_imports: bool = True,
    encoding: str = "ASCII",
    errors: str = "strict",
    buffers: Iterable[Any] | None = None,
    allow: _policy.AllowSpec = None,
    **limits: Unpack[_policy.LimitOptions],
) -> Any:
    """Read one pickled object from *file* and return it, exactly as ``pickle.load``.

    With *allow*, loading is restricted (within *limits*) as described in `Unpickler`.
    """
    return Unpickler(
        file,
        fix_imports=fix_imports,
        encoding=encoding,
        errors=errors,
        buffers=buffers,
        allow=allow,
        **limits,
    ).load()


def loads(
    data: Any,
    /,
    *,
    fix_imports: bool = True,
    encoding: str = "ASCII",
    errors: str = "strict",
    buffers: Iterable[Any] | None = None,
    allow: _policy.AllowSpec = None,
    **limits: Unpack[_policy.LimitOptions],
) -> Any:
    """Return the object pickled in the bytes-like *data*, exactly as ``pickle.loads``.

    With *allow*, loading is restricted (within *limits*) as described in `Unpickler`.
    """
    if allow is not None or limits:
        return load(
            io.BytesIO(data),
            fix_imports=fix_imports,
            encoding=encoding,
            errors=errors,
            buffers=buffers,
            allow=allow,
            **limits,
        )
    return pickle.loads(
        data, fix_imports=fix_imports, encoding=encoding, errors=errors, buffers=buffers
    )


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
    sink = _engine.Sink(None)
    kwargs: dict[str, Any] = {}
    if not fix_imports:
        kwargs["fix_imports"] = False
    if buffer_callback is not None:
        kwargs["buffer_callback"] = buffer_callback
    pickler = pickler_class(sink, protocol, **kwargs)
    return _engine.iter_dump(pickler.dump, sink, obj)


def iter_loads(
    *,
    fix_imports: bool = True,
    encoding: str = "ASCII",
    errors: str = "strict",
    buffers: Iterable[Any] | None = None,
    unpickler_class: Callable[..., pickle.Unpickler] = pickle.Unpickler,
    allow: _policy.AllowSpec = None,
    **limits: Unpack[_policy.LimitOptions],
) -> Generator[Request, Any, Any]:
    """The incremental (sans-IO) loader for one object; see `Unpickler.iter_load`.

    *unpickler_class* is any ``pickle.Unpickler`` subclass; it is called as
    ``unpickler_class(file, fix_imports=..., encoding=..., errors=..., buffers=...)``.

    With *allow*, loading is restricted within *limits* as described in `Unpickler`: the
    unpickler is then ``unpickler_class(None, ..., allow=allow, **limits)`` (the default class
    becomes `streampickle.Unpickler`), driven by its `Unpickler.iter_load`; it asks only for
    `Read` and `ReadLine`. ``TypeError`` if *unpickler_class* makes no `streampickle.Unpickler`.
    """
    if allow is not None or limits:
        return _restricted_loader(
            unpickler_class, fix_imports, encoding, errors, buffers, allow, limits
        )
    source = _engine.Source(None)
    unpickler = unpickler_class(
        source, fix_imports=fix_imports, encoding=encoding, errors=errors, buffers=buffers
    )
    return _engine.iter_load(unpickler.load, source)


def _restricted_loader(
    unpickler_class: Callable[..., pickle.Unpickler],
    fix_imports: bool,
    encoding: str,
    errors: str,
    buffers: Iterable[Any] | None,
    allow: _policy.AllowSpec,
    limits: _policy.LimitOptions,
) -> Generator[Request, Any, Any]:
    factory = Unpickler if unpickler_class is pickle.Unpickler else unpickler_class
    if isinstance(factory, type) and not issubclass(factory, Unpickler):
        raise TypeError(
            f"allow= needs a streampickle.Unpickler subclass as unpickler_class, not "
            f"{factory.__name__}"
        )
    unpickler = factory(
        None,
        fix_imports=fix_imports,
        encoding=encoding,
        errors=errors,
        buffers=buffers,
        allow=allow,
        **limits,
    )
    if not isinstance(unpickler, Unpickler):
        raise TypeError(
            f"allow= needs a streampickle.Unpickler, but unpickler_class made a "
            f"{type(unpickler).__name__}"
        )
    return unpickler.iter_load()


def drive_load(requests: Generator[Request, Any, Any], file: Any) -> Any:
    """Answer *requests* (from `iter_loads`/`Unpickler.iter_load`) from a binary sync *file*.

    Returns the loaded object. *file* needs ``read``; ``readinto``, ``readline`` and ``peek``
    are used when present. This is the reference driver the async ones mirror.
    """
    source = _engine.Source(file)
    reply: Any = None
    try:
        while True:
            request = requests.send(reply)
            if isinstance(request, _engine.Peek):
                reply = source.peek(request.size)
            elif isinstance(request, _engine.Read):
                reply = source.read(request.size)
            elif isinstance(request, _engine.ReadInto):
                reply = source.readinto(request.buffer)
            else:
                reply = source.readline()
    except StopIteration as stop:
        return stop.value
