"""Stream a large object graph over loopback TCP with adump/aload, and say what happened.

    python examples/stream_graph.py [--records 300000] [--backend asyncio|trio]

A server task and a client task run in one process on one event loop, as they would in an async
service. The client pickles a graph of small records with ``adump`` straight into the socket;
the server unpickles it with ``aload`` as the frames arrive. A heartbeat task ticks every
millisecond meanwhile: the longest gap between its ticks is how long the loop was blocked. Then
the same transfer the naive way (``pickle.dumps`` + send of a length prefix and the whole pickle,
``receive_exactly`` + ``pickle.loads``) for comparison.
"""

from __future__ import annotations

import argparse
import pickle
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

import streampickle

Receive = Callable[[BufferedByteReceiveStream], Awaitable[Any]]


@dataclass
class Report:
    sent_bytes: int = 0
    writes: int = 0
    wall_s: float = 0.0
    max_stall_s: float = 0.0
    received: Any = field(default=None, repr=False)


async def streamed_send(obj: Any, stream: SocketStream, report: Report) -> int:
    def progress(sent: int) -> None:
        report.writes += 1

    return await streampickle.adump(obj, stream, protocol=5, progress=progress)


async def streamed_receive(stream: BufferedByteReceiveStream) -> Any:
    return await streampickle.aload(stream)


async def naive_send(obj: Any, stream: SocketStream, report: Report) -> int:
    data = pickle.dumps(obj, protocol=5)  # the whole pickle, built while the loop waits
    await stream.send(len(data).to_bytes(8, "little") + data)
    report.writes += 1
    return len(data)


async def naive_receive(stream: BufferedByteReceiveStream) -> Any:
    size = int.from_bytes(await stream.receive_exactly(8), "little")
    return pickle.loads(await stream.receive_exactly(size))


async def heartbeat(report: Report, done: anyio.Event) -> None:
    last = time.perf_counter()
    while not done.is_set():
        await anyio.sleep(0.001)
        now = time.perf_counter()
        report.max_stall_s = max(report.max_stall_s, now - last - 0.001)
        last = now


async def transfer(obj: Any, send: Any, receive: Receive) -> Report:
    report = Report()
    done = anyio.Event()

    async def handle(server_stream: SocketStream) -> None:
        async with server_stream:
            report.received = await receive(BufferedByteReceiveStream(server_stream))
        done.set()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        tg.start_soon(heartbeat, report, done)
        async with await anyio.connect_tcp("127.0.0.1", port) as client:
            start = time.perf_counter()
            report.sent_bytes = await send(obj, client, report)
            await done.wait()
        report.wall_s = time.perf_counter() - start
        tg.cancel_scope.cancel()  # stop serving
    return report


def make_graph(records: int) -> list[dict[str, Any]]:
    return [
        {"id": i, "name": f"record {i}", "score": i / 7, "tags": ("a", "b"), "parent": i // 2}
        for i in range(records)
    ]


async def main(records: int) -> None:
    graph = make_graph(records)
    print(f"object graph: {records:,} records")
    rows = []
    for name, send, receive in (
        ("streampickle adump/aload", streamed_send, streamed_receive),
        ("naive dumps+send / receive+loads", naive_send, naive_receive),
    ):
        report = await transfer(graph, send, receive)
        assert report.received == graph, "the object arrived different"
        rows.append((name, report))
        print(
            f"{name:34} {report.sent_bytes / 1e6:7.1f} MB in {report.writes:4} writes, "
            f"{report.wall_s:5.2f} s, longest event-loop stall {report.max_stall_s * 1e3:6.1f} ms"
        )
    print("the object arrived intact both ways (checked with ==)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args()
    anyio.run(main, args.records, backend=args.backend)
