"""`aload` / `aiter_load` on real transports of every kind, on asyncio, uvloop and trio.

The oracle is the standard library: bytes come from ``pickle.dumps`` and objects are compared
with what ``pickle.loads`` returns.
"""

from __future__ import annotations

import asyncio
import gc
import io
import os
import pickle
import random
import sys
import tracemalloc
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

import anyio
import pytest
from anyio.abc import ByteReceiveStream, SocketAttribute, SocketListener, SocketStream, TaskGroup
from anyio.streams.buffered import BufferedByteReceiveStream
from anyio.streams.stapled import MultiListener

import netutil
import streampickle
from netutil import NeverWaits, tcp_pair
from streampickle import AsyncReader, LimitExceeded, Limits, aiter_load, aload

pytestmark = pytest.mark.anyio

PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)


def objects(protocol: int) -> list[Any]:
    """Objects covering every read path; large payloads only where they are not text lines."""
    size = 1000 if protocol == 0 else 300_000
    return [
        {"a": [1, 2.5, None], "b": ("x", True)},
        b"b" * size,
        "s\u20ac" * (size // 2),
        bytearray(b"q" * (size // 3)),
        list(range(500)),
        None,
    ]


def pickled(objs: Iterable[Any], protocol: int) -> bytes:
    return b"".join(pickle.dumps(obj, protocol) for obj in objs)


def pieces(data: bytes, sizes: Callable[[], int]) -> list[bytes]:
    out, start = [], 0
    while start < len(data):
        step = sizes()
        out.append(data[start : start + step])
        start += step
    return out


# ---------------------------------------------------------------------------------------------
# Readers of every kind, each delivering given bytes and then end of stream.


async def accept(listener: MultiListener[SocketStream]) -> SocketStream:
    """The next connection to a listener of ``anyio.create_tcp_listener``."""
    inner = listener.listeners[0]
    assert isinstance(inner, SocketListener)
    return await inner.accept()


async def send_pieces(stream: SocketStream, chunks: Sequence[bytes]) -> None:
    for chunk in chunks:
        await stream.send(chunk)
    await stream.send_eof()


ANY = ("asyncio", "uvloop", "trio")
ASYNCIO = ("asyncio", "uvloop")
KINDS = {
    # kind: the backends it exists on
    "anyio": ANY,
    "buffered": ANY,
    "trio": ("trio",),
    "asyncio": ASYNCIO,
    "asyncio-limit": ASYNCIO,
    "file": ANY,
    "aiofiles": ASYNCIO,
    "pipe": ANY,
    "process": ANY,
    "asyncio-process": ASYNCIO,
}
SOCKET_KINDS = ("anyio", "buffered", "trio", "asyncio", "asyncio-limit")


def on_their_backends(kinds: Iterable[str]) -> list[Any]:
    """*kinds* as parameters, each generated only on the backends it exists on."""
    return [pytest.param(kind, marks=pytest.mark.backends(*KINDS[kind])) for kind in kinds]


@asynccontextmanager
async def open_reader(
    kind: str, chunks: Sequence[bytes], tmp_path: Path
) -> AsyncIterator[AsyncReader]:
    """A reader of *kind* that yields the bytes of *chunks*, then end of stream."""
    data = b"".join(chunks)
    async with AsyncExitStack() as stack:
        if kind in SOCKET_KINDS:
            client, server = await stack.enter_async_context(tcp_pair())
            group: TaskGroup = await stack.enter_async_context(anyio.create_task_group())
            group.start_soon(send_pieces, server, chunks)
            yield await socket_reader(kind, client, stack)
            return
        path = tmp_path / "data.pickle"
        path.write_bytes(data)
        if kind == "file":
            yield await stack.enter_async_context(await anyio.open_file(path, "rb"))
        elif kind == "aiofiles":
            import aiofiles

            yield await stack.enter_async_context(aiofiles.open(path, "rb"))
        elif kind == "pipe":
            yield await pipe_reader(data, stack)
        elif kind == "process":
            process = await stack.enter_async_context(await anyio.open_process(cat(path)))
            assert process.stdout is not None
            yield process.stdout
        else:
            proc = await asyncio.create_subprocess_exec(*cat(path), stdout=asyncio.subprocess.PIPE)
            stack.push_async_callback(proc.wait)
            assert proc.stdout is not None
            yield proc.stdout


def cat(path: Path) -> list[str]:
    code = "import sys; sys.stdout.buffer.write(open(sys.argv[1], 'rb').read())"
    return [sys.executable, "-c", code, str(path)]


async def socket_reader(kind: str, client: SocketStream, stack: AsyncExitStack) -> AsyncReader:
    if kind == "anyio":
        return client
    if kind == "buffered":
        return BufferedByteReceiveStream(client)
    # trio/asyncio: a second, native connection whose peer forwards what *client* gets.
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(SocketAttribute.local_port)
        if kind == "trio":
            import trio

            native: Any = await trio.open_tcp_stream("127.0.0.1", port)
            stack.push_async_callback(native.aclose)
        else:
            limit = 64 if kind == "asyncio-limit" else 2**16
            native, writer = await asyncio.open_connection("127.0.0.1", port, limit=limit)
            stack.callback(writer.close)
        peer = await stack.enter_async_context(await accept(listener))
    group = await stack.enter_async_context(anyio.create_task_group())
    group.start_soon(forward, client, peer)
    reader: AsyncReader = native
    return reader


async def forward(source: SocketStream, target: SocketStream) -> None:
    async for chunk in source:
        await target.send(chunk)
    await target.send_eof()


async def pipe_reader(data: bytes, stack: AsyncExitStack) -> AsyncReader:
    """An anyio ``AsyncFile`` on the read end of an OS pipe a thread writes *data* into."""
    read_fd, write_fd = os.pipe()

    def write_all() -> None:
        with open(write_fd, "wb") as pipe:
            pipe.write(data)

    group = await stack.enter_async_context(anyio.create_task_group())
    file = await stack.enter_async_context(await anyio.open_file(read_fd, "rb"))
    group.start_soon(anyio.to_thread.run_sync, write_all)
    return file


# ---------------------------------------------------------------------------------------------
# A plain ByteReceiveStream over bytes, for the many small cases (prefixes, limits).


class BytesStream(ByteReceiveStream):
    """Hands out *data* in pieces of at most *step* bytes, then end of stream."""

    def __init__(self, data: bytes, step: int = 1 << 16) -> None:
        self.data, self.step, self.pos = data, step, 0

    async def receive(self, max_bytes: int = 65536) -> bytes:
        await anyio.lowlevel.checkpoint()
        if self.pos >= len(self.data):
            raise anyio.EndOfStream
        start, self.pos = self.pos, self.pos + min(max_bytes, self.step)
        return self.data[start : self.pos]

    async def aclose(self) -> None:
        self.pos = len(self.data)


def byte_readers(data: bytes) -> list[AsyncReader]:
    """The same bytes through an exact reader and through a read-ahead one."""
    return [BytesStream(data, step=7), BufferedByteReceiveStream(BytesStream(data))]


# ---------------------------------------------------------------------------------------------
# Many objects back to back, per reader kind.


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("kind", on_their_backends(KINDS))
async def test_back_to_back(kind: str, protocol: int, tmp_path: Path) -> None:
    objs = objects(protocol) * 3
    data = pickled(objs, protocol)
    with anyio.fail_after(20):
        async with open_reader(kind, [data], tmp_path) as reader:
            got = [await aload(reader) for _ in range(len(objs) - 2)]
            got += [obj async for obj in aiter_load(reader)]
            assert got == objs
            with pytest.raises(EOFError):  # as pickle.load at end of file
                await aload(reader)


@pytest.mark.parametrize("kind", on_their_backends(SOCKET_KINDS))
@pytest.mark.parametrize("protocol", [2, 5])
async def test_one_byte_trickle(kind: str, protocol: int, tmp_path: Path) -> None:
    objs = [{"k": list(range(20)), "s": "abc" * 30}, b"x" * 300, 12345]
    data = pickled(objs, protocol)
    with anyio.fail_after(20):
        async with open_reader(kind, pieces(data, lambda: 1), tmp_path) as reader:
            assert [obj async for obj in aiter_load(reader)] == objs


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("kind", on_their_backends(SOCKET_KINDS))
async def test_random_chunking(kind: str, seed: int, tmp_path: Path) -> None:
    rng = random.Random(seed)
    objs = [obj for protocol in (2, 4, 5) for obj in objects(protocol)[:4]]
    data = b"".join(pickle.dumps(obj, rng.choice((2, 3, 4, 5))) for obj in objs)
    chunks = pieces(data, lambda: rng.choice((1, 2, 3, 100, 4096, 70_000)))
    with anyio.fail_after(20):
        async with open_reader(kind, chunks, tmp_path) as reader:
            assert [obj async for obj in aiter_load(reader)] == objs


# ---------------------------------------------------------------------------------------------
# Truncation and end of stream.


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_every_prefix_fails(protocol: int, anyio_backend: Any) -> None:
    data = pickle.dumps([1, "two", b"three", 4.0, (5,), {"six": None}, 2**70], protocol)
    for end in range(len(data)):
        for reader in byte_readers(data[:end]):
            with anyio.fail_after(5), pytest.raises((pickle.UnpicklingError, EOFError)):
                await aload(reader)


@pytest.mark.backends("asyncio")  # a StreamReader fed by hand: no transport, so no uvloop
async def test_prefixes_on_stream_reader() -> None:
    for protocol in PROTOCOLS:
        data = pickle.dumps(["a" * 10, b"b", 3], protocol)
        for end in range(len(data)):
            reader = asyncio.StreamReader(limit=16)
            reader.feed_data(data[:end])
            reader.feed_eof()
            with anyio.fail_after(5), pytest.raises((pickle.UnpicklingError, EOFError)):
                await aload(reader)


async def test_eof_between_objects_vs_inside(anyio_backend: Any) -> None:
    whole = pickled([1, 2], 5)
    for reader in byte_readers(whole):
        assert [obj async for obj in aiter_load(reader)] == [1, 2]
    for reader in byte_readers(whole + pickle.dumps([3, 4], 5)[:-1]):
        objs = aiter_load(reader)
        assert [await anext(objs), await anext(objs)] == [1, 2]
        with pytest.raises((pickle.UnpicklingError, EOFError)):
            await anext(objs)


async def test_bad_data_raises_unpickling_error(anyio_backend: Any) -> None:
    for reader in byte_readers(b"\xff garbage"):
        with pytest.raises(pickle.UnpicklingError):
            await aload(reader)


async def test_data_that_is_not_a_pickle_says_so(anyio_backend: Any) -> None:
    # pickle's own messages are about opcodes ("Memo value not found at index 101", or two
    # lines about persistent ids for a zip's b"PK"): aload adds that this is no pickle.
    for garbage in [b"hello, this is text\n", b"PK\x03\x04 a zip file"]:
        for reader in byte_readers(garbage):
            with pytest.raises(pickle.UnpicklingError) as info:
                await aload(reader)
            message = str(info.value)
            assert "\n" not in message
            assert f"(not a pickle? the data starts with b'{garbage[:1].decode()}" in message
    # A real pickle that is bad keeps pickle's message, without the hint.
    for bad in [pickle.dumps([1, 2, 3], 0)[:-3], b"\x80\x05\x95garbage"]:
        with pytest.raises(pickle.UnpicklingError) as info:
            await aload(BytesStream(bad))
        assert "not a pickle" not in str(info.value)


async def test_rejects_what_it_cannot_read(anyio_backend: Any, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"BytesIO is a synchronous file; use streampickle\.load"):
        await aload(io.BytesIO(b""))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cannot read from int"):
        await aload(42)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Limits.

HUGE = 2**40
TEN = b"0123456789"
HOSTILE = {
    "frame": (b"\x80\x04\x95" + HUGE.to_bytes(8, "little") + TEN, "max_frame_size"),
    "BINBYTES8 payload": (b"\x80\x04\x8e" + HUGE.to_bytes(8, "little") + TEN, "max_object_size"),
    "BINUNICODE8 payload": (b"\x80\x05\x8d" + HUGE.to_bytes(8, "little") + TEN, "max_object_size"),
    "BYTEARRAY8 payload": (b"\x80\x05\x96" + HUGE.to_bytes(8, "little") + TEN, "max_object_size"),
    "BINBYTES payload": (b"\x80\x03B" + (2**32 - 1).to_bytes(4, "little") + TEN, "max_object_size"),
}


#: The byte limits at `Limits`' defaults: a trusted load checks them only when given.
BYTE_LIMITS: dict[str, Any] = {
    "max_frame_size": Limits().max_frame_size,
    "max_object_size": Limits().max_object_size,
    "max_line_length": Limits().max_line_length,
}


@pytest.mark.parametrize("what", list(HOSTILE))
async def test_hostile_length_fails_at_once(what: str, anyio_backend: Any) -> None:
    data, limit = HOSTILE[what]
    for reader in byte_readers(data):
        tracemalloc.start()
        try:
            with anyio.fail_after(5), pytest.raises(LimitExceeded) as info:
                await aload(reader, **BYTE_LIMITS)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        # Nothing allocated for the claim: given limits, read-ahead data stops before the
        # opcodes whose claimed length the C unpickler allocates (BINBYTES, BINBYTES8,
        # BYTEARRAY8). The others, read ahead, are refused when the payload is asked for.
        assert peak < 1 << 20
        assert info.value.limit == limit
        assert str(info.value).startswith((what, "pickle of"))
        assert f"exceeds {limit} (" in str(info.value)


async def test_hostile_frame_message_like_msgpack(anyio_backend: Any) -> None:
    data = b"\x80\x04\x95" + (2**31).to_bytes(8, "little") + TEN
    with pytest.raises(LimitExceeded) as info:
        await aload(BytesStream(data), max_frame_size=16 << 20)
    assert str(info.value) == (
        "frame of 2147483648 bytes exceeds max_frame_size (16777216); "
        "pass a larger max_frame_size= (None: no limit) to accept it"
    )
    assert (info.value.size, info.value.maximum) == (2**31, 16 << 20)


async def test_payload_read_is_checked_in_read_ahead_mode(anyio_backend: Any) -> None:
    # Protocol 2 is read ahead: the BINUNICODE claim is refused when the payload is asked for.
    data = b"\x80\x02X" + (2**32 - 1).to_bytes(4, "little") + TEN
    reader = BufferedByteReceiveStream(BytesStream(data))
    with pytest.raises(LimitExceeded, match="exceeds max_object_size"):
        await aload(reader, **BYTE_LIMITS)


class CountingStream(BytesStream):
    """A `BytesStream` (it cannot take bytes back) that counts its receives."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.receives = 0

    async def receive(self, max_bytes: int = 65536) -> bytes:
        self.receives += 1
        return await super().receive(max_bytes)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_streams_that_cannot_take_bytes_back_are_not_read_per_opcode(
    protocol: int, anyio_backend: Any
) -> None:
    # 20,000 small dicts are ~200,000 opcodes: read ahead, a receive serves thousands.
    records = [{"id": i, "name": f"n{i}", "ok": True} for i in range(20_000)]
    data = pickle.dumps(records, protocol) * 2 + b"TAIL"
    stream = CountingStream(data)
    assert await aload(stream) == records
    if protocol < 4:  # read ahead, the surplus kept for the next aload
        assert stream.receives <= len(data) // 65536 + 3
    else:  # read exactly (a few reads per frame): nothing past the pickle has left the stream
        assert stream.pos == len(data) // 2 - 2
    assert await aload(stream) == records  # the next one starts right after the first
    assert [obj async for obj in aiter_load(CountingStream(data[:-4] * 3))] == [records] * 6


def one_frame(payload: bytes) -> bytes:
    """A protocol-4 pickle of *payload* in one frame (CPython's pickler frames ~64 KiB; other
    picklers, and pickle.load, allow any size)."""
    body = b"\x8e" + len(payload).to_bytes(8, "little") + payload + b"."
    return b"\x80\x04\x95" + len(body).to_bytes(8, "little") + body


async def test_trusted_defaults_accept_what_pickle_accepts(anyio_backend: Any) -> None:
    # Each of these is past a default of Limits (what allow= loads check): a 20 MiB frame, a
    # 2 MiB protocol-0 line; a trusted aload reads them as pickle.load does.
    payload = bytes(range(256)) * (80 << 12)
    for data, expected in [
        (one_frame(payload), payload),
        (pickle.dumps("x" * (2 << 20), 0), "x" * (2 << 20)),
    ]:
        assert pickle.loads(data) == expected
        for reader in [BytesStream(data), BufferedByteReceiveStream(BytesStream(data))]:
            assert await aload(reader) == expected
        assert [obj async for obj in aiter_load(BytesStream(data * 2))] == [expected] * 2


async def test_every_limit_names_its_keyword(anyio_backend: Any) -> None:
    cases: list[tuple[bytes, dict[str, Any]]] = [
        (one_frame(b"x" * 5000), {"max_frame_size": 4000}),
        (pickle.dumps(b"x" * 5000, 5), {"max_object_size": 4000}),
        (pickle.dumps("x" * 5000, 0), {"max_line_length": 4000}),
    ]
    for data, limits in cases:
        (keyword,) = limits
        for reader in byte_readers(data):
            with pytest.raises(LimitExceeded) as info:
                await aload(reader, **limits)
            assert info.value.limit == keyword
            assert f"exceeds {keyword} (4000); pass a larger {keyword}= " in str(info.value)


@pytest.mark.backends("asyncio")
async def test_trusted_claim_costs_memory_only_as_bytes_arrive() -> None:
    # A 6 GiB claim followed by 4 MiB, then silence: the receiver holds about what arrived
    # (the payload's buffer is allocated but not touched; a frame is gathered piece by piece).
    claim, sent = 6 << 30, 4 << 20
    for header in [
        b"\x80\x05\x96" + claim.to_bytes(8, "little"),  # BYTEARRAY8
        b"\x80\x04\x95" + claim.to_bytes(8, "little"),  # FRAME
    ]:
        async with netutil.asyncio_pipe() as (reader, writer):
            before = rss()
            writer.write(header + bytes(sent))
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(aload, reader)
                writer.transport.set_write_buffer_limits(0)
                with anyio.fail_after(10):  # until the pipe took all but its own 64 KiB
                    await writer.drain()
                await anyio.sleep(0.1)
                assert rss() - before < 64 << 20
                tasks.cancel_scope.cancel()


async def test_trusted_claim_costs_memory_only_as_bytes_arrive_on_any_backend(
    anyio_backend: Any,
) -> None:
    # The same over anyio TCP on asyncio, uvloop and trio: aload's progress shows the 4 MiB
    # arrived (this stream is read piece by piece), and the receiver holds about that much.
    claim, sent = 6 << 30, 4 << 20
    for header in [
        b"\x80\x05\x96" + claim.to_bytes(8, "little"),  # BYTEARRAY8
        b"\x80\x04\x95" + claim.to_bytes(8, "little"),  # FRAME
    ]:
        async with tcp_pair() as (client, server):
            before = rss()
            arrived = anyio.Event()

            def progress(count: int, arrived: anyio.Event = arrived) -> None:
                if count >= sent:
                    arrived.set()

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(client.send, header + bytes(sent))
                tasks.start_soon(lambda: aload(server, progress=progress))
                with anyio.fail_after(10):
                    await arrived.wait()
                assert rss() - before < 64 << 20
                tasks.cancel_scope.cancel()


def rss() -> int:
    """This process's resident set size in bytes (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize("what", list(HOSTILE))
async def test_trusted_hostile_length_costs_nothing_before_its_bytes(
    what: str, anyio_backend: Any
) -> None:
    # Without limits (a trusted load, as pickle.load) a claim of 1 TiB fails at once: a frame
    # is read piece by piece until the stream ends; a payload buffer that cannot be allocated
    # is a MemoryError, as in pickle.
    data, _ = HOSTILE[what]
    for reader in byte_readers(data):
        with anyio.fail_after(5), pytest.raises((pickle.UnpicklingError, MemoryError)):
            await aload(reader)
        with pytest.raises((pickle.UnpicklingError, MemoryError)):
            pickle.loads(data)  # the control: what pickle.load does with the same bytes


async def test_custom_limits(anyio_backend: Any) -> None:
    framed = pickle.dumps(list(range(30_000)), 5)  # frames of ~64 KiB
    for reader in byte_readers(framed):
        with pytest.raises(LimitExceeded, match="max_frame_size \\(1000\\)"):
            await aload(reader, max_frame_size=1000)
    for reader in byte_readers(framed):
        with pytest.raises(LimitExceeded, match="max_object_size \\(5000\\)"):
            await aload(reader, max_object_size=5000)
    for reader in byte_readers(framed):
        assert await aload(reader, max_frame_size=None, max_object_size=None) == list(range(30_000))
    line = pickle.dumps("x" * 5000, 0)
    for reader in byte_readers(line):
        with pytest.raises(LimitExceeded, match="max_line_length \\(100\\)"):
            await aload(reader, max_line_length=100)
    for reader in byte_readers(line):
        assert await aload(reader, max_line_length=5010) == "x" * 5000


@pytest.mark.backends("asyncio")  # a StreamReader fed by hand: no transport, so no uvloop
async def test_line_limit_on_stream_reader() -> None:
    data = pickle.dumps("y" * 3000, 0) + pickle.dumps("z" * 10, 0)
    reader = asyncio.StreamReader(limit=64)
    reader.feed_data(data)
    reader.feed_eof()
    assert await aload(reader, max_line_length=4000) == "y" * 3000  # lines past the limit
    reader = asyncio.StreamReader(limit=64)
    reader.feed_data(data)
    with pytest.raises(LimitExceeded, match="max_line_length"):
        await aload(reader, max_line_length=1000)


# ---------------------------------------------------------------------------------------------
# Options, leftovers, cancellation.


class TrackedUnpickler(pickle.Unpickler):
    live: ClassVar[weakref.WeakSet[TrackedUnpickler]] = weakref.WeakSet()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        TrackedUnpickler.live.add(self)

    def find_class(self, module: str, name: str) -> Any:
        if name == "forbidden":
            raise pickle.UnpicklingError(f"{module}.{name} is forbidden")
        return super().find_class(module, name)


def forbidden() -> None:
    """Pickled by reference; `TrackedUnpickler` refuses to load it."""


async def test_options_reach_the_unpickler(anyio_backend: Any) -> None:
    data = pickle.dumps([pickle.PickleBuffer(b"oob")], 5, buffer_callback=lambda b: False)
    loaded = await aload(BytesStream(data), buffers=[b"OOB"])
    assert bytes(loaded[0]) == b"OOB"
    py2 = b"U\x03caf\x71\x00."  # a protocol-1 SHORT_BINSTRING, as Python 2 wrote str
    assert await aload(BytesStream(py2), encoding="latin1") == "caf"
    with pytest.raises(pickle.UnpicklingError, match="forbidden"):
        await aload(BytesStream(pickle.dumps(forbidden, 5)), unpickler_class=TrackedUnpickler)


async def test_leftovers_stay_on_buffered_stream(anyio_backend: Any) -> None:
    tail = b"raw bytes after the pickle"
    for protocol in PROTOCOLS:
        reader = BufferedByteReceiveStream(BytesStream(pickle.dumps(["x"] * 50, protocol) + tail))
        assert await aload(reader) == ["x"] * 50
        assert await reader.receive_exactly(len(tail)) == tail


async def test_leftovers_stay_in_seekable_file(anyio_backend: Any, tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(pickle.dumps(list(range(100)), 2) + b"tail")
    async with await anyio.open_file(path, "rb") as file:
        assert await aload(file) == list(range(100))
        assert await file.read() == b"tail"


async def test_cancel_mid_object_unwinds_unpickler(anyio_backend: Any) -> None:
    data = pickle.dumps(list(range(100_000)), 5)
    gc.collect()  # unpicklers of earlier tests in this process, awaiting a full collection
    assert len(TrackedUnpickler.live) == 0
    async with tcp_pair() as (client, server):
        await server.send(data[: len(data) // 2])  # half a pickle, then silence
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as group:

                async def load() -> None:
                    await aload(client, unpickler_class=TrackedUnpickler)

                group.start_soon(load)
                await anyio.wait_all_tasks_blocked()
                assert len(TrackedUnpickler.live) == 1  # it is waiting inside the object
                scope.cancel()
        assert scope.cancelled_caught
        gc.collect()
        assert len(TrackedUnpickler.live) == 0
        assert streampickle.loads(data) == list(range(100_000))


# ---------------------------------------------------------------------------------------------
# Other tasks run during a load, however fast the data came.


@pytest.mark.usefixtures("checkpoint_every_frame")
@pytest.mark.parametrize("allow", [None, []], ids=["trusted", "restricted"])
async def test_a_load_from_buffered_data_lets_other_tasks_run(
    allow: Any, anyio_backend: Any
) -> None:
    from streampickle._load import YIELD_EVERY

    records = [{"id": i, "name": f"row {i}"} for i in range(30_000)]
    data = pickle.dumps(records, 5)  # 11 frames
    turns, done = 0, False

    async def other_task() -> None:
        nonlocal turns
        while not done:
            turns += 1
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as group:
        group.start_soon(other_task)
        await anyio.lowlevel.checkpoint()
        before = turns
        assert await aload(NeverWaits(data), allow=allow) == records
        during = turns - before
        done = True
    assert during >= len(data) // YIELD_EVERY - 1  # a turn about once a frame
