"""`aload` on asyncio ``StreamReader``s: the paths that use the reader's internals.

Large payloads are received straight into their final buffer through a stand-in protocol
(`_DirectReceive`), and read-ahead bytes go back into the reader's buffer. Each test runs on
asyncio and on uvloop, over TCP, TLS, a Unix socket and a pipe (whose transport calls
``data_received``, not ``get_buffer``). The oracle is the standard library's ``pickle``.
"""

from __future__ import annotations

import asyncio
import pickle
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import numpy
import pytest

from netutil import asyncio_pipe
from streampickle import PickleStream, aiter_load, aload
from streampickle._adapters import _asyncio as _readers
from streampickle._adapters._asyncio import DIRECT_MIN, MAX_DIRECT
from streampickle._adapters._asyncio import StreamReaderSource as _StreamReaderSource

pytestmark = [pytest.mark.anyio, pytest.mark.backends("asyncio", "uvloop")]

HANG_GUARD = 30  # seconds; only so that a broken test fails instead of hanging CI
KINDS = ("tcp", "tls", "unix", "pipe")
TAIL = b"raw bytes after the last pickle"


def payloads() -> list[Any]:
    """Objects with payloads above `DIRECT_MIN` (one above `MAX_DIRECT`), between small ones."""
    return [
        {"small": [1, 2, 3]},
        b"b" * (2 * MAX_DIRECT),  # more than one direct piece
        numpy.arange(DIRECT_MIN, dtype=numpy.int16),  # 2 * DIRECT_MIN, as a PickleBuffer
        bytearray(b"q" * (DIRECT_MIN - 1)),  # just too small: through the reader's buffer
        "x" * 70_000,
        None,
    ]


def same(got: list[Any], expected: list[Any]) -> bool:
    """Equal objects, arrays included (compared by what they pickle to, one by one)."""
    dumps = [pickle.dumps(obj, 5) for obj in got], [pickle.dumps(obj, 5) for obj in expected]
    return dumps[0] == dumps[1]


@dataclass
class Connection:
    """The reader under test, its own writer (none on a pipe) and its peer's two ends."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter | None
    peer_reader: asyncio.StreamReader | None
    peer: asyncio.StreamWriter

    async def write(self, data: bytes) -> None:
        """Send *data* from the peer."""
        self.peer.write(data)
        await self.peer.drain()

    def finish(self, kind: str) -> None:
        """End the stream cleanly (TLS has no half-close: close it)."""
        if kind in ("tls", "pipe"):
            self.peer.close()
        else:
            self.peer.write_eof()

    @property
    def transport(self) -> Any:
        return self.reader._transport  # type: ignore[attr-defined]


@asynccontextmanager
async def connection(
    kind: str, tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext], tmp_path: Path
) -> AsyncIterator[Connection]:
    if kind == "pipe":
        async with asyncio_pipe() as (reader, peer):
            yield Connection(reader, None, None, peer)
        return
    peers: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await peers.put((reader, writer))

    server_context, client_context = tls_contexts
    if kind == "unix":
        path = str(tmp_path / "socket")
        server = await asyncio.start_unix_server(serve, path)
        reader, writer = await asyncio.open_unix_connection(path)
    else:
        tls = kind == "tls"
        server = await asyncio.start_server(
            serve, "localhost", 0, family=socket.AF_INET, ssl=server_context if tls else None
        )
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(
            "localhost", port, ssl=client_context if tls else None
        )
    peer_reader, peer = await peers.get()
    try:
        yield Connection(reader, writer, peer_reader, peer)
    finally:
        writer.close()
        peer.close()
        server.close()


@pytest.fixture
def direct_pieces(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the pieces received through `_DirectReceive`, as they complete."""
    sizes: list[int] = []
    original = _StreamReaderSource._receive_direct

    async def spy(self: _StreamReaderSource, transport: Any, view: memoryview) -> int:
        count = await original(self, transport, view)
        sizes.append(count)
        return count

    monkeypatch.setattr(_StreamReaderSource, "_receive_direct", spy)
    return sizes


async def test_internals_are_there(anyio_backend: Any, tls_contexts: Any, tmp_path: Path) -> None:
    """What the fast paths rely on is in this Python and this loop: if not, `aload` still
    works, through the public API, but the fast paths would silently be lost."""
    for kind in KINDS:
        async with connection(kind, tls_contexts, tmp_path) as conn:
            source = _StreamReaderSource(conn.reader)
            assert source.can_unread
            assert source._transport() is not None, kind


@pytest.mark.parametrize("kind", KINDS)
async def test_large_payloads_land_in_place(
    kind: str, anyio_backend: Any, tls_contexts: Any, tmp_path: Path, direct_pieces: list[int]
) -> None:
    objs = payloads()
    data = b"".join(pickle.dumps(obj, 5) for obj in objs) + TAIL
    async with connection(kind, tls_contexts, tmp_path) as conn:
        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as group:
                group.start_soon(conn.write, data)
                got = [await aload(conn.reader) for _ in objs]
                assert await conn.reader.readexactly(len(TAIL)) == TAIL
            protocol = conn.transport.get_protocol()
    assert same(got, objs)
    # What the reader had buffered when a payload began is copied from its buffer (a few MiB
    # at most: TLS hands over what it decrypted in one go);
    # the rest came in directly, in pieces of at most MAX_DIRECT. The reader has its
    # protocol back.
    assert max(direct_pieces) == MAX_DIRECT
    assert sum(direct_pieces) > MAX_DIRECT
    assert isinstance(protocol, asyncio.StreamReaderProtocol)


@pytest.mark.parametrize("kind", ["tcp", "tls", "unix"])
async def test_pickle_stream_from_asyncio(
    kind: str, anyio_backend: Any, tls_contexts: Any, tmp_path: Path, direct_pieces: list[int]
) -> None:
    objs = payloads()
    async with connection(kind, tls_contexts, tmp_path) as conn:
        assert conn.writer is not None
        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as group:
                group.start_soon(conn.write, b"".join(pickle.dumps(obj, 5) for obj in objs))
                async with PickleStream.from_asyncio(conn.reader, conn.writer) as stream:
                    got = [await stream.receive() for _ in objs]
    assert same(got, objs)
    assert sum(direct_pieces) > MAX_DIRECT


@pytest.mark.parametrize("kind", KINDS)
async def test_trickled_payload(
    kind: str, anyio_backend: Any, tls_contexts: Any, tmp_path: Path
) -> None:
    obj = [bytes(range(256)) * 4096, 7]  # 1 MiB, sent in odd pieces
    data = pickle.dumps(obj, 5) * 2
    async with connection(kind, tls_contexts, tmp_path) as conn:

        async def send() -> None:
            for start in range(0, len(data), 100_003):
                await conn.write(data[start : start + 100_003])
                await asyncio.sleep(0)
            conn.finish(kind)

        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as group:
                group.start_soon(send)
                assert [o async for o in aiter_load(conn.reader)] == [obj, obj]


@pytest.mark.parametrize("kind", KINDS)
async def test_end_inside_payload(
    kind: str, anyio_backend: Any, tls_contexts: Any, tmp_path: Path
) -> None:
    data = pickle.dumps(b"z" * (4 * DIRECT_MIN), 5)
    for lose in (False, True):
        async with connection(kind, tls_contexts, tmp_path) as conn:
            conn.peer.write(data[: 2 * DIRECT_MIN])  # buffered: nobody reads yet

            async def end(conn: Connection = conn, lose: bool = lose) -> None:
                await anyio.wait_all_tasks_blocked()
                conn.peer.transport.abort() if lose else conn.finish(kind)

            with anyio.fail_after(HANG_GUARD):
                async with anyio.create_task_group() as group:
                    group.start_soon(end)
                    with pytest.raises((pickle.UnpicklingError, EOFError, ConnectionError)):
                        await aload(conn.reader)


@pytest.mark.parametrize("kind", KINDS)
async def test_cancel_gives_the_reader_its_protocol_back(
    kind: str, anyio_backend: Any, tls_contexts: Any, tmp_path: Path
) -> None:
    data = pickle.dumps(b"z" * (4 * DIRECT_MIN), 5)
    async with connection(kind, tls_contexts, tmp_path) as conn:
        conn.peer.write(data[: 2 * DIRECT_MIN])  # buffered: nobody reads yet
        with anyio.fail_after(HANG_GUARD):
            with anyio.move_on_after(0.2) as scope:
                await aload(conn.reader)
            assert scope.cancelled_caught
            assert isinstance(conn.transport.get_protocol(), asyncio.StreamReaderProtocol)
            # what arrives now reaches the reader again
            await conn.write(b"after")
            received = b""
            while not received.endswith(b"after"):
                received += await conn.reader.read(1 << 20)


async def test_writer_flow_control_passes_through(
    anyio_backend: Any, tls_contexts: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``drain()`` on the reader's own connection, paused before a payload began, ends when
    the transport resumes writing during the payload: the stand-in passes that on."""
    data = pickle.dumps(b"p" * (4 * DIRECT_MIN), 5)
    outgoing = b"w" * (32 << 20)  # more than the socket buffers hold: writing pauses
    async with connection("tcp", tls_contexts, tmp_path) as conn:
        assert conn.writer is not None and conn.peer_reader is not None
        drained, stand_in = anyio.Event(), anyio.Event()
        loaded: list[Any] = []

        class StandIn(_readers._DirectReceive):
            def __init__(self, *args: Any) -> None:
                super().__init__(*args)
                stand_in.set()

        monkeypatch.setattr(_readers, "_DirectReceive", StandIn)

        async def load() -> None:
            loaded.append(await aload(conn.reader))

        async def write() -> None:
            assert conn.writer is not None
            conn.writer.write(outgoing)
            await conn.writer.drain()
            drained.set()

        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as group:
                group.start_soon(write)
                await anyio.wait_all_tasks_blocked()
                assert not drained.is_set()
                conn.peer.write(data[: 2 * DIRECT_MIN])  # the payload begins, and waits
                group.start_soon(load)
                await stand_in.wait()  # the payload's first bytes are in
                assert await conn.peer_reader.readexactly(len(outgoing)) == outgoing
                await drained.wait()  # resumed while the stand-in was in place
                assert isinstance(conn.transport.get_protocol(), StandIn)
                conn.peer.write(data[2 * DIRECT_MIN :])
    assert loaded == [b"p" * (4 * DIRECT_MIN)]


@pytest.mark.parametrize("protocol", range(4))
async def test_protocols_0_to_3_read_ahead(
    protocol: int, anyio_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without PROTO 4's frames the unpickler asks for every opcode; read-ahead answers from
    the loader's buffer and puts the rest back into the reader's."""
    receives = []
    for name in ("receive", "receive_ahead", "receive_into", "receive_line"):
        method = getattr(_StreamReaderSource, name)

        def counted(*args: Any, _method: Any = method, _name: str = name) -> Any:
            receives.append(_name)
            return _method(*args)

        monkeypatch.setattr(_StreamReaderSource, name, counted)
    objs = [list(range(5_000)), {"k": "v" * 100}, [b"x"] * 1_000]
    reader = asyncio.StreamReader()
    reader.feed_data(b"".join(pickle.dumps(obj, protocol) for obj in objs) + TAIL)
    reader.feed_eof()
    assert [await aload(reader) for _ in objs] == objs
    assert await reader.read() == TAIL
    assert 0 < len(receives) < 200  # an exact reader needs one per opcode: > 7,000


async def test_receive_ahead_appends_at_most_what_is_asked(anyio_backend: Any) -> None:
    """The loader's read-ahead copies from the reader's buffer once: at most *max_bytes*,
    the rest left for the reader, then 0 at its end; a reader's exception is raised."""
    reader = asyncio.StreamReader()
    source = _StreamReaderSource(reader)
    assert source.can_unread
    reader.feed_data(b"0123456789")
    buffer = bytearray(b"kept:")
    assert await source.receive_ahead(buffer, 4) == 4
    assert await source.receive_ahead(buffer, 100) == 6
    assert buffer == b"kept:0123456789"
    waiting = asyncio.ensure_future(source.receive_ahead(buffer, 100))
    await asyncio.sleep(0)
    assert not waiting.done()  # nothing buffered: it waits for data
    reader.feed_data(b"abc")
    assert await waiting == 3
    reader.feed_data(b"rest")
    assert await source.receive_ahead(buffer, 2) == 2
    reader.feed_eof()
    assert await reader.read() == b"st"
    assert await source.receive_ahead(buffer, 100) == 0
    assert buffer == b"kept:0123456789abcre"
    broken = asyncio.StreamReader()
    broken.set_exception(ConnectionResetError("reset by the peer"))
    with pytest.raises(ConnectionResetError):
        await _StreamReaderSource(broken).receive_ahead(buffer, 100)


async def test_without_internals_the_public_api_is_used(
    anyio_backend: Any, tls_contexts: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the internals nothing can be given back to the reader: protocol 5 pickles are
    # read exactly (a direct read after them gets the next byte), protocol 2 ones are read
    # ahead and what was read past them is kept for the next aload of the reader.
    monkeypatch.setattr(_readers, "_has_internals", lambda reader: False)
    objs = payloads()
    mixed = b"".join(pickle.dumps(obj, p) for obj in objs for p in (2, 5))
    framed = b"".join(pickle.dumps(obj, 5) for obj in objs)
    async with connection("tcp", tls_contexts, tmp_path) as conn:
        assert not _StreamReaderSource(conn.reader).can_unread
        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as group:
                group.start_soon(conn.write, mixed + framed + TAIL)
                got = [await aload(conn.reader) for _ in range(3 * len(objs))]
                assert await conn.reader.readexactly(len(TAIL)) == TAIL
    assert same(got, [obj for obj in objs for _ in (2, 5)] + objs)
