"""`PickleStream` over real TCP connections, on asyncio, uvloop and trio."""

from __future__ import annotations

import asyncio
import functools
import pickle
import random
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.streams.stapled
import pytest
from anyio.abc import SocketAttribute

import streampickle
from netutil import asyncio_pipe, tcp_pair
from streampickle import LimitExceeded, PickleStream

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def stream_pair(**options: Any) -> AsyncIterator[tuple[PickleStream, PickleStream]]:
    """Two `PickleStream` s on the ends of one loopback TCP connection."""
    async with (
        tcp_pair() as (client, server),
        PickleStream(client, **options) as left,
        PickleStream(server, **options) as right,
    ):
        yield left, right


@pytest.mark.parametrize("protocol", [2, 5])
async def test_round_trip_and_end_of_stream(protocol: int, anyio_backend: Any) -> None:
    objs = [{"a": 1}, b"x" * 500_000, "y" * 100_000, list(range(2000)), None]
    async with stream_pair(protocol=protocol) as (left, right):
        async with anyio.create_task_group() as group:

            async def send_all() -> None:
                for obj in objs:
                    await left.send(obj)
                await left.send_eof()

            group.start_soon(send_all)
            assert [obj async for obj in right] == objs  # iteration ends at EndOfStream
        with pytest.raises(anyio.EndOfStream):
            await right.receive()


async def test_ten_thousand_messages_slow_receiver(anyio_backend: Any) -> None:
    count = 10_000
    async with stream_pair() as (left, right), anyio.create_task_group() as group:

        async def send_all() -> None:
            for i in range(count):
                await left.send((i, f"message {i}"))
            await left.send_eof()

        group.start_soon(send_all)
        received = []
        async for item in right:
            received.append(item)
            for _ in range(3):  # slower than the sender: let it run ahead and block
                await anyio.lowlevel.checkpoint()
    assert received == [(i, f"message {i}") for i in range(count)]


async def test_concurrent_senders_do_not_interleave(anyio_backend: Any) -> None:
    payload = b"p" * 300_000  # several frames each, so interleaving would corrupt them
    async with stream_pair() as (left, right), anyio.create_task_group() as group:

        async def sender(name: int) -> None:
            for i in range(10):
                await left.send((name, i, payload))

        async def senders() -> None:
            async with anyio.create_task_group() as inner:
                for name in range(4):
                    inner.start_soon(sender, name)
            await left.send_eof()

        group.start_soon(senders)
        received = [item async for item in right]
    assert all(item[2] == payload for item in received)
    for name in range(4):
        assert [i for n, i, _ in received if n == name] == list(range(10))


class CancelWhenPickled:
    """Cancels *scope* when the pickler reaches it: after the chunks before it were sent."""

    def __init__(self, scope: anyio.CancelScope) -> None:
        self.scope = scope

    def __reduce__(self) -> tuple[Any, ...]:
        self.scope.cancel()
        return (int, (0,))


async def test_cancelled_send_breaks_stream_and_peer_sees_error(anyio_backend: Any) -> None:
    async with stream_pair() as (left, right):
        with anyio.CancelScope() as scope:
            await left.send([b"a" * 70_000, CancelWhenPickled(scope), b"b" * 70_000])
        assert scope.cancelled_caught
        with pytest.raises(anyio.BrokenResourceError, match="half-way"):
            await left.send(1)
        await left.send_eof()
        with anyio.fail_after(10), pytest.raises(anyio.BrokenResourceError, match="inside"):
            await right.receive()


async def test_pickling_error_before_first_byte_keeps_stream(anyio_backend: Any) -> None:
    async with stream_pair() as (left, right):
        with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
            await left.send(lambda: None)
        await left.send("still fine")
        assert await right.receive() == "still fine"


async def test_cancel_receive_before_and_inside_object(anyio_backend: Any) -> None:
    async with stream_pair() as (left, right):
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(right.receive)
                await anyio.wait_all_tasks_blocked()
                scope.cancel()  # nothing consumed yet: the stream stays usable
        await left.send("after")
        assert await right.receive() == "after"

        data = pickle.dumps(list(range(200_000)), 5)  # larger than a small pickle
        assert len(data) > streampickle._load.WHOLE_MAX
        await left.transport_stream.send(data[: len(data) // 2])
        await cancel_inside_object(right)
        with pytest.raises(anyio.BrokenResourceError, match="inside an object"):
            await right.receive()


async def test_cancel_while_a_small_pickle_is_arriving_keeps_the_stream(
    anyio_backend: Any,
) -> None:
    """A small framed pickle (several frames, within `WHOLE_MAX`) is received whole before
    its unpickler starts: a receive cancelled while it arrives has consumed nothing, so the
    stream stays usable and the next receive returns that object, then the next."""
    obj = list(range(50_000))
    data = pickle.dumps(obj, 5)
    assert 2 * (1 << 16) < len(data) <= streampickle._load.WHOLE_MAX
    async with stream_pair() as (left, right):
        await left.transport_stream.send(data[: len(data) // 2])
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(right.receive)
                await anyio.wait_all_tasks_blocked()
                await anyio.sleep(0.05)  # the first half has arrived
                await anyio.wait_all_tasks_blocked()
                scope.cancel()
        await left.transport_stream.send(data[len(data) // 2 :])
        await left.send("next")
        with anyio.fail_after(10):
            assert await right.receive() == obj
            assert await right.receive() == "next"


async def cancel_inside_object(stream: PickleStream) -> None:
    """Start a ``receive`` of *stream* and cancel it once it has read part of a pickle (the
    sender sent part of one, larger than `streampickle._load.WHOLE_MAX`: a smaller one is
    received whole before any of it is read). Waiting only for all tasks to block is not
    enough: a receive may block before the first bytes reach the transport."""
    inside = anyio.Event()
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as group:
            group.start_soon(functools.partial(stream.receive, progress=lambda _: inside.set()))
            await inside.wait()
            await anyio.wait_all_tasks_blocked()
            scope.cancel()


async def test_streams_over_one_transport_share_its_turns_and_brokenness(
    anyio_backend: Any,
) -> None:
    """Two `PickleStream` s over one transport (a user's mistake) read it as one would: one
    receiving while the other does is refused, and one that broke the transport breaks it
    for the other too, and for aload/adump of it, receiving and sending alike."""
    async with stream_pair() as (left, right):
        other_right = PickleStream(right.transport_stream)
        other_left = PickleStream(left.transport_stream)
        got: list[Any] = []

        async def receive() -> None:
            got.append(await right.receive())

        async with anyio.create_task_group() as group:
            group.start_soon(receive)
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(anyio.BusyResourceError):
                await other_right.receive()
            await other_left.send("first")
        await left.send("second")
        assert got == ["first"] and await other_right.receive() == "second"

        data = pickle.dumps(list(range(200_000)), 5)  # larger than a small pickle
        await left.transport_stream.send(data[: len(data) // 2])
        await cancel_inside_object(other_right)
        for broken in (right.receive(), streampickle.aload(right.transport_stream)):
            with pytest.raises(anyio.BrokenResourceError, match="inside"):
                await broken

        with anyio.CancelScope() as scope:
            await left.send([b"a" * 70_000, CancelWhenPickled(scope), b"b" * 70_000])
        for broken in (other_left.send(1), streampickle.adump(1, left.transport_stream)):
            with pytest.raises(anyio.BrokenResourceError, match="partial pickle"):
                await broken


async def test_limits_and_closed(anyio_backend: Any) -> None:
    async with stream_pair(max_frame_size=1000) as (left, right):
        await left.send(list(range(30_000)))
        with pytest.raises(LimitExceeded, match="max_frame_size \\(1000\\)"):
            await right.receive()
        assert right.extra(SocketAttribute.remote_port) == left.extra(SocketAttribute.local_port)
        await left.aclose()
        with pytest.raises(anyio.ClosedResourceError):
            await left.send(1)
        with pytest.raises(anyio.ClosedResourceError):
            await left.receive()


@pytest.mark.backends("asyncio", "uvloop")  # asyncio streams
async def test_from_asyncio() -> None:
    received: list[Any] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with PickleStream.from_asyncio(reader, writer) as stream:
            received.extend([item async for item in stream])
            await stream.send(len(received))

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        async with PickleStream.from_asyncio(
            *await asyncio.open_connection("127.0.0.1", port)
        ) as stream:
            for i in range(100):
                await stream.send({"i": i, "b": b"x" * i * 1000})
            await stream.send_eof()
            assert await stream.receive() == 100
    assert received == [{"i": i, "b": b"x" * i * 1000} for i in range(100)]


@pytest.mark.backends("trio")  # trio streams
async def test_from_trio() -> None:
    import trio
    import trio.testing

    left_raw, right_raw = trio.testing.lockstep_stream_pair()
    left, right = PickleStream.from_trio(left_raw), PickleStream.from_trio(right_raw)
    async with left, right, anyio.create_task_group() as group:

        async def send_all() -> None:
            for i in range(50):
                await left.send([i] * i)
            await left.aclose()

        group.start_soon(send_all)
        assert [item async for item in right] == [[i] * i for i in range(50)]


# The wrappers of from_asyncio and from_trio expose the socket attributes of the connection
# under them, as anyio's own socket streams do. Each test runs its own event loop.


def _expected_attributes(sock: Any) -> dict[Any, Any]:
    return {
        SocketAttribute.family: sock.family,
        SocketAttribute.local_address: sock.getsockname()[:2],
        SocketAttribute.local_port: sock.getsockname()[1],
        SocketAttribute.remote_address: sock.getpeername()[:2],
        SocketAttribute.remote_port: sock.getpeername()[1],
    }


def test_from_asyncio_forwards_socket_attributes() -> None:
    async def main() -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            async with PickleStream.from_asyncio(reader, writer) as stream:
                await stream.send(await stream.receive())

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            async with PickleStream.from_asyncio(reader, writer) as stream:
                sock = writer.get_extra_info("socket")
                for attribute, value in _expected_attributes(sock).items():
                    assert stream.extra(attribute) == value
                assert stream.extra(SocketAttribute.remote_port) == port
                assert stream.extra(SocketAttribute.raw_socket) is sock
                await stream.send("echo")
                assert await stream.receive() == "echo"

    asyncio.run(main())


def test_from_trio_forwards_socket_attributes() -> None:
    import trio

    async def main() -> None:
        async def serve(raw: trio.SocketStream) -> None:
            async with PickleStream.from_trio(raw) as stream:
                await stream.send(await stream.receive())

        async with trio.open_nursery() as nursery:
            (listener,) = await nursery.start(
                functools.partial(trio.serve_tcp, serve, 0, host="127.0.0.1")
            )
            port = listener.socket.getsockname()[1]
            raw = await trio.open_tcp_stream("127.0.0.1", port)
            async with PickleStream.from_trio(raw) as stream:
                for attribute, value in _expected_attributes(raw.socket).items():
                    assert stream.extra(attribute) == value
                assert stream.extra(SocketAttribute.remote_port) == port
                await stream.send("echo")
                assert await stream.receive() == "echo"
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_from_trio_over_a_stream_without_a_socket_has_no_socket_attributes() -> None:
    import trio.testing

    left, _ = trio.testing.memory_stream_pair()
    with pytest.raises(anyio.TypedAttributeLookupError):
        PickleStream.from_trio(left).extra(SocketAttribute.remote_address)


def test_protocol_defaults_to_the_highest() -> None:
    left, right = anyio.create_memory_object_stream[bytes](1)
    with left, right:
        stream = PickleStream(anyio.streams.stapled.StapledObjectStream(left, right))
        assert stream.protocol == pickle.HIGHEST_PROTOCOL


def test_wrong_arguments_are_refused_at_construction() -> None:
    import trio.testing

    trio_stream: Any = trio.testing.memory_stream_pair()[0]

    async def main() -> None:
        async with asyncio_pipe() as (reader, writer):
            cases: list[tuple[Callable[[], object], str]] = [
                (lambda: PickleStream(reader, writer), "from_asyncio(reader, writer)"),  # type: ignore[arg-type]
                (lambda: PickleStream(trio_stream), "PickleStream.from_trio(stream)"),
                (lambda: PickleStream.from_asyncio(writer, reader), "arguments are swapped"),  # type: ignore[arg-type]
                (lambda: PickleStream.from_trio(reader), "PickleStream.from_asyncio(reader, "),
                (lambda: PickleStream(object()), "needs an anyio ByteStream"),  # type: ignore[arg-type]
            ]
            for make, message in cases:
                with pytest.raises(TypeError, match=re.escape(message)):
                    make()

    asyncio.run(main())


@pytest.mark.parametrize("protocol", [9, "5"])
def test_a_bad_protocol_is_refused_at_construction(protocol: Any) -> None:
    left, right = anyio.create_memory_object_stream[bytes](1)
    stream = anyio.streams.stapled.StapledObjectStream(left, right)
    with left, right, pytest.raises((ValueError, TypeError), match="protocol"):
        PickleStream(stream, protocol=protocol)


def frame_edge_objects() -> list[Any]:
    """Objects whose pickles put FRAME (0x95) and STOP (0x2e) bytes where a reader that
    guessed the pickle's structure from its bytes would go wrong: arguments full of 0x95,
    frames ending in 0x2e, frames of about the read-ahead size, payloads outside frames, and
    pickles too small to be framed."""
    rng = random.Random(95)
    objects: list[Any] = [46, ".", b"\x95", None, b"\x95" * 9]
    for size in (1_000, 65_000, 65_536, 66_000, 131_072, 200_000):
        objects.append(b"\x95" * size)
        objects.append([bytes([0x95] * rng.randrange(1, 12)) for _ in range(size // 8)])
        objects.append(["." * rng.randrange(1, 40) for _ in range(size // 20)])
        objects.append([46] * (size // 2))
    return objects


@pytest.mark.parametrize("protocol", [4, 5])
async def test_request_reply_never_waits_past_a_pickle(protocol: int, anyio_backend: Any) -> None:
    """A peer that sends one object and waits for the answer before sending the next: each
    receive returns with only that object's bytes on the wire (a receive that waited for
    more would hang the conversation; the timeout turns that into a failure)."""
    objects = frame_edge_objects()
    async with stream_pair(protocol=protocol) as (left, right), anyio.create_task_group() as group:

        async def answer() -> None:
            for _ in objects:
                await right.send(await right.receive())

        group.start_soon(answer)
        with anyio.fail_after(30):
            for obj in objects:
                await left.send(obj)
                assert await left.receive() == obj


@pytest.mark.backends("asyncio", "uvloop")
@pytest.mark.parametrize("protocol", [4, 5])
async def test_request_reply_over_an_asyncio_reader(protocol: int, anyio_backend: Any) -> None:
    """The same conversation read with `aload` from an asyncio ``StreamReader``, which the
    loader reads ahead on and hands back what it read past each pickle."""
    objects = frame_edge_objects()
    async with asyncio_pipe() as (reader, writer), asyncio_pipe() as (replies, answerer):

        async def answer() -> None:
            for _ in objects:
                answerer.write(pickle.dumps(await streampickle.aload(reader), protocol))
                await answerer.drain()

        task = asyncio.ensure_future(answer())
        with anyio.fail_after(30):
            for obj in objects:
                await streampickle.adump(obj, writer, protocol)
                assert await streampickle.aload(replies) == obj
        await task


async def test_a_frame_opcode_byte_inside_an_argument_is_not_a_frame(anyio_backend: Any) -> None:
    """A 0x95 byte (FRAME) followed by a small length, as the first bytes of a LONG1
    argument that arrives in a receive of its own: a loader that took it for a frame would
    wait for 100 bytes the pickle does not have (the peer sends nothing more: a hang)."""
    digits = b"\x95" + (100).to_bytes(8, "little") + b"\x01" * 11
    data = b"\x80\x04" + pickle.LONG1 + bytes([len(digits)]) + digits + pickle.STOP
    expected = int.from_bytes(digits, "little", signed=True)
    assert pickle.loads(data) == expected
    send, receive = anyio.create_memory_object_stream[bytes](2)
    stream = PickleStream(anyio.streams.stapled.StapledObjectStream(send, receive))
    async with stream:
        await send.send(data[:4])  # PROTO, LONG1 and its length
        await send.send(data[4:])
        with anyio.fail_after(5):
            assert await stream.receive() == expected
