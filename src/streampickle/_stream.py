"""`PickleStream`: an anyio object stream of pickled objects over any byte stream."""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Callable, Generator, Mapping
from typing import TYPE_CHECKING, Any

import anyio
from anyio import BrokenResourceError, ClosedResourceError, EndOfStream
from anyio.abc import AnyByteStream, ByteStream, ObjectStream
from anyio.lowlevel import checkpoint

from ._adapters import (
    AsyncioByteStream,
    TransportSource,
    TrioByteStream,
    WebSocketByteStream,
    underlying,
)
from ._auth import DEFAULT_HANDSHAKE_TIMEOUT, authenticate
from ._dump import write_chunks
from ._limits import LimitOptions, load_limits
from ._load import Loader
from ._ownership import hold
from ._pickler import Engine, check_engine, iter_dumps
from ._policy import AllowSpec
from ._sansio import Chunk, Progress
from ._turns import Turns, Turnstile
from ._unpickler import LoadOptions

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["PickleStream"]


class PickleStream(ObjectStream[Any]):
    """Send and receive pickled objects over a byte stream (``ObjectStream[Any]``).

    ``send(obj)`` streams ``pickle.dumps(obj, protocol)`` frame by frame (see `adump`; *engine*
    and *frame_size* choose its pickling engine, as in `iter_dumps`);
    ``receive()`` reads one pickle as `aload` does, with the same limits (*limits*, the
    keyword arguments named after the fields of `Limits`: without *allow* only those given are
    checked, so a trusted stream takes every pickle ``pickle.load`` takes; with *allow* all
    apply, with `Limits`' defaults), reading ahead and keeping what it read past one object for
    the next. Only unpickle from peers you trust, as with ``pickle``.

    *protocol* defaults to ``pickle.HIGHEST_PROTOCOL`` (5), not ``pickle``'s default (4): both
    ends of a `PickleStream` are streampickle, and protocol 5 sends buffers such as numpy
    arrays without copying them (at 4 each is copied into the pickle). Pass ``protocol=4`` to
    talk to a peer older than Python 3.8.

    *transport_stream* is an anyio ``ByteStream`` (or an ``ObjectStream`` of bytes); for
    asyncio and trio streams and websockets use `from_asyncio`, `from_trio` and
    `from_websocket`. A wrong transport or
    protocol raises ``TypeError``/``ValueError`` here, naming the constructor to use.

    Concurrency: concurrent ``send`` calls are serialized (each object goes out whole, in the
    order the lock is acquired); so are concurrent ``receive`` calls.

    One user stream, many readers: what a ``receive`` read ahead belongs to the stream under
    the transport (the asyncio reader, the trio stream, the websocket, the anyio stream), not
    to this object. A new `PickleStream` over the same stream (one per message, say), or an
    ``aload`` of it, continues right after the last object received; a ``receive`` while
    another reader of the stream is inside a pickle raises ``anyio.BusyResourceError``, and
    a stream one of them broke is broken for all (likewise for senders and ``adump``).

    Errors: ``receive`` raises ``anyio.EndOfStream`` at a clean end of stream (between
    objects), and ``anyio.BrokenResourceError`` (from the unpickler's ``UnpicklingError`` or
    ``EOFError``) if the stream ends inside an object. A pickling error before the first byte
    went out leaves the stream usable. A send that fails or is cancelled after its first byte
    went out leaves a partial pickle on the wire: the stream is then broken for sending (later
    sends raise ``BrokenResourceError``) and the peer gets an error when the stream ends, never
    a wrong object. A receive that fails or is cancelled after consuming a byte breaks it for
    receiving likewise; one cancelled before that leaves it intact, and so does one cancelled
    while a small framed pickle arrives (up to ``_load.WHOLE_MAX``, 256 KiB: it is received
    whole before its unpickler consumes a byte). ``aclose`` closes the
    transport; afterwards ``send``/``receive`` raise ``anyio.ClosedResourceError``.

    Untrusted peers: with *allow* (an `Allowlist` or pairs) every object is loaded restricted,
    as by ``aload(..., allow=...)``, within all the `Limits` (*max_payload_size*,
    *max_memo_size*, *max_opcodes*, *max_stack_depth* and *max_expansion* apply only then).
    A refusal (`ForbiddenGlobal`, `PolicyViolation`, `LimitExceeded`) is raised from
    ``receive`` and breaks the stream for receiving: the rest of that pickle is still unread.
    Each object gets a fresh unpickler, as each was pickled by a fresh pickler. To make the
    peer prove a shared key first, open the stream with `authenticated`.
    """

    def __init__(
        self,
        transport_stream: AnyByteStream,
        protocol: int = pickle.HIGHEST_PROTOCOL,
        *,
        pickler_class: Callable[..., pickle.Pickler] = pickle.Pickler,
        unpickler_class: Callable[..., pickle.Unpickler] = pickle.Unpickler,
        allow: AllowSpec = None,
        engine: Engine = None,
        frame_size: int | None = None,
        **limits: Unpack[LimitOptions],
    ) -> None:
        _check_transport(transport_stream)
        _check_protocol(protocol)
        check_engine(engine, frame_size)
        #: The pickling engine of ``send`` and its frame size (see `iter_dumps`).
        self.engine, self.frame_size = engine, frame_size
        #: The byte stream the objects travel over.
        self.transport_stream = transport_stream
        self.protocol = protocol
        self.pickler_class = pickler_class
        self.unpickler_class = unpickler_class
        self.allow = allow
        #: The limits each received pickle is checked against (None: a trusted stream given
        #: none); see `aload`.
        self.limits = load_limits(allow, limits)
        self._options = LoadOptions(
            unpickler_class=unpickler_class, allow=allow, limits=self.limits
        )
        self._loader = Loader(TransportSource(transport_stream))
        # The user's streams under the transport: their read-ahead, turns and brokenness are
        # shared with every other PickleStream and aload/adump of them (_ownership).
        self._reads = hold(underlying(transport_stream, "aload"), "aload")
        self._writes = underlying(transport_stream, "adump")
        # Uncontended, a turnstile takes no event-loop pass (anyio's default lock does one
        # per acquire: two per object). Receives give the loop a turn when one is due
        # instead, as loads and dumps do (`streampickle._turns`; always on trio), and sends
        # in write_chunks.
        self._send_lock = Turnstile()
        self._receive_lock = Turnstile()
        self._turns: Turns | None = None  # made by the first receive, in its event loop
        self._partial = False  # the current send has handed a chunk to the transport
        self._send_broken = False
        self._receive_broken = False
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.transport_stream!r}, protocol={self.protocol}, "
            f"allow={self.allow!r}, limits={self.limits!r})"
        )

    @classmethod
    async def authenticated(
        cls,
        transport_stream: ByteStream,
        *,
        key: bytes,
        server_side: bool,
        timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,  # noqa: ASYNC109 (a safe default)
        **options: Any,
    ) -> PickleStream:
        """A `PickleStream` over *transport_stream* once its peer proved it holds *key*.

        Runs `streampickle.authenticate` within *timeout* seconds (the peer must do the same,
        with the other *server_side*: True on the accepting end) before anything is sent
        or unpickled; *options* are those of the constructor (pass *allow* too: a peer that
        knows the key is not thereby harmless). On any error, `AuthenticationError` included,
        the transport is closed. For asyncio or trio streams, make the stream with
        `from_asyncio`/`from_trio` and ``await authenticate(stream.transport_stream, key,
        server_side=...)`` before using it.
        """
        try:
            await authenticate(transport_stream, key, server_side=server_side, timeout=timeout)
        except BaseException:
            await anyio.aclose_forcefully(transport_stream)
            raise
        return cls(transport_stream, **options)

    @classmethod
    def from_asyncio(
        cls, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, **options: Any
    ) -> PickleStream:
        """A `PickleStream` over an asyncio ``(StreamReader, StreamWriter)`` pair (as from
        ``asyncio.open_connection``); *options* are those of the constructor."""
        if isinstance(reader, asyncio.StreamWriter) and isinstance(writer, asyncio.StreamReader):
            raise TypeError(
                "from_asyncio(writer, reader): the arguments are swapped; pass the "
                "StreamReader first, as asyncio.open_connection returns them"
            )
        if not isinstance(reader, asyncio.StreamReader):
            raise TypeError(
                f"from_asyncio needs an asyncio.StreamReader first, not {type(reader).__name__}"
            )
        if not isinstance(writer, asyncio.StreamWriter):
            raise TypeError(
                f"from_asyncio needs an asyncio.StreamWriter second, not {type(writer).__name__}"
            )
        return cls(AsyncioByteStream(reader, writer), **options)

    @classmethod
    def from_trio(cls, stream: Any, **options: Any) -> PickleStream:
        """A `PickleStream` over a trio ``Stream`` (``trio.SocketStream``, ``trio.SSLStream``,
        ``trio.StapledStream``...); *options* are those of the constructor."""
        if not _is_trio_stream(stream):
            raise TypeError(
                f"from_trio needs a trio Stream (receive_some() and send_all()), not "
                f"{type(stream).__name__}{_CONSTRUCTOR_HINT.get(_family(stream), '')}"
            )
        return cls(TrioByteStream(stream), **options)

    @classmethod
    def from_websocket(cls, connection: Any, **options: Any) -> PickleStream:
        """A `PickleStream` over a websockets connection (client or server side, the
        ``websockets`` library's asyncio API); *options* are those of the constructor.

        Each chunk of a pickle (a frame, or a slice of at most 1 MiB of a large buffer) goes
        as one binary message, and received messages are read as one byte stream: a message
        carries a chunk, not an object. The peer closing the connection normally ends the
        stream (``EndOfStream`` between objects); a websocket cannot half-close, so
        ``send_eof`` closes the connection.
        """
        if not (callable(getattr(connection, "recv", None)) and hasattr(connection, "send")):
            raise TypeError(
                f"from_websocket needs a websockets connection (recv() and send()), not "
                f"{type(connection).__name__}"
            )
        return cls(WebSocketByteStream(connection), **options)

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self.transport_stream.extra_attributes

    async def send(self, item: Any, *, progress: Progress | None = None) -> None:
        """Pickle *item* into the transport; see the class docstring for errors.

        ``progress(bytes_sent)`` is called after each write with the bytes of this object sent
        so far, as by `adump`.
        """
        async with self._send_lock:
            if self._closed:
                raise ClosedResourceError
            if self._send_broken:
                raise BrokenResourceError(
                    "an earlier send failed or was cancelled half-way; the peer holds a "
                    "partial pickle, so nothing more can be sent on this PickleStream"
                )
            chunks = iter_dumps(
                item,
                self.protocol,
                pickler_class=self.pickler_class,
                engine=self.engine,
                frame_size=self.frame_size,
            )
            try:
                await write_chunks(
                    self._track(chunks), self.transport_stream, progress, owner=self._writes
                )
            except BaseException:
                self._send_broken = self._partial
                raise
            finally:
                self._partial = False

    def _track(self, chunks: Generator[Chunk, None, None]) -> Generator[Chunk, None, None]:
        """*chunks*, noting when the first one is handed to the transport."""
        try:
            for chunk in chunks:
                self._partial = True
                yield chunk
        finally:
            chunks.close()

    async def receive(self, *, progress: Progress | None = None) -> Any:
        """Read the next object; see the class docstring for errors.

        ``progress(bytes_read)`` is called as the object's pickle is read, with its bytes read
        so far, as by `aload` (the total is not known before the last call).
        """
        async with self._receive_lock:
            if self._closed:
                raise ClosedResourceError
            if self._receive_broken:
                raise BrokenResourceError(
                    "an earlier receive failed or was cancelled inside an object; the rest of "
                    "that pickle is still on the stream, so nothing more can be received"
                )
            turns = self._turns
            if turns is None:
                turns = self._turns = Turns()
            if turns.due():
                await checkpoint()
                turns.gave()
            loader = self._loader
            with self._reads as held:
                # What another reader of the stream read past its last pickle comes first;
                # what this one reads ahead stays in its buffer, for whoever reads next.
                leftover = held.take_over(loader.buffer)
                if leftover is not None:
                    loader.restart(leftover)
                try:
                    options = self._options
                    return await loader.load(options.for_load(), progress, guarded=options.guarded)
                except BaseException as exc:
                    self._receive_broken = loader.consumed > 0
                    if isinstance(exc, (EOFError, pickle.UnpicklingError)) and loader.eof:
                        if not self._receive_broken:
                            raise EndOfStream from None
                        raise BrokenResourceError(
                            f"the stream ended inside a pickle, after {loader.consumed} bytes"
                        ) from exc
                    raise
                finally:
                    held.started = loader.consumed > 0
                    held.moved = loader.consumed
                    held.park(*loader.parked())

    async def send_eof(self) -> None:
        """Close the sending side of the transport (half-close) after the last object."""
        await self.transport_stream.send_eof()

    async def aclose(self) -> None:
        self._closed = True
        await self.transport_stream.aclose()


_CONSTRUCTOR_HINT: dict[str | None, str] = {
    "asyncio": "; for asyncio streams use PickleStream.from_asyncio(reader, writer)",
    "trio": "; for a trio stream use PickleStream.from_trio(stream)",
    "anyio": "; for an anyio byte stream use PickleStream(stream)",
    "websocket": "; for a websocket use PickleStream.from_websocket(connection)",
}


def _is_trio_stream(stream: object) -> bool:
    return hasattr(stream, "receive_some") and hasattr(stream, "send_all")


def _family(stream: object) -> str | None:
    if isinstance(stream, (asyncio.StreamReader, asyncio.StreamWriter)):
        return "asyncio"
    if isinstance(stream, (ByteStream, ObjectStream)):
        return "anyio"
    if _is_trio_stream(stream):
        return "trio"
    if callable(getattr(stream, "recv", None)) and callable(getattr(stream, "send", None)):
        return "websocket"
    return None


def _check_transport(stream: object) -> None:
    family = _family(stream)
    if family == "anyio":
        return
    raise TypeError(
        f"PickleStream needs an anyio ByteStream as its transport, not "
        f"{type(stream).__name__}{_CONSTRUCTOR_HINT.get(family, '')}"
    )


def _check_protocol(protocol: object) -> None:
    if type(protocol) is not int:
        raise TypeError(f"protocol must be an int, not {type(protocol).__name__}")
    if protocol > pickle.HIGHEST_PROTOCOL:
        raise ValueError(
            f"protocol={protocol}: pickle protocol must be <= {pickle.HIGHEST_PROTOCOL}"
        )
