"""Stream kinds, and the conformance kit every kind is held to.

After trio's ``trio/testing/_check_streams.py`` (``check_one_way_stream(stream_maker, ...)``):
each kind of stream contributes a *maker*, an async context manager that opens one connected
pair of that kind, and one kit of checks runs on every maker (test_streams.py runs them).
Adding a kind is adding one entry to `BYTE_KINDS` (streams `adump` writes and `aload` reads)
or `OBJECT_KINDS` (`PickleStream`, which sends and receives objects).

The kit, per kind: a round trip of a corpus object at protocols 0-5; objects back to back
(`aload` several times, then `aiter_load`, then end of stream); a trickle (the pickle's bytes
sent one at a time, and a multi-frame stream in tiny random pieces); truncation at every byte
(each prefix of a small pickle, then end of stream, raises ``UnpicklingError`` or ``EOFError``
and never hangs); cancellation of `aload` and of `adump` half-way (the cancellation is what is
raised, no greenlet is left running, the peer of a cancelled `adump` gets an error, never an
object); and leftovers (pickles sent in one piece: the bytes after each STOP are there for the
next `aload` on the same reader). A kind that fails an item because of a known limitation
says so in its entry (`Known`); test_streams.py turns that into a strict xfail.

Each kind runs on the backends it exists on (asyncio's, aiofiles', websockets' and fsspec's on
asyncio and uvloop, trio's on trio, anyio's on all three). Only the public API of streampickle
is used here.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import pickle
import random
import shutil
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiofiles
import anyio
import anyio.lowlevel
import pytest
import trio
import trio.testing
from anyio.abc import SocketStream, UNIXSocketStream
from anyio.streams.buffered import BufferedByteReceiveStream
from anyio.streams.tls import TLSStream

import streampickle
from corpus import corpus
from leaks import GreenletLedger
from netutil import aiohttp_server, asyncio_pipe, tcp_pair
from streampickle import AsyncReader, AsyncWriter
from streampickle._adapters import AsyncioByteStream, TrioByteStream, WebSocketByteStream

T = TypeVar("T")

#: Seconds; only so that a broken check fails instead of hanging CI (no check is timed).
HANG_GUARD = 20
PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)
ANY = ("asyncio", "uvloop", "trio")
ASYNCIO = ("asyncio", "uvloop")
TRIO = ("trio",)

# ---------------------------------------------------------------------------------------------
# What the kit sends: small objects, and one multi-frame pickle where an item needs frames.

CORPUS = corpus()
#: The corpus's small entries.
SMALL = (
    "none", "scalars", "strings", "bytes_small", "bytearray", "containers", "shared_refs",
    "recursive_list", "recursive_dict", "classes", "stdlib", "globals",
)  # fmt: skip


def corpus_object(protocol: int) -> dict[str, Any]:
    """The small corpus entries that pickle at *protocol* (slotted classes need 2+)."""

    def pickles(obj: Any) -> bool:
        try:
            pickle.dumps(obj, protocol)
        except (TypeError, pickle.PicklingError):
            return False
        return True

    return {name: CORPUS[name] for name in SMALL if pickles(CORPUS[name])}


#: Frames, and two payloads (bytes, str) bigger than the frame target, which the pickler
#: writes outside the frames: about 285 KB at protocol 5.
FRAMED = {
    "rows": [(i, f"r{i}") for i in range(8000)],
    "blob": bytes(range(256)) * 400,
    "text": "é" * 40_000,
}
FRAMED_5 = pickle.dumps(FRAMED, 5)
#: A half-way cancellation of a load comes once the first frame (the first chunk the pickler
#: yields) was read, and the unpickler is inside the object (its "rows" list half built)...
CANCEL_AT = len(next(streampickle.iter_dumps(FRAMED, 5)))
#: ...with only a few bytes of the second frame sent: little enough that what the reader has
#: not read by then fits in any buffer (a writer blocked in a thread cannot be cancelled).
CANCEL_CUT = CANCEL_AT + 5


def cancel_at(scope: anyio.CancelScope, count: int) -> Callable[[int], None]:
    """A progress hook that cancels *scope* once *count* bytes were read."""

    def progress(done: int) -> None:
        if done >= count:
            scope.cancel()

    return progress


TRICKLE = [{"k": list(range(20)), "s": "abc" * 30}, b"x" * 300, 12345, None]
#: Small, so that truncation at every byte stays cheap: ints, a str with a length, a float.
TRUNCATE = [1, "two", 4.5, None]


def assert_loads_like(got: Sequence[Any], pickles: Sequence[bytes]) -> None:
    """*got* are, one for one, what ``pickle.loads`` makes of *pickles*: compared by what they
    pickle to (``==`` cannot tell ``False`` from ``0``, nor compare recursive objects)."""
    assert len(got) == len(pickles)
    for i, (obj, data) in enumerate(zip(got, pickles, strict=True)):
        assert pickle.dumps(obj, 5) == pickle.dumps(pickle.loads(data), 5), f"object {i}"


# ---------------------------------------------------------------------------------------------
# The registry's types.


@dataclass(frozen=True)
class Env:
    """What makers may need: a directory for files, and TLS contexts (server, client)."""

    tmp_path: Path
    tls: tuple[ssl.SSLContext, ssl.SSLContext]
    _names: itertools.count[int] = field(default_factory=itertools.count)

    def new_path(self) -> Path:
        """A path in *tmp_path* no maker has used yet."""
        return self.tmp_path / f"stream-{next(self._names)}.pickle"


@dataclass
class Ends:
    """One connection of a byte kind, as the kit uses it.

    *writer* is what `adump` is given and *reader* what `aload` is given; *send* writes raw
    bytes through the writer (its own API), *finish* ends the stream after what was written
    (EOF, or a close where the kind has no half-close). A sequential kind sets *reader* in
    *finish*: it can only be opened once the writer is done (a file written, then read)."""

    writer: AsyncWriter
    send: Callable[[bytes], Awaitable[Any]]
    finish: Callable[[], Awaitable[Any]]
    reader: AsyncReader | None = None


#: The kit's items, by the names `Known` entries use.
BYTE_ITEMS = (
    "round_trip", "back_to_back", "trickle", "trickle_pieces", "truncation", "cancel_aload",
    "cancel_adump", "leftovers",
)  # fmt: skip
OBJECT_ITEMS = (
    "round_trip", "back_to_back", "trickle", "trickle_pieces", "truncation", "cancel_receive",
    "cancel_send", "leftovers", "handover",
)  # fmt: skip


@dataclass(frozen=True)
class Known:
    """A kit item a kind fails today, and why (a strict xfail: fixing it must be noticed)."""

    reason: str
    raises: type[BaseException] | tuple[type[BaseException], ...] | None = None


@dataclass(frozen=True)
class ByteKind:
    """A kind of byte stream: *maker* opens one connection (see `Ends`) for one check."""

    name: str
    backends: tuple[str, ...]
    maker: Callable[[Env], AbstractAsyncContextManager[Ends]]
    sequential: bool = False
    known: Mapping[str, Known] = field(default_factory=dict)  # kit item -> limitation


Pair = tuple[streampickle.PickleStream, streampickle.PickleStream]


@dataclass(frozen=True)
class ObjectKind:
    """`PickleStream` over some transport: *maker* opens (sender, receiver) at a protocol."""

    name: str
    backends: tuple[str, ...]
    maker: Callable[[Env, int], AbstractAsyncContextManager[Pair]]
    known: Mapping[str, Known] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Makers.


def loopback_sockets(family: socket.AddressFamily) -> tuple[socket.socket, socket.socket]:
    """A connected (client, server) pair of stdlib sockets: TCP on loopback, or Unix."""
    if family == socket.AF_UNIX:
        return socket.socketpair(socket.AF_UNIX)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return client, server


def anyio_ends(writer: Any, reader: AsyncReader) -> Ends:
    """`Ends` for an anyio ``ByteStream`` writer (it half-closes with ``send_eof``)."""
    return Ends(writer, writer.send, writer.send_eof, reader)


@asynccontextmanager
async def anyio_tcp(env: Env) -> AsyncIterator[Ends]:
    async with tcp_pair() as (client, server):
        yield anyio_ends(client, server)


@asynccontextmanager
async def anyio_buffered(env: Env) -> AsyncIterator[Ends]:
    async with tcp_pair() as (client, server):
        yield anyio_ends(client, BufferedByteReceiveStream(server))


@asynccontextmanager
async def anyio_unix(env: Env) -> AsyncIterator[Ends]:
    client_sock, server_sock = loopback_sockets(socket.AF_UNIX)
    client = await UNIXSocketStream.from_socket(client_sock)
    server = await UNIXSocketStream.from_socket(server_sock)
    async with client, server:
        yield anyio_ends(client, server)


@asynccontextmanager
async def anyio_tls(env: Env) -> AsyncIterator[Ends]:
    """TLS over TCP. The writer ends the stream by half-closing TCP, which the reading end
    takes as the end of the stream (standard_compatible=False): a close_notify exchange would
    need the reading end to answer, and closing the writer's socket could reset the connection
    (the server's session tickets are left unread there)."""
    server_context, client_context = env.tls
    servers: list[TLSStream] = []

    async def accept(raw: SocketStream) -> None:
        tls = await TLSStream.wrap(
            raw, server_side=True, ssl_context=server_context, standard_compatible=False
        )
        servers.append(tls)

    async with tcp_pair() as (client_raw, server_raw):
        async with anyio.create_task_group() as group:
            group.start_soon(accept, server_raw)
            client = await TLSStream.wrap(
                client_raw,
                hostname="localhost",
                ssl_context=client_context,
                standard_compatible=False,
            )
        yield Ends(client, client.send, client_raw.send_eof, servers[0])


@asynccontextmanager
async def anyio_memory(env: Env) -> AsyncIterator[Ends]:
    """An anyio memory object stream: adump sends it bytes; aload reads it through
    ``BufferedByteReceiveStream``."""
    send, receive = anyio.create_memory_object_stream[bytes](4)
    async with send, receive:
        yield Ends(send, send.send, send.aclose, BufferedByteReceiveStream(receive))


@asynccontextmanager
async def anyio_memory_objects(env: Env) -> AsyncIterator[Ends]:
    """An anyio memory object stream of bytes on both ends: aload reads its items as chunks."""
    send, receive = anyio.create_memory_object_stream[bytes](4)
    async with send, receive:
        yield Ends(send, send.send, send.aclose, receive)


@asynccontextmanager
async def async_iterable(env: Env) -> AsyncIterator[Ends]:
    """A plain async iterable of chunks (as httpx's aiter_bytes() and Starlette's
    request.stream() are): an async generator over a memory object stream."""
    send, receive = anyio.create_memory_object_stream[bytes](4)

    async def chunks() -> AsyncIterator[bytes]:
        async for chunk in receive:
            yield chunk

    async with send, receive:
        iterator = chunks()
        yield Ends(send, send.send, send.aclose, iterator)
        await iterator.aclose()  # type: ignore[attr-defined]


@asynccontextmanager
async def websocket(env: Env) -> AsyncIterator[Ends]:
    """A websockets connection: adump sends each chunk as a binary message to the server's
    connection, which aload reads as a stream of messages; the client's close ends it."""
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import ServerConnection, serve

    accepted: asyncio.Queue[ServerConnection] = asyncio.Queue()
    done = asyncio.Event()

    async def handler(connection: ServerConnection) -> None:
        await accepted.put(connection)
        await done.wait()

    async with serve(handler, "127.0.0.1", 0, max_size=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", max_size=None) as client:
            reader = await accepted.get()
            yield Ends(client, client.send, client.close, reader)
            done.set()


@asynccontextmanager
async def fsspec_http(env: Env) -> AsyncIterator[Ends]:
    """An fsspec async file: ``HTTPFileSystem(asynchronous=True).open_async(url, "rb")`` (an
    ``AbstractAsyncStreamedFile``, an ``io.IOBase`` whose read is a coroutine) on a download
    from a local aiohttp server, which streams, chunked, what is sent to an anyio memory object
    stream. fsspec opens such files for reading only, so adump writes that memory stream (as
    in `async_iterable`). open_async first asks for the size (a HEAD, then a GET it does not
    read): those get an empty answer; the file's own GET, at its first read, gets the stream."""
    from aiohttp import web
    from fsspec.implementations.http import HTTPFileSystem

    send, receive = anyio.create_memory_object_stream[bytes](4)
    opened = anyio.Event()

    async def download(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        with contextlib.suppress(ConnectionResetError):  # the file was closed before the end
            if request.method == "GET" and opened.is_set():
                async for chunk in receive:
                    await response.write(chunk)
            await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/stream", download)
    # Closed in reverse: the file, the client session, the writer's end (the handler's
    # stream ends), the server, the reader's end.
    async with AsyncExitStack() as stack:
        stack.push_async_callback(receive.aclose)
        runner, port = await aiohttp_server(app, shutdown_timeout=0)
        stack.push_async_callback(runner.cleanup)
        stack.push_async_callback(send.aclose)
        fs = HTTPFileSystem(asynchronous=True, skip_instance_cache=True)
        stack.push_async_callback((await fs.set_session()).close)
        file = await fs.open_async(f"http://127.0.0.1:{port}/stream", "rb")
        stack.push_async_callback(file.close)
        opened.set()
        yield Ends(send, send.send, send.aclose, file)


@asynccontextmanager
async def anyio_process(env: Env) -> AsyncIterator[Ends]:
    """``cat`` as a subprocess: adump writes its stdin, aload reads its stdout."""
    async with await anyio.open_process([cat()]) as process:
        assert process.stdin is not None and process.stdout is not None
        yield Ends(process.stdin, process.stdin.send, process.stdin.aclose, process.stdout)


def cat() -> str:
    path = shutil.which("cat")
    assert path is not None, "the subprocess kinds need cat"
    return path


@asynccontextmanager
async def anyio_file(env: Env) -> AsyncIterator[Ends]:
    """An anyio ``AsyncFile``: written, closed, then opened for reading."""
    path = env.new_path()
    async with AsyncExitStack() as stack:
        file = await stack.enter_async_context(await anyio.open_file(path, "wb"))

        async def finish() -> None:
            await file.aclose()
            ends.reader = await stack.enter_async_context(await anyio.open_file(path, "rb"))

        ends = Ends(file, file.write, finish)
        yield ends


@asynccontextmanager
async def aiofiles_file(env: Env) -> AsyncIterator[Ends]:
    """An aiofiles binary file: written, closed, then opened for reading."""
    path = env.new_path()
    async with AsyncExitStack() as stack:
        file = await stack.enter_async_context(aiofiles.open(path, "wb"))

        async def finish() -> None:
            await file.close()
            ends.reader = await stack.enter_async_context(aiofiles.open(path, "rb"))

        ends = Ends(file, file.write, finish)
        yield ends


@asynccontextmanager
async def anyio_file_pipe(env: Env) -> AsyncIterator[Ends]:
    """An OS pipe, both ends opened as anyio ``AsyncFile`` (the write end unbuffered, so that
    what is written is in the pipe): a file that cannot seek, read exactly."""
    read_fd, write_fd = os.pipe()
    async with (
        await anyio.open_file(write_fd, "wb", buffering=0) as sink,
        await anyio.open_file(read_fd, "rb") as source,
    ):
        yield Ends(sink, sink.write, sink.aclose, source)


def asyncio_ends(writer: asyncio.StreamWriter, reader: AsyncReader, *, half_close: bool) -> Ends:
    """`Ends` for an asyncio ``StreamWriter``: it ends with ``write_eof`` or, where the
    transport cannot half-close (TLS, pipes), ``close``."""

    async def send(data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    async def finish() -> None:
        if half_close:
            writer.write_eof()
        else:
            writer.close()

    return Ends(writer, send, finish, reader)


async def close_all(*writers: asyncio.StreamWriter) -> None:
    """Close asyncio writers and wait until their transports are closed."""
    for writer in writers:
        writer.close()
    for writer in writers:
        with contextlib.suppress(OSError, ssl.SSLError):  # a reset connection is closed too
            await writer.wait_closed()


@asynccontextmanager
async def asyncio_socket(family: socket.AddressFamily, limit: int = 1 << 16) -> AsyncIterator[Ends]:
    client_sock, server_sock = loopback_sockets(family)
    _, writer = await asyncio.open_connection(sock=client_sock)
    reader, server_writer = await asyncio.open_connection(sock=server_sock, limit=limit)
    try:
        yield asyncio_ends(writer, reader, half_close=True)
    finally:
        await close_all(writer, server_writer)


def asyncio_tcp(env: Env) -> AbstractAsyncContextManager[Ends]:
    return asyncio_socket(socket.AF_INET)


def asyncio_tcp_small_limit(env: Env) -> AbstractAsyncContextManager[Ends]:
    """A StreamReader whose buffer limit (64 bytes) is shorter than protocol 0's lines."""
    return asyncio_socket(socket.AF_INET, limit=64)


def asyncio_unix(env: Env) -> AbstractAsyncContextManager[Ends]:
    return asyncio_socket(socket.AF_UNIX)


@asynccontextmanager
async def asyncio_tls(env: Env) -> AsyncIterator[Ends]:
    """asyncio streams over TLS (no half-close in TLS: the writer closes)."""
    server_context, client_context = env.tls
    accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accepted.put((reader, writer))

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_context)
    async with server:
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_context, server_hostname="localhost"
        )
        reader, server_writer = await accepted.get()
        try:
            yield asyncio_ends(writer, reader, half_close=False)
        finally:
            await close_all(writer, server_writer)


@asynccontextmanager
async def asyncio_os_pipe(env: Env) -> AsyncIterator[Ends]:
    async with asyncio_pipe() as (reader, writer):
        yield asyncio_ends(writer, reader, half_close=False)


@asynccontextmanager
async def asyncio_process(env: Env) -> AsyncIterator[Ends]:
    """``cat`` as an asyncio subprocess: its stdin's StreamWriter, its stdout's StreamReader."""
    process = await asyncio.create_subprocess_exec(
        cat(), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        yield asyncio_ends(process.stdin, process.stdout, half_close=False)
    finally:
        process.stdin.close()
        if process.returncode is None:  # a check that stopped reading early: cat may block
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        await process.wait()


@asynccontextmanager
async def trio_tcp(env: Env) -> AsyncIterator[Ends]:
    client_sock, server_sock = loopback_sockets(socket.AF_INET)
    client = trio.SocketStream(trio.socket.from_stdlib_socket(client_sock))
    server = trio.SocketStream(trio.socket.from_stdlib_socket(server_sock))
    async with client, server:
        yield Ends(client, client.send_all, client.send_eof, server)


@asynccontextmanager
async def trio_tls(env: Env) -> AsyncIterator[Ends]:
    """trio.SSLStream over TCP; the writer ends the stream by half-closing TCP, which the
    reading end takes as the end (https_compatible=True), as in `anyio_tls`."""
    server_context, client_context = env.tls
    client_sock, server_sock = loopback_sockets(socket.AF_INET)
    client_raw = trio.SocketStream(trio.socket.from_stdlib_socket(client_sock))
    server_raw = trio.SocketStream(trio.socket.from_stdlib_socket(server_sock))
    client = trio.SSLStream(
        client_raw, client_context, server_hostname="localhost", https_compatible=True
    )
    server = trio.SSLStream(server_raw, server_context, server_side=True, https_compatible=True)
    async with client_raw, server_raw:
        async with anyio.create_task_group() as group:
            group.start_soon(server.do_handshake)
            await client.do_handshake()
        yield Ends(client, client.send_all, client_raw.send_eof, server)


@asynccontextmanager
async def trio_memory(env: Env) -> AsyncIterator[Ends]:
    """trio.testing.memory_stream_pair: an unbounded in-memory buffer each way."""
    left, right = trio.testing.memory_stream_pair()
    async with left, right:
        yield Ends(left, left.send_all, left.send_eof, right)


@asynccontextmanager
async def trio_lockstep(env: Env) -> AsyncIterator[Ends]:
    """trio.testing.lockstep_stream_pair: no buffer, send_all returns once it was received."""
    left, right = trio.testing.lockstep_stream_pair()
    async with left, right:
        yield Ends(left, left.send_all, left.send_eof, right)


@asynccontextmanager
async def trio_pipe(env: Env) -> AsyncIterator[Ends]:
    read_fd, write_fd = os.pipe()
    async with trio.lowlevel.FdStream(write_fd) as sink, trio.lowlevel.FdStream(read_fd) as src:
        yield Ends(sink, sink.send_all, sink.aclose, src)


# ---------------------------------------------------------------------------------------------
# The registry.

BYTE_KINDS = [
    ByteKind("anyio-tcp", ANY, anyio_tcp),
    ByteKind("anyio-tls", ANY, anyio_tls),
    ByteKind("anyio-unix", ANY, anyio_unix),
    ByteKind("anyio-buffered-tcp", ANY, anyio_buffered),
    ByteKind("anyio-memory", ANY, anyio_memory),
    ByteKind("anyio-memory-objects", ANY, anyio_memory_objects),
    ByteKind("async-iterable", ANY, async_iterable),
    ByteKind("websocket", ASYNCIO, websocket),
    ByteKind("fsspec-http", ASYNCIO, fsspec_http),
    ByteKind("anyio-process", ANY, anyio_process),
    ByteKind("anyio-file", ANY, anyio_file, sequential=True),
    ByteKind("anyio-file-pipe", ANY, anyio_file_pipe),
    ByteKind("asyncio-tcp", ASYNCIO, asyncio_tcp),
    ByteKind("asyncio-tcp-limit-64", ASYNCIO, asyncio_tcp_small_limit),
    ByteKind("asyncio-tls", ASYNCIO, asyncio_tls),
    ByteKind("asyncio-unix", ASYNCIO, asyncio_unix),
    ByteKind("asyncio-pipe", ASYNCIO, asyncio_os_pipe),
    ByteKind("asyncio-process", ASYNCIO, asyncio_process),
    ByteKind("aiofiles", ASYNCIO, aiofiles_file, sequential=True),
    ByteKind("trio-tcp", TRIO, trio_tcp),
    ByteKind(
        "trio-tls",
        TRIO,
        trio_tls,
        known={
            "back_to_back": Known(
                "trio.SSLStream (https_compatible) breaks itself at a TCP end without "
                "close_notify: receive_some returns b'' once, then raises BrokenResourceError, "
                "so an aload after aiter_load ended raises that instead of EOFError",
                raises=trio.BrokenResourceError,
            )
        },
    ),
    ByteKind("trio-memory", TRIO, trio_memory),
    ByteKind("trio-lockstep", TRIO, trio_lockstep),
    ByteKind("trio-pipe", TRIO, trio_pipe),
]


@asynccontextmanager
async def pickle_stream_tcp(env: Env, protocol: int) -> AsyncIterator[Pair]:
    async with tcp_pair() as (client, server):
        yield (
            streampickle.PickleStream(client, protocol=protocol),
            streampickle.PickleStream(server, protocol=protocol),
        )


@asynccontextmanager
async def pickle_stream_asyncio(env: Env, protocol: int) -> AsyncIterator[Pair]:
    client_sock, server_sock = loopback_sockets(socket.AF_INET)
    client = await asyncio.open_connection(sock=client_sock)
    server = await asyncio.open_connection(sock=server_sock)
    try:
        yield (
            streampickle.PickleStream.from_asyncio(*client, protocol=protocol),
            streampickle.PickleStream.from_asyncio(*server, protocol=protocol),
        )
    finally:
        await close_all(client[1], server[1])


@asynccontextmanager
async def pickle_stream_trio(env: Env, protocol: int) -> AsyncIterator[Pair]:
    async with trio_tcp(env) as ends:
        assert isinstance(ends.reader, trio.SocketStream)
        yield (
            streampickle.PickleStream.from_trio(ends.writer, protocol=protocol),
            streampickle.PickleStream.from_trio(ends.reader, protocol=protocol),
        )


@asynccontextmanager
async def pickle_stream_websocket(env: Env, protocol: int) -> AsyncIterator[Pair]:
    async with websocket(env) as ends:
        yield (
            streampickle.PickleStream.from_websocket(ends.writer, protocol=protocol),
            streampickle.PickleStream.from_websocket(ends.reader, protocol=protocol),
        )


OBJECT_KINDS = [
    ObjectKind("pickle-stream-tcp", ANY, pickle_stream_tcp),
    ObjectKind("pickle-stream-websocket", ASYNCIO, pickle_stream_websocket),
    ObjectKind("pickle-stream-asyncio", ASYNCIO, pickle_stream_asyncio),
    ObjectKind("pickle-stream-trio", TRIO, pickle_stream_trio),
]


# ---------------------------------------------------------------------------------------------
# The kit: byte kinds.


async def exchange(
    kind: ByteKind,
    env: Env,
    write: Callable[[Ends], Awaitable[None]],
    read: Callable[[Any], Awaitable[T]],
) -> T:
    """On a new connection of *kind*: ``write(ends)``, then ``ends.finish()``, while (or, for
    a sequential kind, after which) ``read(reader)`` runs; return what *read* returns, raise
    what it raises. Never waits longer than `HANG_GUARD`."""
    with anyio.fail_after(HANG_GUARD):
        async with kind.maker(env) as ends:
            if kind.sequential:
                await write(ends)
                await ends.finish()
                return await read(ends.reader)
            return await _concurrently(ends, write, read)


async def _concurrently(
    ends: Ends, write: Callable[[Ends], Awaitable[None]], read: Callable[[Any], Awaitable[T]]
) -> T:
    results: list[T] = []
    errors: list[Exception] = []
    async with anyio.create_task_group() as group:

        async def produce() -> None:
            await write(ends)
            await ends.finish()

        group.start_soon(produce)
        try:
            results.append(await read(ends.reader))
        except Exception as exc:  # raised below as itself, not in an exception group
            errors.append(exc)
            group.cancel_scope.cancel()
    if errors:
        raise errors[0]
    return results[0]


def sender(data: bytes) -> Callable[[Ends], Awaitable[None]]:
    """A *write* for `exchange` that sends *data* raw (nothing if it is empty)."""

    async def write(ends: Ends) -> None:
        if data:
            await ends.send(data)

    return write


async def trickle(ends: Ends, pieces: list[bytes]) -> None:
    """Send *pieces* one by one, letting the reader run between them (asyncio's ``drain()``
    does not yield while the transport is not paused)."""
    for piece in pieces:
        await ends.send(piece)
        await anyio.lowlevel.checkpoint()


async def check_round_trip(kind: ByteKind, env: Env, protocol: int) -> None:
    """`adump` then `aload` give back what ``pickle.loads(pickle.dumps(obj))`` does; `adump`
    wrote, and the loader read, exactly as many bytes as ``pickle.dumps`` makes."""
    obj = corpus_object(protocol)
    expected = pickle.dumps(obj, protocol)
    counts: list[int] = []

    async def write(ends: Ends) -> None:
        assert await streampickle.adump(obj, ends.writer, protocol) == len(expected)

    async def read(reader: Any) -> Any:
        return await streampickle.aload(reader, progress=counts.append)

    assert_loads_like([await exchange(kind, env, write, read)], [expected])
    assert counts[-1] == len(expected)


BACK_TO_BACK = [(corpus_object(p), p) for p in PROTOCOLS] + [(FRAMED, 5), (None, 2), (FRAMED, 4)]


async def check_back_to_back(kind: ByteKind, env: Env) -> None:
    """Several `adump` calls, then `aload` several times and `aiter_load` for the rest; at the
    end of the stream `aiter_load` stops and `aload` raises ``EOFError`` (as ``pickle.load``)."""

    async def write(ends: Ends) -> None:
        for obj, protocol in BACK_TO_BACK:
            await streampickle.adump(obj, ends.writer, protocol)

    async def read(reader: Any) -> list[Any]:
        got = [await streampickle.aload(reader) for _ in range(3)]
        got += [obj async for obj in streampickle.aiter_load(reader)]
        with pytest.raises(EOFError):
            await streampickle.aload(reader)
        return got

    got = await exchange(kind, env, write, read)
    assert_loads_like(got, [pickle.dumps(obj, protocol) for obj, protocol in BACK_TO_BACK])


async def check_trickle(kind: ByteKind, env: Env, protocol: int) -> None:
    """The pickle's bytes sent one at a time: the reader still gets the object, and only it."""
    data = pickle.dumps(TRICKLE, protocol)

    async def write(ends: Ends) -> None:
        await trickle(ends, [data[i : i + 1] for i in range(len(data))])

    async def read(reader: Any) -> list[Any]:
        return [obj async for obj in streampickle.aiter_load(reader)]

    assert_loads_like(await exchange(kind, env, write, read), [data])


def random_pieces(data: bytes, rng: random.Random) -> list[bytes]:
    """*data* cut into pieces of random sizes, mostly tiny."""
    pieces, start = [], 0
    while start < len(data):
        size = rng.choice((1, 2, 3, 5, 8, 13, 100, 1000, 4096))
        pieces.append(data[start : start + size])
        start += size
    return pieces


PIECES = [(FRAMED, 5), (TRICKLE, 2), (FRAMED, 4)]


async def check_trickle_pieces(kind: ByteKind, env: Env) -> None:
    """Multi-frame pickles (protocols 4, 5) and a small one (2) sent in tiny random pieces
    (seeded by the kind's name, so a failure replays)."""
    pickles = [pickle.dumps(obj, protocol) for obj, protocol in PIECES]
    pieces = random_pieces(b"".join(pickles), random.Random(kind.name))

    async def write(ends: Ends) -> None:
        await trickle(ends, pieces)

    async def read(reader: Any) -> list[Any]:
        return [obj async for obj in streampickle.aiter_load(reader)]

    assert_loads_like(await exchange(kind, env, write, read), pickles)


async def check_truncation(kind: ByteKind, env: Env, protocol: int) -> None:
    """Every proper prefix of a small pickle, then end of stream: ``UnpicklingError`` or
    ``EOFError`` (``EOFError`` for the empty stream), never a hang or another error."""
    data = pickle.dumps(TRUNCATE, protocol)

    async def read(reader: Any) -> None:
        with pytest.raises((pickle.UnpicklingError, EOFError)) as info:
            await streampickle.aload(reader)
        if not prefix:
            assert info.type is EOFError

    for end in range(len(data)):
        prefix = data[:end]
        await exchange(kind, env, sender(prefix), read)


async def check_cancel_aload(kind: ByteKind, env: Env, greenlets: GreenletLedger) -> None:
    """`aload` cancelled half-way through a pickle (once its first frame was read, the rest of
    the pickle not sent): the cancellation is what `aload` raises, and its unpickler is
    already unwound while that exception propagates."""
    alive: list[int] = []
    with anyio.fail_after(HANG_GUARD):
        async with kind.maker(env) as ends, anyio.create_task_group() as group:
            if kind.sequential:
                await ends.send(FRAMED_5[:CANCEL_CUT])
                await ends.finish()
            else:

                async def send_and_hold() -> None:
                    await ends.send(FRAMED_5[:CANCEL_CUT])
                    await anyio.sleep_forever()

                group.start_soon(send_and_hold)
            reader = ends.reader
            assert reader is not None
            with anyio.CancelScope() as scope:
                try:
                    await streampickle.aload(reader, progress=cancel_at(scope, CANCEL_AT))
                except anyio.get_cancelled_exc_class():
                    alive.append(greenlets.live())
                    raise
            group.cancel_scope.cancel()
    assert scope.cancelled_caught
    assert alive == [greenlets.baseline]


async def check_cancel_adump(kind: ByteKind, env: Env, greenlets: GreenletLedger) -> None:
    """`adump` cancelled after its first write (at its own checkpoint): the cancellation is
    what it raises, its pickler is already unwound while that propagates, and the reader,
    once the stream ends, gets ``UnpicklingError`` or ``EOFError`` for the partial pickle.

    A first, whole pickle goes before, so the reader's `aiter_load` is inside its next load
    when the cut comes. Only greenlets inside a pickler's write are counted: the reader's
    unpickler starts once its first frames arrive (`streampickle._load.WHOLE_MAX`), before
    or after the cancellation, whatever the kind."""
    first = anyio.Event()
    alive: list[int] = []
    caught: list[bool] = []

    async def write(ends: Ends) -> None:
        await ends.send(pickle.dumps(None, 5))
        if not kind.sequential:
            await first.wait()
        with anyio.CancelScope() as scope:
            try:
                await streampickle.adump(FRAMED, ends.writer, 5, progress=lambda _: scope.cancel())
            except anyio.get_cancelled_exc_class():
                alive.append(greenlets.dumping())
                raise
        caught.append(scope.cancelled_caught)

    async def read(reader: Any) -> Any:
        objs = streampickle.aiter_load(reader)
        got = await anext(objs)
        first.set()  # and on into the next load, in this same step
        with pytest.raises((pickle.UnpicklingError, EOFError)):
            await anext(objs)
        return got

    assert await exchange(kind, env, write, read) is None
    assert caught == [True]
    assert alive == [0]  # no pickler left suspended


#: Pickles at every protocol, told apart by their contents.
LEFTOVERS = [pickle.dumps({"protocol": p, "data": TRICKLE}, p) for p in PROTOCOLS]


async def check_leftovers(kind: ByteKind, env: Env) -> None:
    """Pickles at protocols 0-5 sent in one piece: each `aload` gets the next one, whatever
    the one before read ahead; then ``EOFError``."""

    async def read(reader: Any) -> list[Any]:
        got = [await streampickle.aload(reader) for _ in LEFTOVERS]
        with pytest.raises(EOFError):
            await streampickle.aload(reader)
        return got

    assert_loads_like(await exchange(kind, env, sender(b"".join(LEFTOVERS)), read), LEFTOVERS)


# ---------------------------------------------------------------------------------------------
# The kit: object kinds (PickleStream). The same items; its errors are anyio's (EndOfStream at
# a clean end, BrokenResourceError for a stream that ends inside an object or after a cancel).


async def object_exchange(
    kind: ObjectKind,
    env: Env,
    write: Callable[[streampickle.PickleStream], Awaitable[None]],
    read: Callable[[streampickle.PickleStream], Awaitable[T]],
    protocol: int = 5,
) -> T:
    """As `exchange`: ``write(sender)`` then ``sender.send_eof()``, while ``read(receiver)``."""
    with anyio.fail_after(HANG_GUARD):
        async with kind.maker(env, protocol) as (left, right):

            async def write_ends(ends: Ends) -> None:
                await write(left)

            ends = Ends(left, left.send, left.send_eof, right)
            return await _concurrently(ends, write_ends, read)


def raw_sender(data: bytes) -> Callable[[streampickle.PickleStream], Awaitable[None]]:
    """A *write* that sends *data* raw through the PickleStream's transport."""

    async def write(stream: streampickle.PickleStream) -> None:
        if data:
            await stream.transport_stream.send(data)

    return write


async def receive_all(stream: streampickle.PickleStream) -> list[Any]:
    """Every object until the end of the stream (iteration stops at ``EndOfStream``)."""
    return [obj async for obj in stream]


async def check_object_round_trip(kind: ObjectKind, env: Env, protocol: int) -> None:
    """``send`` then ``receive`` (streams at *protocol*) give back what ``pickle.loads`` makes
    of ``pickle.dumps(obj)``; both ends count exactly as many bytes as it has."""
    obj = corpus_object(protocol)
    expected = pickle.dumps(obj, protocol)
    sent: list[int] = []
    received: list[int] = []

    async def write(stream: streampickle.PickleStream) -> None:
        await stream.send(obj, progress=sent.append)

    async def read(stream: streampickle.PickleStream) -> Any:
        return await stream.receive(progress=received.append)

    assert_loads_like([await object_exchange(kind, env, write, read, protocol)], [expected])
    assert sent[-1] == received[-1] == len(expected)


async def check_object_back_to_back(kind: ObjectKind, env: Env) -> None:
    """Several ``send`` calls, then ``receive`` and iteration for the rest; then ``EndOfStream``."""
    objs = [corpus_object(p) for p in PROTOCOLS] + [FRAMED, None]

    async def write(stream: streampickle.PickleStream) -> None:
        for obj in objs:
            await stream.send(obj)

    async def read(stream: streampickle.PickleStream) -> list[Any]:
        got = [await stream.receive() for _ in range(3)]
        got += await receive_all(stream)
        with pytest.raises(anyio.EndOfStream):
            await stream.receive()
        return got

    got = await object_exchange(kind, env, write, read)
    assert_loads_like(got, [pickle.dumps(obj, 5) for obj in objs])


async def check_object_trickle(kind: ObjectKind, env: Env, protocol: int) -> None:
    """A pickle's bytes sent raw, one at a time: the receiver still gets the one object."""
    data = pickle.dumps(TRICKLE, protocol)

    async def write(stream: streampickle.PickleStream) -> None:
        for i in range(len(data)):
            await stream.transport_stream.send(data[i : i + 1])
            await anyio.lowlevel.checkpoint()

    assert_loads_like(await object_exchange(kind, env, write, receive_all), [data])


async def check_object_trickle_pieces(kind: ObjectKind, env: Env) -> None:
    """Multi-frame pickles and a small one sent raw in tiny random pieces."""
    pickles = [pickle.dumps(obj, protocol) for obj, protocol in PIECES]
    pieces = random_pieces(b"".join(pickles), random.Random(kind.name))

    async def write(stream: streampickle.PickleStream) -> None:
        for piece in pieces:
            await stream.transport_stream.send(piece)
            await anyio.lowlevel.checkpoint()

    assert_loads_like(await object_exchange(kind, env, write, receive_all), pickles)


async def check_object_truncation(kind: ObjectKind, env: Env, protocol: int) -> None:
    """Each proper prefix, then end of stream: ``EndOfStream`` for the empty one (a clean end
    between objects), ``BrokenResourceError`` for the others (it ended inside an object)."""
    data = pickle.dumps(TRUNCATE, protocol)

    async def read(stream: streampickle.PickleStream) -> None:
        with pytest.raises(anyio.BrokenResourceError if prefix else anyio.EndOfStream):
            await stream.receive()

    for end in range(len(data)):
        prefix = data[:end]
        await object_exchange(kind, env, raw_sender(prefix), read, protocol)


async def check_object_cancel_receive(
    kind: ObjectKind, env: Env, greenlets: GreenletLedger
) -> None:
    """``receive`` cancelled half-way through an object: the cancellation is raised, nothing
    is left running, and the stream is then broken for receiving."""
    alive: list[int] = []
    with anyio.fail_after(HANG_GUARD):
        async with kind.maker(env, 5) as (left, right), anyio.create_task_group() as group:

            async def send_and_hold() -> None:
                await left.transport_stream.send(FRAMED_5[:CANCEL_CUT])
                await anyio.sleep_forever()

            group.start_soon(send_and_hold)
            with anyio.CancelScope() as scope:
                try:
                    await right.receive(progress=cancel_at(scope, CANCEL_AT))
                except anyio.get_cancelled_exc_class():
                    alive.append(greenlets.live())
                    raise
            group.cancel_scope.cancel()
            assert scope.cancelled_caught
            with pytest.raises(anyio.BrokenResourceError, match="inside an object"):
                await right.receive()
    assert alive == [greenlets.baseline]


async def check_object_cancel_send(kind: ObjectKind, env: Env, greenlets: GreenletLedger) -> None:
    """``send`` cancelled after its first write: the cancellation is raised, nothing is left
    running, later sends raise ``BrokenResourceError``, and so does the peer's receive."""
    alive: list[int] = []
    caught: list[bool] = []

    async def write(stream: streampickle.PickleStream) -> None:
        await anyio.wait_all_tasks_blocked()  # the receiver waits for bytes
        with anyio.CancelScope() as scope:
            try:
                await stream.send(FRAMED, progress=lambda _: scope.cancel())
            except anyio.get_cancelled_exc_class():
                alive.append(greenlets.dumping())
                raise
        caught.append(scope.cancelled_caught)
        with pytest.raises(anyio.BrokenResourceError, match="half-way"):
            await stream.send(1)

    async def read(stream: streampickle.PickleStream) -> None:
        with pytest.raises(anyio.BrokenResourceError, match="ended inside a pickle"):
            await stream.receive()

    await object_exchange(kind, env, write, read)
    assert caught == [True]
    assert alive == [0]  # no pickler left suspended


async def check_object_leftovers(kind: ObjectKind, env: Env) -> None:
    """Pickles at protocols 0-5 sent raw in one piece: one ``receive`` each (what one read
    ahead stays in the stream's buffer for the next), then ``EndOfStream``."""

    async def read(stream: streampickle.PickleStream) -> list[Any]:
        got = [await stream.receive() for _ in LEFTOVERS]
        with pytest.raises(anyio.EndOfStream):
            await stream.receive()
        return got

    got = await object_exchange(kind, env, raw_sender(b"".join(LEFTOVERS)), read)
    assert_loads_like(got, LEFTOVERS)


def fresh(stream: streampickle.PickleStream) -> streampickle.PickleStream:
    """A new `PickleStream` over the user's stream under *stream*, as a user who makes one
    per message would: ``from_asyncio(reader, writer)`` again, and so on."""
    transport: Any = stream.transport_stream
    if isinstance(transport, AsyncioByteStream):
        return streampickle.PickleStream.from_asyncio(transport.reader, transport.writer)
    if isinstance(transport, TrioByteStream):
        return streampickle.PickleStream.from_trio(transport.stream)
    if isinstance(transport, WebSocketByteStream):
        return streampickle.PickleStream.from_websocket(transport.connection)
    return streampickle.PickleStream(transport)


def user_reader(stream: streampickle.PickleStream) -> Any:
    """The stream object under *stream* that a user would give ``aload``."""
    transport: Any = stream.transport_stream
    if isinstance(transport, AsyncioByteStream):
        return transport.reader
    if isinstance(transport, TrioByteStream):
        return transport.stream
    if isinstance(transport, WebSocketByteStream):
        return transport.connection
    return transport


async def check_object_handover(kind: ObjectKind, env: Env) -> None:
    """Pickles at protocols 0-5 sent raw in one piece, each read by another reader of the
    same stream: a new `PickleStream` over it, ``aload`` of it, the first one again. What
    one read ahead is there for the next (before, a new PickleStream per message silently
    skipped the objects the last one had read ahead: a wrong object, not an error)."""

    async def read(stream: streampickle.PickleStream) -> list[Any]:
        readers = [stream, fresh(stream), None, stream, fresh(stream), None]
        got = []
        for reader in readers[: len(LEFTOVERS)]:
            if reader is None:
                got.append(await streampickle.aload(user_reader(stream)))
            else:
                got.append(await reader.receive())
        with pytest.raises(anyio.EndOfStream):
            await fresh(stream).receive()
        return got

    got = await object_exchange(kind, env, raw_sender(b"".join(LEFTOVERS)), read)
    assert_loads_like(got, LEFTOVERS)
