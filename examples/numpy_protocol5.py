"""Stream a numpy-heavy object over a socket with pickle protocol 5: in band and out of band.

    python examples/numpy_protocol5.py [--megabytes 64] [--backend asyncio|trio]

At protocol 5 numpy hands the pickler its arrays' memory as ``pickle.PickleBuffer`` objects.

* **In band** (``adump(obj, stream, protocol=5)``): each array's bytes go into the pickle
  stream itself, written from the array's own memory in memoryview slices (no copy, no
  ``tobytes()``); ``aload`` reads each payload straight into the buffer the new array will own.
* **Out of band** (``buffer_callback=``): the pickle holds only the arrays' metadata and the
  buffers travel separately, here as raw bytes after a small header that lists their sizes;
  the receiver reads them into buffers it allocated itself and passes them to ``aload(...,
  buffers=...)``. That is how you put arrays into memory of your choosing (pinned, shared,
  aligned) or send them over another channel.

Sender and receiver are two tasks on one event loop, talking over loopback TCP (anyio, so the
same code runs on asyncio and trio). Every array is checked with ``numpy.array_equal``.
"""

from __future__ import annotations

import argparse
import pickle
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import numpy as np
from anyio.abc import ByteReceiveStream, ByteSendStream, SocketAttribute, SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

import streampickle

Send = Callable[[Any, ByteSendStream], Awaitable[int]]
Receive = Callable[[BufferedByteReceiveStream], Awaitable[Any]]


def make_payload(megabytes: float) -> dict[str, Any]:
    """A dict of arrays of several dtypes and shapes, plus ordinary Python data."""
    side = max(int((megabytes * (1 << 20) / 2 / 4) ** 0.5), 1)  # half the size: a float32 image
    rng = np.random.default_rng(5)
    return {
        "name": "frame-0001",
        "image": rng.random((side, side), dtype=np.float32),
        "labels": np.arange(side * side // 2, dtype=np.int64),  # the other half, about
        "mask": rng.random(side) > 0.5,
        "columns": {"x": np.linspace(0, 1, 1000), "y": np.zeros(1000, dtype=np.complex128)},
        "notes": ["protocol 5", "zero-copy"],
    }


def same(a: Any, b: Any) -> bool:
    """Deep equality for nested dicts/lists of arrays and plain values."""
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(same, a, b))
    return bool(a == b)


# -- in band ---------------------------------------------------------------------------------


async def send_in_band(obj: Any, stream: ByteSendStream) -> int:
    return await streampickle.adump(obj, stream, protocol=5)


async def receive_in_band(stream: BufferedByteReceiveStream) -> Any:
    return await streampickle.aload(stream)


# -- out of band -----------------------------------------------------------------------------


async def send_out_of_band(obj: Any, stream: ByteSendStream) -> int:
    """Send a header (the buffers' sizes), the raw buffers, then the pickle that refers to them."""
    buffers: list[pickle.PickleBuffer] = []
    # With a buffer_callback the pickle only holds metadata: small, so pickled in one go.
    body = streampickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    raws = [buffer.raw() for buffer in buffers]  # flat byte views of the arrays' memory
    sent = await streampickle.adump([raw.nbytes for raw in raws], stream, protocol=5)
    for raw in raws:
        await stream.send(raw)  # type: ignore[arg-type]  # anyio streams send any buffer
        sent += raw.nbytes
    await stream.send(body)
    return sent + len(body)


async def receive_into(stream: ByteReceiveStream, buffer: bytearray) -> None:
    """Fill *buffer* from *stream*, a receive at a time (no intermediate copy of the whole)."""
    view, filled = memoryview(buffer), 0
    while filled < len(buffer):
        data = await stream.receive(min(len(buffer) - filled, 1 << 20))
        view[filled : filled + len(data)] = data
        filled += len(data)


async def receive_out_of_band(stream: BufferedByteReceiveStream) -> Any:
    # The header is small: a tight limit. The sizes in it are trusted, as the pickle is (this
    # receiver trusts its peer: see allowlisted_server.py for untrusted ones).
    sizes: list[int] = await streampickle.aload(stream, max_object_size=1 << 20)
    buffers = [bytearray(size) for size in sizes]  # memory we chose; the arrays will use it
    for buffer in buffers:
        await receive_into(stream, buffer)
    return await streampickle.aload(stream, buffers=buffers)


# -- the transfer ----------------------------------------------------------------------------


async def transfer(obj: Any, send: Send, receive: Receive) -> tuple[int, Any]:
    """Send *obj* from a client task to a server task over loopback TCP; return the bytes
    sent and the object the server received."""
    received: list[Any] = []
    done = anyio.Event()

    async def handle(connection: SocketStream) -> None:
        async with connection:
            received.append(await receive(BufferedByteReceiveStream(connection)))
        done.set()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        async with await anyio.connect_tcp("127.0.0.1", port) as client:
            sent = await send(obj, client)
            await done.wait()  # the server has the object: stop serving
        tg.cancel_scope.cancel()
    return sent, received[0]


async def main(megabytes: float = 64) -> dict[str, tuple[int, Any]]:
    """Send a numpy payload of about *megabytes* both ways; return, per variant, the bytes
    sent and the object received."""
    payload = make_payload(megabytes)
    arrays = sum(value.nbytes for value in payload.values() if isinstance(value, np.ndarray))
    print(f"payload: {arrays / 1e6:.1f} MB of arrays in a dict")
    sent: dict[str, tuple[int, Any]] = {}
    for variant, send, receive in (
        ("in band", send_in_band, receive_in_band),
        ("out of band", send_out_of_band, receive_out_of_band),
    ):
        size, received = await transfer(payload, send, receive)
        assert same(payload, received), f"{variant}: the arrays arrived different"
        sent[variant] = size, received
        print(f"{variant:12} {size / 1e6:7.1f} MB sent; every array equal (numpy.array_equal)")
    return sent


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--megabytes", type=float, default=64, help="size of the arrays (default: %(default)s)"
    )
    parser.add_argument(
        "--backend",
        choices=["asyncio", "trio"],
        default="asyncio",
        help="the event loop (default: %(default)s)",
    )
    args = parser.parse_args()
    anyio.run(main, args.megabytes, backend=args.backend)
