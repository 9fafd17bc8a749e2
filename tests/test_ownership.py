"""One pickle at a time per stream, and none after a half one: never a wrong object.

Plain `pickle` has no such guard (the controls below show the wrong object it lets through);
`adump`/`aload` refuse a stream that another task is using (``anyio.BusyResourceError``) or
that an earlier call left inside a pickle (``anyio.BrokenResourceError``), on every writer
and reader kind, without keeping streams alive.
"""

from __future__ import annotations

import asyncio
import gc
import io
import pickle
import weakref
from typing import Any

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

import streampickle
from netutil import HANG_GUARD, tcp_pair

pytestmark = pytest.mark.anyio

BIG = b"x" * (32 << 20)  # far more than loopback buffers hold: the write blocks


class GatedWriter:
    """An async writer whose writes wait for the gate to open; keeps what it got."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.gate = anyio.Event()
        self.writing = anyio.Event()

    async def write(self, data: bytes) -> None:
        self.writing.set()
        await self.gate.wait()
        self.data += data


def test_control_plain_pickle_resolves_a_memo_reference_into_the_partial_pickle() -> None:
    """What a naive reuse gives: the first frame of a pickle cut short, then the next pickle,
    read as one: the second's memo reference resolves into the first, a wrong object."""
    first = pickle.dumps([[f"c{i}"] for i in range(20_000)], 4)
    first_frame = 11 + int.from_bytes(first[3:11], "little")  # PROTO, FRAME, length, frame
    shared = ["payload"]
    second = pickle.dumps({"a": shared, "b": shared}, 4)
    assert pickle.loads(first[:first_frame] + second) == {"a": ["payload"], "b": "c0"}


async def test_adump_after_a_cancelled_adump_is_refused(anyio_backend: Any) -> None:
    async with tcp_pair() as (client, _server):
        with anyio.CancelScope() as scope:  # cancelled once the first write is done
            await streampickle.adump(BIG, client, 5, progress=lambda count: scope.cancel())
        assert scope.cancelled_caught
        with pytest.raises(anyio.BrokenResourceError, match="stopped after writing") as info:
            await streampickle.adump({"a": 1}, client)
        assert "cancelled" in str(info.value)
        with pytest.raises(anyio.BrokenResourceError):  # for good
            await streampickle.adump({"a": 1}, client)


async def test_adump_after_a_failed_adump_is_refused(anyio_backend: Any) -> None:
    class Bad:
        def __reduce__(self) -> Any:
            raise ValueError("no pickling this")

    writer = GatedWriter()
    writer.gate.set()
    obj = [b"y" * 200_000, Bad()]  # the payload goes out before the error
    with pytest.raises(ValueError, match="no pickling this"):
        await streampickle.adump(obj, writer, 5)
    assert writer.data
    with pytest.raises(anyio.BrokenResourceError, match="ValueError: no pickling this"):
        await streampickle.adump("next", writer)


async def test_a_pickling_error_before_the_first_byte_leaves_the_writer_usable(
    anyio_backend: Any,
) -> None:
    writer = GatedWriter()
    writer.gate.set()
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        await streampickle.adump(lambda: None, writer)  # refused at once, nothing written
    assert not writer.data
    await streampickle.adump("next", writer)
    assert pickle.loads(writer.data) == "next"


async def test_two_adumps_at_once_one_is_refused_the_other_arrives(anyio_backend: Any) -> None:
    writer = GatedWriter()
    first = {"records": list(range(50_000))}
    async with anyio.create_task_group() as group:
        group.start_soon(streampickle.adump, first, writer)
        await writer.writing.wait()
        with pytest.raises(anyio.BusyResourceError):
            await streampickle.adump("second", writer)
        writer.gate.set()
    assert pickle.loads(writer.data) == first
    await streampickle.adump("then", writer)  # free again once the first is done
    assert pickle.loads(bytes(writer.data[len(pickle.dumps(first)) :])) == "then"


@pytest.mark.backends("asyncio", "uvloop")  # asyncio streams
async def test_asyncio_stream_writer_after_a_cancelled_adump(anyio_backend: Any) -> None:
    peers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer)  # never reads

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        with pytest.raises(asyncio.TimeoutError):  # the case: wait_for times the adump out
            await asyncio.wait_for(streampickle.adump(BIG, writer, 5), 0.3)
        with pytest.raises(anyio.BrokenResourceError, match="StreamWriter"):
            await streampickle.adump({"a": 1}, writer)
        for each in [writer, *peers]:
            each.transport.abort()
        await asyncio.sleep(0)


async def test_aload_after_a_cancelled_aload_is_refused(anyio_backend: Any) -> None:
    data = pickle.dumps(list(range(100_000)), 5)
    async with tcp_pair() as (client, server):
        await client.send(data[: len(data) // 2])
        with anyio.move_on_after(0.3):
            await streampickle.aload(server)  # waits for the rest
        await client.send(data[len(data) // 2 :] + pickle.dumps("next"))
        with pytest.raises(anyio.BrokenResourceError, match="stopped inside a pickle"):
            await streampickle.aload(server)


@pytest.mark.backends("asyncio", "uvloop")
async def test_aload_cancelled_while_a_small_pickle_arrives_leaves_the_reader_usable(
    anyio_backend: Any,
) -> None:
    """A small framed pickle (several frames, within `WHOLE_MAX`) is received whole before its
    unpickler starts: an aload cancelled while it arrives gives the bytes it read back to
    the StreamReader, and the next aload returns that object, then the next one."""
    obj = list(range(50_000))
    data = pickle.dumps(obj, 5)
    assert 2 * (1 << 16) < len(data) <= streampickle._load.WHOLE_MAX
    readers: list[asyncio.StreamReader] = []
    peers: list[asyncio.StreamWriter] = []
    arrived = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        readers.append(reader)
        peers.append(writer)
        arrived.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(data[: len(data) // 2])
            await writer.drain()
            await arrived.wait()
            with anyio.move_on_after(0.3) as scope:
                await streampickle.aload(readers[0])  # waits for the rest
            assert scope.cancelled_caught
            writer.write(data[len(data) // 2 :] + pickle.dumps("next", 5))
            await writer.drain()
            with anyio.fail_after(HANG_GUARD):
                assert await streampickle.aload(readers[0]) == obj
                assert await streampickle.aload(readers[0]) == "next"
        finally:
            for each in [writer, *peers]:
                each.transport.abort()
            await asyncio.sleep(0)


async def test_aload_cancelled_while_a_small_pickle_arrives_on_a_buffered_stream(
    anyio_backend: Any,
) -> None:
    """The same on every backend, with an anyio ``BufferedByteReceiveStream`` (it takes bytes
    back): the next aload returns the object. An exact-read stream (a bare socket) is refused
    instead (`test_aload_after_a_cancelled_aload_is_refused`): never a wrong object."""
    obj = list(range(50_000))
    data = pickle.dumps(obj, 5)
    assert 2 * (1 << 16) < len(data) <= streampickle._load.WHOLE_MAX
    async with tcp_pair() as (client, server):
        buffered = BufferedByteReceiveStream(server)
        await client.send(data[: len(data) // 2])
        with anyio.move_on_after(0.3) as scope:
            await streampickle.aload(buffered)  # waits for the rest
        assert scope.cancelled_caught
        await client.send(data[len(data) // 2 :] + pickle.dumps("next", 5))
        with anyio.fail_after(HANG_GUARD):
            assert await streampickle.aload(buffered) == obj
            assert await streampickle.aload(buffered) == "next"


async def test_aload_after_a_refused_pickle_is_refused(anyio_backend: Any) -> None:
    data = pickle.dumps(io.StringIO, 5) + pickle.dumps("next", 5)
    async with tcp_pair() as (client, server):
        await client.send(data)
        with pytest.raises(streampickle.ForbiddenGlobal):
            await streampickle.aload(server, allow=[])
        with pytest.raises(anyio.BrokenResourceError, match="ForbiddenGlobal"):
            await streampickle.aload(server, allow=[])


async def test_clean_end_of_stream_leaves_the_reader_usable(anyio_backend: Any) -> None:
    async with tcp_pair() as (client, server):
        await client.send(pickle.dumps("one"))
        await client.send_eof()
        assert [obj async for obj in streampickle.aiter_load(server)] == ["one"]
        with pytest.raises(EOFError):
            await streampickle.aload(server)  # the stream ended: not a broken stream
        with pytest.raises(EOFError):
            await streampickle.aload(server)


async def test_two_aloads_at_once_one_is_refused(anyio_backend: Any) -> None:
    async with tcp_pair() as (client, server):
        received: list[Any] = []

        async def load() -> None:
            received.append(await streampickle.aload(server))

        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as group:
                group.start_soon(load)
                await anyio.wait_all_tasks_blocked()
                with pytest.raises(anyio.BusyResourceError):
                    await streampickle.aload(server)
                await client.send(pickle.dumps({"k": "v"}, 5))
        assert received == [{"k": "v"}]


async def test_streams_are_not_kept_alive(anyio_backend: Any) -> None:
    writer = GatedWriter()
    writer.gate.set()
    await streampickle.adump("x", writer)
    ref = weakref.ref(writer)
    del writer
    gc.collect()
    assert ref() is None


async def test_a_pickle_streams_parked_read_ahead_keeps_nothing_alive(anyio_backend: Any) -> None:
    """A `PickleStream` parks what it read ahead with the stream's state (for the next
    reader of the stream); that state holds no reference to the stream or the PickleStream:
    both go once the user drops them, and their state with them."""
    from anyio.streams.stapled import StapledObjectStream

    from streampickle import _ownership

    send, receive = anyio.create_memory_object_stream[bytes](10)
    await send.send(pickle.dumps(1, 5) + pickle.dumps(2, 5))  # one chunk: 2 is read ahead
    transport = StapledObjectStream(send, receive)
    stream = streampickle.PickleStream(transport)
    assert await stream.receive() == 1
    assert await streampickle.PickleStream(transport).receive() == 2  # took over the bytes
    refs: list[weakref.ref[Any]] = [weakref.ref(transport), weakref.ref(stream)]
    states = len(_ownership._STATES)
    del stream, transport
    gc.collect()
    assert [ref() for ref in refs] == [None, None]
    assert len(_ownership._STATES) < states
    send.close()
    receive.close()
