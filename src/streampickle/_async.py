"""The async API: `adump` streams a pickle into an async byte stream, `aload` and
`aiter_load` read pickles from one. Each is a thin layer over the engines (`iter_dumps`, the
loaders of `LoadOptions`) and the drivers (`write_chunks`, `Loader`)."""

from __future__ import annotations

import pickle
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any

import anyio.lowlevel

from ._adapters import AsyncReader, AsyncWriter
from ._dump import slices, write_chunks
from ._limits import LimitOptions, load_limits
from ._load import Loader, open_loader
from ._ownership import Hold, hold
from ._pickler import Engine, iter_dumps
from ._policy import AllowSpec
from ._sansio import BufferCallback, Chunk, Progress
from ._unpickler import LoadOptions

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["adump", "aiter_dumps", "aiter_load", "aload"]


async def adump(
    obj: Any,
    writer: AsyncWriter,
    protocol: int | None = None,
    *,
    fix_imports: bool = True,
    buffer_callback: BufferCallback = None,
    pickler_class: Callable[..., pickle.Pickler] | None = None,
    progress: Progress | None = None,
    engine: Engine = None,
    frame_size: int | None = None,
) -> int:
    """Pickle *obj* into the async byte stream *writer*, frame by frame; return the byte count.

    The bytes written are exactly ``pickle.dumps(obj, protocol, fix_imports=fix_imports,
    buffer_callback=buffer_callback)``; *protocol* defaults to ``pickle.DEFAULT_PROTOCOL`` (4),
    as in ``pickle`` (`PickleStream` defaults to 5; pass ``protocol=5`` to send numpy arrays and
    other buffers without a copy). *writer* is an asyncio ``StreamWriter`` (``write`` then
    ``await drain()``), an anyio ``ByteSendStream`` (``send``), a trio ``SendStream``
    (``send_all``), an aiofiles binary file or anyio ``AsyncFile`` (awaitable ``write``),
    aiohttp's ``StreamResponse`` (a ``write`` that returns an awaitable is awaited), or an
    object stream / anything else with an async ``send`` (which then gets ``bytes``).
    Anything else (a synchronous file, a socket) raises ``TypeError`` before pickling
    starts. *pickler_class* is any ``pickle.Pickler`` subclass (see `iter_dumps`);
    ``progress(bytes_written)`` is called after each write. *engine* and *frame_size* choose
    the pickling engine as in `iter_dumps` (the default, C, reruns on the python engine a graph
    too deep for it, if that shows before the first write).

    Streaming needs frames: at protocols 4 and 5 each write is one frame (about 64 KiB) or a
    slice of at most 1 MiB of a large buffer, passed as a memoryview without a
    copy. At protocols 0-3 there are no frames: the C pickler writes what it has only at the
    end (and when it meets a large ``bytes`` at protocols 1-3), so the loop is blocked for the
    whole pickling and memory holds the whole pickle; ``engine="python"`` streams them in
    chunks of *frame_size* (64 KiB) too. At 4 and 5, pickling runs synchronously
    between writes. Each write is awaited (the stream's backpressure suspends pickling), then
    followed by a checkpoint if the pickler has run for 2 ms without the event loop having had
    a turn (on trio, by one after every write), so other tasks run even on a stream that never
    pushes back: the loop is blocked for at most about 2 ms plus a frame's worth of pickling.
    The pickled buffers must not be mutated until ``adump`` returns; a transport may hold views
    of them until it has flushed (asyncio selector transports do on Python 3.12+), so close
    the writer first if you mean to mutate them.

    Errors: pickling errors (``PicklingError``, ``TypeError``, ``RecursionError``, ...) are the
    ones ``pickle.dump`` raises, from the object that caused them; the stream's errors
    (``ConnectionResetError``, ``BrokenPipeError``, anyio/trio ``BrokenResourceError``, ...)
    and cancellation propagate unchanged. In every such case the pickler is unwound before the
    exception leaves ``adump``, and the stream holds a *partial pickle*: a prefix of the bytes
    above, ending after the last complete frame on a pickling error, possibly mid-frame on a
    stream error or a cancellation. It is not loadable: once a byte of it was written, the
    writer is broken, and a later ``adump`` on it raises ``anyio.BrokenResourceError`` naming
    the cause (a pickle after a partial one could load as a wrong object); close the stream.
    ``anyio.BusyResourceError`` if another task is pickling into the same writer.
    """
    chunks = iter_dumps(
        obj,
        protocol,
        fix_imports=fix_imports,
        buffer_callback=buffer_callback,
        pickler_class=pickle.Pickler if pickler_class is None else pickler_class,
        engine=engine,
        frame_size=frame_size,
    )
    return await write_chunks(chunks, writer, progress)


async def aiter_dumps(
    obj: Any,
    protocol: int | None = None,
    *,
    fix_imports: bool = True,
    buffer_callback: BufferCallback = None,
    pickler_class: Callable[..., pickle.Pickler] | None = None,
    engine: Engine = None,
    frame_size: int | None = None,
) -> AsyncIterator[Chunk]:
    """*obj* pickled as an async iterator of chunks, for what takes an async iterable of bytes:
    Starlette/FastAPI ``StreamingResponse(aiter_dumps(obj))``, httpx ``content=``, aiohttp
    ``data=``.

    ``b"".join`` of the chunks is ``pickle.dumps(obj, protocol, ...)`` (arguments as `adump`'s;
    *protocol* defaults to ``pickle``'s). Chunks are those of `iter_dumps` with large buffers
    cut into read-only memoryview slices of at most 1 MiB: ``bytes`` or ``memoryview``, valid
    while the pickled buffers are not mutated. Pickling runs in the consumer's task, about a
    frame per chunk, with a checkpoint after each, so the event loop stays responsive; unlike
    `iter_dumps` it is never resumed from another thread (frameworks run sync iterators in a
    thread pool, where a greenlet cannot follow). Pickling errors are raised from the
    ``__anext__`` that reaches the bad object; closing the iterator (``aclose``, or the
    consumer stopping) unwinds the pickler. *engine* and *frame_size* as in `iter_dumps`.
    """
    chunks = iter_dumps(
        obj,
        protocol,
        fix_imports=fix_imports,
        buffer_callback=buffer_callback,
        pickler_class=pickle.Pickler if pickler_class is None else pickler_class,
        engine=engine,
        frame_size=frame_size,
    )
    try:
        for chunk in chunks:
            for piece in slices(chunk):
                yield piece
                await anyio.lowlevel.checkpoint()
    finally:
        chunks.close()


async def aload(
    reader: AsyncReader,
    *,
    fix_imports: bool = True,
    encoding: str = "ASCII",
    errors: str = "strict",
    buffers: Iterable[Any] | None = None,
    unpickler_class: Callable[..., Any] | None = None,
    progress: Progress | None = None,
    allow: AllowSpec = None,
    **limits: Unpack[LimitOptions],
) -> Any:
    """Read exactly one pickle from the async byte stream *reader* and return the object.

    The C unpickler (or *unpickler_class*, any ``pickle.Unpickler`` subclass) runs as the bytes
    arrive; *fix_imports*, *encoding*, *errors* and *buffers* are those of ``pickle.load``.

    Readers: an asyncio ``StreamReader``, an anyio ``ByteReceiveStream`` (sockets, process
    stdout) or ``BufferedByteReceiveStream``, a trio ``ReceiveStream``, an aiofiles / anyio
    ``AsyncFile`` binary file, an object with an async ``read(n)`` (aiohttp's ``StreamReader``),
    an anyio ``ObjectReceiveStream`` of bytes, or any async iterable of bytes-like chunks (httpx
    ``aiter_bytes()``, Starlette ``request.stream()``, a websockets connection); else
    ``TypeError``. No byte past the pickle's STOP is lost: the next ``aload`` on the same reader
    starts right after it. Streams that can take bytes back (``BufferedByteReceiveStream``,
    seekable files, asyncio ``StreamReader``) are given back what was read past it. On the
    others, a protocol 4/5 pickle is read exactly (whole frames: a few receives per 64 KiB),
    so nothing past its STOP leaves the stream; a protocol 0-3 pickle (read an opcode at a
    time) is read ahead, 64 KiB a receive, and what was read past its STOP is kept for the next
    ``aload``/``aiter_load`` of the same reader object, as is the rest of a chunk that held a
    pickle's end. So after a protocol 0-3 pickle, or on a chunked stream, go on reading with
    ``aload``/``aiter_load``; to read the stream directly as well, wrap it in
    ``anyio.streams.buffered.BufferedByteReceiveStream`` first (and keep using the wrapper).
    Large ``bytes``/``bytearray`` payloads are read into their final buffer: ``readinto`` on
    files, ``recv_into`` by the transport of an asyncio ``StreamReader`` (asyncio, uvloop, TLS),
    piecewise copies of at most 1 MiB on other streams. (The ``StreamReader`` paths use its
    private buffer and transport, as CPython 3.10-3.13 and uvloop have them; a reader without
    them is read through its public API, exactly.)

    Limits: a trusted load (no *allow*) checks none unless given one, as ``pickle.load`` checks
    none, so it accepts every pickle ``pickle.load`` accepts (a 2 GiB array, a protocol-0 line
    of many MiB, a frame of any size), and a length claim costs memory only as its bytes
    arrive: a frame is gathered as it is received, and a payload's buffer, allocated at the
    claimed size, is untouched until filled (a claim beyond what the machine can allocate is a
    ``MemoryError`` at once, as in ``pickle``). Pass any of *max_frame_size* (a protocol 4/5
    frame), *max_object_size* (the bytes the whole pickle spans) and *max_line_length* (a line
    of the text opcodes) to check it (``None`` disables one): each raises `LimitExceeded`,
    naming the keyword, before the bytes are read or a buffer of the claimed size is
    allocated. With *allow*, every field of `Limits` applies, with `Limits`' defaults for those
    not given. ``limits=Limits(...)`` passes them as one bundle (keywords beside it win).
    Caveat: in a protocol 0-3 pickle (or one without a PROTO opcode) read ahead from a stream
    that can take bytes back, a ``BINBYTES``/``BINBYTES8``/``BYTEARRAY8`` header is parsed by
    the C unpickler from the read-ahead data, so it allocates the claimed size (``MemoryError``
    if impossible) before the payload read is refused; frames are a protocol-4 feature and are
    only checked in protocol 4/5 pickles, and in-frame lengths are only checked when their
    payload is read.

    ``progress(bytes_read)`` is called as the pickle is read, with the number of its bytes read
    so far (strictly increasing: after each frame or opcode the unpickler takes, and after each
    piece of a large payload), as `adump`'s *progress* is called with the bytes written. The
    receiver cannot know the total in advance (the sender only knows it once pickling ends); the
    last call's count is the pickle's size. An exception raised by *progress* aborts the load.

    *allow* (an `Allowlist` or pairs) restricts loading as in `streampickle.Unpickler`, whose
    ``iter_load`` then runs (*unpickler_class*, if given, must be a subclass of it): only the
    listed globals resolve, the opcodes are vetted before the unpickler acts on them, and the
    other `Limits` apply too (*max_payload_size*, *max_memo_size*, *max_opcodes*,
    *max_stack_depth*, *max_expansion*; passing one without *allow* is a ``TypeError``). The
    restricted unpickler peeks only at bytes already checked, limits included, so the
    read-ahead caveat above does not apply to it. Bad
    data then raises only ``UnpicklingError`` (a subclass for a refusal: `ForbiddenGlobal`,
    `PolicyViolation`, `LimitExceeded`) or ``EOFError``.

    Errors: ``EOFError`` if the stream ends before the first byte (as ``pickle.load``);
    ``UnpicklingError`` or ``EOFError`` if it ends inside the pickle or the data is bad;
    `LimitExceeded`; the stream's own errors. After an error or a cancellation inside the
    pickle the unpickler has been unwound and the reader is broken: a later ``aload`` on it
    raises ``anyio.BrokenResourceError`` naming the cause. ``anyio.BusyResourceError`` if
    another task is loading from the same reader.
    """
    options = _load_options(
        fix_imports=fix_imports,
        encoding=encoding,
        errors=errors,
        buffers=buffers,
        unpickler_class=unpickler_class,
        allow=allow,
        limits=limits,
    )
    loader = await open_loader(reader)
    with hold(reader, "aload") as held:
        obj = await _load_one(loader, options, progress, held)
    return obj


async def aiter_load(
    reader: AsyncReader,
    *,
    fix_imports: bool = True,
    encoding: str = "ASCII",
    errors: str = "strict",
    buffers: Iterable[Any] | None = None,
    unpickler_class: Callable[..., Any] | None = None,
    progress: Progress | None = None,
    allow: AllowSpec = None,
    **limits: Unpack[LimitOptions],
) -> AsyncIterator[Any]:
    """Yield the objects pickled back to back in *reader* until a clean end of stream.

    Each object is read as by `aload` (same arguments, readers, *allow* and limits, per pickle;
    *buffers* is shared by all the pickles; each pickle gets a fresh unpickler, so one pickle's
    memo never resolves another's references). The stream ending before a pickle's first byte
    ends the iteration; ending inside one raises ``UnpicklingError`` or ``EOFError``.
    As it owns the stream until its end, it reads ahead at every protocol (64 KiB a receive),
    and before each object is yielded what was read past its pickle is given back to a reader
    that can take bytes back, or else kept for the next ``aload``/``aiter_load`` of the same
    reader: breaking out of the loop leaves the reader right after the last object yielded.
    ``progress(bytes_read)`` counts the bytes of all the pickles read so far, from the first.
    """
    options = _load_options(
        fix_imports=fix_imports,
        encoding=encoding,
        errors=errors,
        buffers=buffers,
        unpickler_class=unpickler_class,
        allow=allow,
        limits=limits,
    )
    loader = await open_loader(reader)
    done = 0  # bytes of the pickles already read: progress counts the whole stream
    while True:
        # Held per object: between objects the reader is at a pickle boundary, and a loop
        # left with break leaves it there for the next aload.
        with hold(reader, "aload") as held:
            try:
                obj = await _load_one(loader, options, _offset(progress, done), held, owned=True)
            except EOFError:
                if loader.consumed == 0 and loader.eof:
                    return
                raise
        done += loader.consumed
        yield obj


async def _load_one(
    loader: Loader,
    options: LoadOptions,
    progress: Progress | None,
    held: Hold,
    *,
    owned: bool = False,
) -> Any:
    """One object from *loader*, starting with what the last load of the stream read past
    its pickle and keeping what this one reads past its own; *held* learns whether a failed
    load left the stream inside its pickle. *owned*: the caller reads the stream to its end
    (`aiter_load`), so even a framed pickle may be read ahead.

    A load that stops before its unpickler consumed a byte (cancelled while a small pickle
    arrives: `Loader.load` receives it whole first) gives what it read back to the stream,
    which stays usable: the next load starts at that pickle's first byte."""
    loader.preload(held.take_leftover())
    try:
        obj = await loader.load(options.for_load(), progress, guarded=options.guarded, owned=owned)
    except pickle.UnpicklingError as error:
        explained = loader.explain(error)
        if explained is error:
            raise
        raise explained from error
    except BaseException:
        if loader.consumed == 0 and loader.buffered:
            with anyio.CancelScope(shield=True):  # no I/O: back into a buffer
                held.keep_leftover(await loader.give_back())
        raise
    finally:
        held.started = loader.consumed > 0 or loader.buffered > 0
        held.moved = loader.consumed
    held.keep_leftover(await loader.give_back())
    return obj


def _load_options(
    *,
    fix_imports: bool,
    encoding: str,
    errors: str,
    buffers: Iterable[Any] | None,
    unpickler_class: Callable[..., Any] | None,
    allow: AllowSpec,
    limits: LimitOptions,
) -> LoadOptions:
    """The `LoadOptions` of an `aload`/`aiter_load` call (``TypeError`` for a restricted-only
    limit without *allow*)."""
    return LoadOptions(
        fix_imports=fix_imports,
        encoding=encoding,
        errors=errors,
        buffers=buffers,
        unpickler_class=unpickler_class,
        allow=allow,
        limits=load_limits(allow, limits),
    )


def _offset(progress: Progress | None, base: int) -> Progress | None:
    """*progress*, called with *base* added to each count."""
    if progress is None or not base:
        return progress
    return lambda count: progress(base + count)
