"""1,000 clients streaming to one server at once (issue 5), on asyncio and trio.

Each client pickles its own object (several frames) into a TCP connection with ``adump``; the
server receives each connection with a `PickleStream`. Every client is held by backpressure
after its first ``GATE`` bytes until *all* the server's streams have received theirs, so all the
loads are in flight at the same time; then they all finish. Every object must arrive intact,
exactly once, followed by a clean end of stream. The process's RSS increase at the all-in-flight
moment, per stream, is reported (``record_property``; both ends of every connection live in
this process: `benchmarks/bench_server.py` measures a server alone).
"""

from __future__ import annotations

import gc
import resource
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import ByteSendStream, ByteStream, SocketAttribute, SocketStream

import streampickle

pytestmark = pytest.mark.anyio

CLIENTS = 1000  # about 5 s per backend on 2 cores
GATE = 100_000  # bytes each client sends before it waits for all the others
FDS_PER_CLIENT = 2  # both ends of each connection are in this process
SPARE_FDS = 64  # the listener, the event loop, pytest


def make_object(client: int) -> dict[str, Any]:
    """About 230 KB pickled (four frames), different for every client."""
    return {"client": client, "rows": [f"{client}:{row}:" + "x" * 100 for row in range(2000)]}


def rss_mib() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / (1 << 20)


def clients_allowed(wanted: int) -> tuple[int, str]:
    """Raise the soft open-file limit for *wanted* clients if the hard limit allows; else the
    number of clients it allows, with the reason."""
    needed = wanted * FDS_PER_CLIENT + SPARE_FDS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed and (hard == resource.RLIM_INFINITY or hard >= needed):
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
        soft = needed
    if soft >= needed:
        return wanted, ""
    allowed = (soft - SPARE_FDS) // FDS_PER_CLIENT
    return allowed, f"RLIMIT_NOFILE hard limit {hard} allows {allowed} clients, not {wanted}"


@dataclass
class InFlight:
    """Counts the server's streams that have received their first ``GATE`` bytes."""

    clients: int
    arrived: int = 0
    rss_mib: float = 0.0
    all_in: anyio.Event = field(default_factory=anyio.Event)

    def passed_gate(self) -> None:
        self.arrived += 1
        if self.arrived == self.clients:
            self.rss_mib = rss_mib()
            self.all_in.set()


@dataclass(eq=False)
class CountingStream(ByteStream):
    """The server's transport: tells `InFlight` when its first ``GATE`` bytes have come."""

    transport_stream: SocketStream
    passed_gate: Callable[[], None]
    received: int = 0

    async def receive(self, max_bytes: int = 65536) -> bytes:
        data = await self.transport_stream.receive(max_bytes)
        before, self.received = self.received, self.received + len(data)
        if before < GATE <= self.received:
            self.passed_gate()
        return data

    async def send(self, item: bytes) -> None:
        await self.transport_stream.send(item)

    async def send_eof(self) -> None:
        await self.transport_stream.send_eof()

    async def aclose(self) -> None:
        await self.transport_stream.aclose()


@dataclass(eq=False)
class GatedStream(ByteSendStream):
    """A client's transport: after ``GATE`` bytes, ``send`` waits for *go* (backpressure that
    holds ``adump`` half-way through the object)."""

    transport_stream: SocketStream
    go: anyio.Event
    sent: int = 0

    async def send(self, item: bytes) -> None:
        view = memoryview(item)
        if self.sent < GATE <= self.sent + len(view):
            cut = GATE - self.sent
            await self.transport_stream.send(view[:cut])  # type: ignore[arg-type]
            await self.go.wait()
            view = view[cut:]
        self.sent += len(item)
        await self.transport_stream.send(view)  # type: ignore[arg-type]

    async def send_eof(self) -> None:
        await self.transport_stream.send_eof()

    async def aclose(self) -> None:
        await self.transport_stream.aclose()


async def stream_all_at_once(clients: int) -> tuple[dict[int, bool], float]:
    """Run the server and *clients* clients; return {client: object intact} and the RSS
    increase (MiB) when all the streams were in flight."""
    gc.collect()  # an earlier test's cyclic garbage would be freed mid-measurement
    objects = [make_object(client) for client in range(clients)]  # before the RSS baseline
    flight = InFlight(clients)
    intact: dict[int, bool] = {}
    done = anyio.Event()

    async def handle(socket: SocketStream) -> None:
        async with streampickle.PickleStream(CountingStream(socket, flight.passed_gate)) as peer:
            obj = await peer.receive()
            with pytest.raises(anyio.EndOfStream):  # one object, then a clean end
                await peer.receive()
        intact[obj["client"]] = obj == objects[obj["client"]] and obj["client"] not in intact
        if len(intact) == clients:
            done.set()

    async def client(number: int, port: int) -> None:
        async with await anyio.connect_tcp("127.0.0.1", port) as socket:
            sent = await streampickle.adump(objects[number], GatedStream(socket, flight.all_in))
            assert sent == socket_bytes[number]

    socket_bytes = [len(streampickle.dumps(obj)) for obj in objects]
    assert min(socket_bytes) > 2 * GATE  # every client is paused mid-object, frames to go
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", backlog=clients)
    port = listener.extra(SocketAttribute.local_port)
    before = rss_mib()
    with anyio.fail_after(120):  # hang guard only
        async with listener, anyio.create_task_group() as group:
            group.start_soon(listener.serve, handle)
            async with anyio.create_task_group() as senders:
                for number in range(clients):
                    senders.start_soon(client, number, port)
            await done.wait()
            group.cancel_scope.cancel()
    return intact, flight.rss_mib - before


async def test_1000_clients_stream_to_one_server_at_once(
    record_property: Callable[[str, object], None],
) -> None:
    clients, reason = clients_allowed(CLIENTS)
    assert clients >= 100, reason  # too few to mean anything
    if reason:
        record_property("scaled_down", reason)
    intact, in_flight_mib = await stream_all_at_once(clients)
    assert sorted(intact) == list(range(clients))
    assert all(intact.values()), [client for client, ok in intact.items() if not ok]
    per_stream_kib = in_flight_mib * 1024 / clients
    record_property("rss_per_in_flight_stream_kib", round(per_stream_kib, 1))
    print(f"{clients} streams in flight: +{in_flight_mib:.1f} MiB, {per_stream_kib:.0f} KiB each")
