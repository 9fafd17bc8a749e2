"""Server memory per in-flight stream: many clients stream one object each to one server.

`run_server_case` starts this script twice: ``--role server`` (one process, one event loop,
one task per connection receiving with ``aload``, or the naive way) and ``--role clients`` (one
process connecting all the clients at once). Each client's object spans several frames; a client
sends the first ``--gate-kb`` of its pickle and then waits, suspended by backpressure inside
``adump``, until the server sends it one byte. The server sends those bytes only once *every*
stream has delivered its first part, so at that moment all the loads are in flight together: it
reads its RSS then (``/proc/self/statm``), and reports (RSS then - RSS before the first
connection) / clients. It checks each object it receives against the one the client built.

    python benchmarks/bench_server.py --backend trio --clients 1000 --method streampickle
"""

from __future__ import annotations

import argparse
import gc
import json
import pickle
import resource
import sys
import time
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import ByteReceiveStream, ByteSendStream, SocketAttribute, SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream
from bench_stream import BACKENDS, HOST, PREFIX, TIMEOUT, current_rss_mib, run_async, run_pair

import streampickle

METHODS = ("streampickle", "naive")
GO = b"g"  # the byte that lets a client send the rest of its object
ROW = 100  # characters of padding per row of a client's object


def make_object(client: int, kilobytes: int) -> dict[str, Any]:
    """Client *client*'s object: rows of text pickling to about *kilobytes* KB."""
    rows = max(1, kilobytes * 1000 // (ROW + 16))
    return {"client": client, "rows": [f"{client}:{row}:" + "x" * ROW for row in range(rows)]}


def raise_open_file_limit(needed: int) -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to *needed* if the hard limit allows; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed and (hard == resource.RLIM_INFINITY or hard >= needed):
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
        soft = needed
    return soft


# ---------------------------------------------------------------------------------------------
# The server.


class InFlight:
    """Counts the streams that have delivered their first part; when all have, notes the RSS
    and releases every client."""

    def __init__(self, clients: int, gate: int) -> None:
        self.clients, self.gate = clients, gate
        self.arrived = 0
        self.rss_mib = 0.0
        self.all_in = anyio.Event()

    def passed_gate(self) -> None:
        self.arrived += 1
        if self.arrived == self.clients:
            self.rss_mib = current_rss_mib()
            self.all_in.set()


class CountingStream(ByteReceiveStream):
    """The server's view of a connection: tells `InFlight` when the first part has come."""

    def __init__(self, stream: SocketStream, flight: InFlight) -> None:
        self.stream, self.flight = stream, flight
        self.received = 0

    async def receive(self, max_bytes: int = 65536) -> bytes:
        data = await self.stream.receive(max_bytes)
        before, self.received = self.received, self.received + len(data)
        if before < self.flight.gate <= self.received:
            self.flight.passed_gate()
        return data

    async def aclose(self) -> None:
        await self.stream.aclose()


async def load(method: str, stream: CountingStream) -> Any:
    if method == "streampickle":
        return await streampickle.aload(stream)
    buffered = BufferedByteReceiveStream(stream)
    size = int.from_bytes(await buffered.receive_exactly(PREFIX), "little")
    return pickle.loads(await buffered.receive_exactly(size))


async def serve(args: argparse.Namespace) -> dict[str, Any]:
    flight = InFlight(args.clients, args.gate_kb * 1000)
    intact: set[int] = set()
    done = anyio.Event()

    async def handle(stream: SocketStream) -> None:
        async with stream, anyio.create_task_group() as group:

            async def release() -> None:
                await flight.all_in.wait()
                await stream.send(GO)

            group.start_soon(release)
            obj = await load(args.method, CountingStream(stream, flight))
            if obj == make_object(obj["client"], args.object_kb):
                intact.add(obj["client"])
            if len(intact) == args.clients:
                done.set()

    listener = await anyio.create_tcp_listener(local_host=HOST, backlog=args.clients)
    streampickle.loads(streampickle.dumps(make_object(0, 1)))  # warm up the engine
    gc.collect()
    before = current_rss_mib()
    print(listener.extra(SocketAttribute.local_port), flush=True)
    async with anyio.create_task_group() as group:
        group.start_soon(listener.serve, handle)
        with anyio.fail_after(TIMEOUT):
            await flight.all_in.wait()
            start = time.monotonic()
            await done.wait()
        group.cancel_scope.cancel()
    return {
        "intact": len(intact),
        "rss_before_mib": before,
        "rss_in_flight_mib": flight.rss_mib,
        "release_to_done_s": time.monotonic() - start,
    }


# ---------------------------------------------------------------------------------------------
# The clients.


class GatedStream(ByteSendStream):
    """A client's socket that stops after *gate* bytes until the server sends `GO`: the
    backpressure that holds ``adump`` (or the naive send) half-way through the object."""

    def __init__(self, stream: SocketStream, gate: int) -> None:
        self.stream, self.gate = stream, gate
        self.sent = 0

    async def send(self, item: bytes) -> None:
        view = memoryview(item)
        if self.sent < self.gate <= self.sent + len(view):
            cut = self.gate - self.sent
            await self.stream.send(view[:cut])  # type: ignore[arg-type]  # takes buffers
            if await self.stream.receive(1) != GO:
                raise RuntimeError("the server did not send the go-ahead byte")
            view = view[cut:]
        self.sent += len(item)
        await self.stream.send(view)  # type: ignore[arg-type]

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()


async def run_clients(args: argparse.Namespace) -> dict[str, Any]:
    async def client(number: int) -> None:
        obj = make_object(number, args.object_kb)
        async with await anyio.connect_tcp(HOST, port) as socket:
            gated = GatedStream(socket, args.gate_kb * 1000)
            if args.method == "streampickle":
                await streampickle.adump(obj, gated, protocol=5)
            else:
                data = pickle.dumps(obj, protocol=5)
                await gated.send(len(data).to_bytes(PREFIX, "little") + data)

    port = int(sys.stdin.readline())  # from the server, once it listens
    async with anyio.create_task_group() as group:
        for number in range(args.clients):
            group.start_soon(client, number)
    return {"pickle_kb": len(pickle.dumps(make_object(0, args.object_kb), protocol=5)) / 1000}


# ---------------------------------------------------------------------------------------------
# The parent.


def run_server_case(
    backend: str, method: str, clients: int, object_kb: int, gate_kb: int
) -> dict[str, Any]:
    """Run one server process and one clients process; return the server's measurements.

    Raises ``RuntimeError`` if a process fails or an object arrived damaged or missing.
    """
    if gate_kb * 1000 >= len(pickle.dumps(make_object(0, object_kb), protocol=5)):
        raise ValueError(f"object_kb ({object_kb}) must exceed gate_kb ({gate_kb})")
    me = [sys.executable, str(Path(__file__).resolve()), f"--backend={backend}"]
    me += [f"--method={method}", f"--clients={clients}"]
    me += [f"--object-kb={object_kb}", f"--gate-kb={gate_kb}"]
    got, sent = run_pair([*me, "--role=server"], [*me, "--role=clients"], f"{backend} {method}")
    if got["intact"] != clients:
        raise RuntimeError(f"only {got['intact']} of {clients} objects arrived intact")
    in_flight = got["rss_in_flight_mib"] - got["rss_before_mib"]
    return {
        "backend": backend,
        "method": method,
        "clients": clients,
        "pickle_kb": sent["pickle_kb"],
        "gate_kb": gate_kb,
        "server_rss_in_flight_mib": in_flight,
        "per_stream_kib": in_flight * 1024 / clients,
        "release_to_done_s": got["release_to_done_s"],
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--backend", choices=BACKENDS, default="asyncio")
    parser.add_argument("--method", choices=METHODS, default="streampickle")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--object-kb", type=int, default=256, help="each client's pickle, KB")
    parser.add_argument("--gate-kb", type=int, default=128, help="sent before the pause, KB")
    parser.add_argument("--role", choices=("server", "clients"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    raise_open_file_limit(args.clients + 64)
    if args.role is None:
        case = run_server_case(
            args.backend, args.method, args.clients, args.object_kb, args.gate_kb
        )
        print(json.dumps(case, indent=2))
        return
    role = serve if args.role == "server" else run_clients
    print(json.dumps(run_async(args.backend, lambda: role(args))), flush=True)


if __name__ == "__main__":
    main()
