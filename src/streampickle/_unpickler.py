"""The drop-in unpickling API and the incremental (sans-IO) loader.

`Unpickler` subclasses the standard library's C class, so ``load`` accepts exactly the bytes
``pickle`` does; `Unpickler.iter_load` drives the same unpickler as a generator of read
requests. `LoadOptions` is the bundle of load options every driver (sync and async) builds its
loaders from, by name.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable, Generator, Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from . import _cengine, _collector
from ._cengine import Source
from ._limits import LimitOptions, Limits, guard, load_limits
from ._policy import AllowSpec, Restriction
from ._sansio import Peek, Read, ReadInto, Request

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["LoadOptions", "Unpickler", "drive_load", "iter_loads", "load", "loads"]


class Unpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that can also be driven sans-IO with `iter_load`.

    ``load()`` reads from *file* exactly as ``pickle.Unpickler`` does (``file`` needs ``read``
    and ``readline``, else ``TypeError``); ``file`` may be ``None`` for an unpickler used only
    through `iter_load`.

    Byte limits: *max_frame_size*, *max_object_size* and *max_line_length* (see `Limits`)
    are checked when given, as `aload` checks them: before the bytes are read or a buffer of
    the claimed size is allocated, raising `LimitExceeded`. Without any, ``load`` is
    ``pickle``'s (no limit). With a limit, the unpickler is driven through `iter_load`, which
    reads protocol 4/5 pickles a field at a time outside frames (never ahead) so that every
    length is checked in time.

    With ``allow=`` (an `Allowlist` or pairs) loading is restricted: only the listed globals
    resolve (`ForbiddenGlobal` otherwise) and the opcode stream is vetted before the unpickler
    acts on it (`PolicyViolation`), within all the resource limits given as keyword arguments
    (the fields of `Limits`, with its defaults; `LimitExceeded` names the one hit). Bad data
    then raises only ``UnpicklingError`` (or a subclass) or ``EOFError``. The limits other than
    the byte limits need ``allow=`` (else ``TypeError``). A subclass that overrides
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
        allow: AllowSpec = None,
        **limits: Unpack[LimitOptions],
    ) -> None:
        checked = load_limits(allow, limits)
        if file is not None:
            # Look the methods up now, as the C Unpickler does, so a bad file fails here.
            read, readline = getattr(file, "read", None), getattr(file, "readline", None)
            if read is None or readline is None:
                raise TypeError("file must have 'read' and 'readline' attributes")
        self._source = Source(file)
        #: The byte limits the guard checks (an unrestricted unpickler given some), or None.
        self._byte_limits = checked if allow is None else None
        self._restriction = (
            None
            if allow is None
            else Restriction(allow, self._source, fix_imports, checked or Limits())
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
        restriction: Restriction | None = getattr(self, "_restriction", None)
        if restriction is None:
            return super().find_class(module_name, global_name)
        return restriction.find_class(module_name, global_name)

    def load(self) -> Any:
        """Read one pickled object from the file and return it, as ``pickle.Unpickler.load``."""
        source: Source | None = getattr(self, "_source", None)
        if source is not None and source.target is None:
            raise RuntimeError("this Unpickler was created without a file; use iter_load()")
        if getattr(self, "_byte_limits", None) is not None:
            assert source is not None
            return drive_load(self.iter_load(), source.target)
        if source is None:  # __init__ was not called: pickle's own error
            return self._load()
        source.segment = segment = _collector.Lazy()  # pauses once the load is large
        try:
            return self._load()
        finally:
            source.segment = None
            segment.end()

    def iter_load(self) -> Generator[Request, Any, Any]:
        """Load one object sans-IO: a generator of read requests whose return value is the object.

        Answer each `Read`/`ReadInto`/`ReadLine`/`Peek` request with ``generator.send(reply)``
        (see their docs); ``StopIteration.value`` is the object. The unpickler consumes exactly
        the pickle's bytes: anything after its STOP opcode is at most peeked, never read.
        Errors are those of ``pickle.Unpickler.load``: ``EOFError`` when the stream ends before
        the first byte, ``UnpicklingError`` (or ``EOFError``) for a truncated or bad pickle;
        `LimitExceeded` for a limit given to the constructor.
        """
        requests = _cengine.iter_load(self._load, self._source)
        limits: Limits | None = getattr(self, "_byte_limits", None)
        return requests if limits is None else guard(requests, limits)

    def _iter_load_once(self) -> Generator[Request, Any, Any]:
        """`iter_load` of a restricted unpickler that loads one pickle (`iter_loads`): the
        vetting pass's model is freed before the object is returned, with turns offered to
        the driver on the way (`CheckedReader.release`)."""
        restriction = self._restriction
        assert restriction is not None

        def load_once() -> Any:
            obj = self._load()
            restriction.reader.release()
            return obj

        return _cengine.iter_load(load_once, self._source)

    def _load(self) -> Any:
        restriction: Restriction | None = getattr(self, "_restriction", None)
        return super().load() if restriction is None else restriction.run(super().load)


def load(
    file: Any,
    *,
    fix_imports: bool = True,
    encoding: str = "ASCII",
    errors: str = "strict",
    buffers: Iterable[Any] | None = None,
    allow: AllowSpec = None,
    **limits: Unpack[LimitOptions],
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


class PeekableBytes(io.BytesIO):
    """`loads`' file under ``allow=``: a ``BytesIO`` with ``peek``, so that the vetting pass
    checks the opcodes outside frames in bulk (`streampickle._policy.reader.CheckedReader`).
    It peeks at the caller's buffer: ``getbuffer`` would copy it first (a ``BytesIO`` shares
    its initial bytes until it is written or exported)."""

    def __init__(self, data: Any) -> None:
        super().__init__(data)
        self._view = memoryview(data).cast("B")

    def peek(self, size: int = 1, /) -> bytes:
        position = self.tell()
        return bytes(self._view[position : position + max(size, 1)])


def loads(
    data: Any,
    /,
    *,
    fix_imports: bool = True,
    encoding: str = "ASCII",
    errors: str = "strict",
    buffers: Iterable[Any] | None = None,
    allow: AllowSpec = None,
    **limits: Unpack[LimitOptions],
) -> Any:
    """Return the object pickled in the bytes-like *data*, exactly as ``pickle.loads``.

    With *allow*, loading is restricted (within *limits*) as described in `Unpickler`.
    """
    if allow is not None or limits:
        return load(
            io.BytesIO(data) if allow is None else PeekableBytes(data),
            fix_imports=fix_imports,
            encoding=encoding,
            errors=errors,
            buffers=buffers,
            allow=allow,
            **limits,
        )

    def plain() -> Any:
        return pickle.loads(
            data, fix_imports=fix_imports, encoding=encoding, errors=errors, buffers=buffers
        )

    return plain() if len(data) < _collector.SMALL else _collector.run(plain)  # small: no pause


def iter_loads(
    *,
    fix_imports: bool = True,
    encoding: str = "ASCII",
    errors: str = "strict",
    buffers: Iterable[Any] | None = None,
    unpickler_class: Callable[..., pickle.Unpickler] = pickle.Unpickler,
    allow: AllowSpec = None,
    **limits: Unpack[LimitOptions],
) -> Generator[Request, Any, Any]:
    """The incremental (sans-IO) loader for one object; see `Unpickler.iter_load`.

    *unpickler_class* is any ``pickle.Unpickler`` subclass; it is called as
    ``unpickler_class(file, fix_imports=..., encoding=..., errors=..., buffers=...)``.

    The byte limits (*max_frame_size*, *max_object_size*, *max_line_length*), when given, are
    checked on the requests as `Unpickler` describes; `Peek` requests then reach the driver
    only for pickles that do not start with PROTO 4 or 5.

    With *allow*, loading is restricted within *limits* as described in `Unpickler`: the
    unpickler is then ``unpickler_class(None, ..., allow=allow, **limits)`` (the default class
    becomes `streampickle.Unpickler`), driven by its `Unpickler.iter_load`; it asks only for
    `Read` and `ReadLine`. ``TypeError`` if *unpickler_class* makes no `streampickle.Unpickler`.
    """
    if allow is not None:
        return _restricted_loader(
            unpickler_class, fix_imports, encoding, errors, buffers, allow, limits
        )
    checked = load_limits(allow, limits)
    source = Source(None)
    unpickler = unpickler_class(
        source, fix_imports=fix_imports, encoding=encoding, errors=errors, buffers=buffers
    )
    requests = _cengine.iter_load(unpickler.load, source)
    return requests if checked is None else guard(requests, checked)


def _restricted_loader(
    unpickler_class: Callable[..., pickle.Unpickler],
    fix_imports: bool,
    encoding: str,
    errors: str,
    buffers: Iterable[Any] | None,
    allow: AllowSpec,
    limits: LimitOptions,
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
    return unpickler._iter_load_once()


def drive_load(requests: Generator[Request, Any, Any], file: Any) -> Any:
    """Answer *requests* (from `iter_loads`/`Unpickler.iter_load`) from a binary sync *file*.

    Returns the loaded object. *file* needs ``read``; ``readinto``, ``readline`` and ``peek``
    are used when present. This is the reference driver the async ones mirror.
    """
    return _collector.run(lambda: _drive(requests, Source(file)))


def _drive(requests: Generator[Request, Any, Any], source: Source) -> Any:
    reply: Any = None
    try:
        while True:
            request = requests.send(reply)
            if isinstance(request, Peek):
                reply = source.peek(request.size)
            elif isinstance(request, Read):
                reply = source.read(request.size)
            elif isinstance(request, ReadInto):
                reply = source.readinto(request.buffer)
            else:
                reply = source.readline(-1 if request.limit is None else request.limit)
    except StopIteration as stop:
        return stop.value


@dataclass(frozen=True, kw_only=True)
class LoadOptions:
    """``pickle.load``'s options, the unpickler class, the allowlist and the limits: what a
    driver needs to make a fresh loader for each pickle (`requests`)."""

    fix_imports: bool = True
    encoding: str = "ASCII"
    errors: str = "strict"
    buffers: Iterable[Any] | None = None
    unpickler_class: Callable[..., Any] | None = None  #: None: the default unpickler
    allow: AllowSpec = None
    #: What `streampickle._limits.load_limits` gives: None for a trusted load without limits.
    limits: Limits | None = None

    @property
    def guarded(self) -> bool:
        """Whether `requests` pass through the byte guard (a trusted load given limits)."""
        return self.allow is None and self.limits is not None

    @property
    def plain(self) -> bool:
        """Whether `requests` are the engine's own (a trusted load without limits)."""
        return self.allow is None and self.limits is None

    def for_load(self) -> Generator[Request, Any, Any] | Callable[[], Generator[Request, Any, Any]]:
        """What `streampickle._load.Loader.load` takes: `requests` itself when they are
        `plain` (made once a small pickle has arrived whole), else a fresh loader now."""
        return self.requests if self.plain else self.requests()

    def requests(self) -> Generator[Request, Any, Any]:
        """A fresh incremental loader for one pickle, within `limits`: restricted by `allow` if
        given (its vetting reader checks every limit), else with the byte limits (if any)
        checked by the byte guard (`streampickle._limits.guard`), as `iter_loads` does."""
        options: dict[str, Any] = (
            {} if self.unpickler_class is None else {"unpickler_class": self.unpickler_class}
        )
        common: dict[str, Any] = {
            "fix_imports": self.fix_imports,
            "encoding": self.encoding,
            "errors": self.errors,
            "buffers": self.buffers,
        }
        limits = self.limits
        if self.allow is not None:
            return iter_loads(**common, **options, allow=self.allow, **asdict(limits or Limits()))
        if limits is None:
            return iter_loads(**common, **options)
        return iter_loads(
            **common,
            **options,
            max_frame_size=limits.max_frame_size,
            max_object_size=limits.max_object_size,
            max_line_length=limits.max_line_length,
        )
