"""A trio TCP server and its clients exchanging Python objects with `PickleStream`.

    python examples/trio_server.py [--clients 4] [--jobs 20] [--values 10000]
    python examples/trio_server.py --serve 8765          # the server alone, until Ctrl-C
    python examples/trio_server.py --connect 8765        # one client against it

The trio twin of ``asyncio_server.py``, written the trio-native way: ``trio.serve_tcp`` calls
the handler with a ``trio.SocketStream`` for each connection, the client opens one with
``trio.open_tcp_stream``, and ``PickleStream.from_trio`` turns either into an object stream
(``send(obj)`` / ``receive()``), pickled frame by frame as it crosses the socket.

Shutdown is structured: a client half-closes its side after its last item (``send_eof``), the
handler reads ``anyio.EndOfStream`` between objects and returns (closing the connection), and the
server is stopped by cancelling the nursery it runs in once every client is done.

Only unpickle from peers you trust: see ``allowlisted_server.py`` for untrusted clients.
"""

from __future__ import annotations

import argparse
import functools
import signal
from typing import Any

import anyio
import trio

from streampickle import PickleStream

HOST = "127.0.0.1"


def summarize(job: dict[str, Any]) -> dict[str, Any]:
    """The server's work: summarize one job. Also the oracle the client can check against."""
    values: list[float] = job["values"]
    return {
        "id": job["id"],
        "count": len(values),
        "total": sum(values),
        "low": min(values, default=None),
        "high": max(values, default=None),
    }


async def handle_client(connection: trio.SocketStream) -> None:
    """Serve one connection: answer every object it sends until it half-closes."""
    # The PickleStream owns the trio stream: leaving the `async with` closes the connection.
    async with PickleStream.from_trio(connection) as stream:
        while True:
            try:
                job = await stream.receive()
            except anyio.EndOfStream:  # the client is done (it ended cleanly between objects)
                return
            await stream.send(summarize(job))


async def run_client(port: int, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Send *jobs* one at a time to the server on *port*; return its answers in order."""
    connection = await trio.open_tcp_stream(HOST, port)
    async with PickleStream.from_trio(connection, protocol=5) as stream:
        answers = []
        for job in jobs:
            await stream.send(job)
            answers.append(await stream.receive())
        await stream.send_eof()  # tell the server we are done; it closes its side
        return answers


def make_jobs(client: int, jobs: int, values: int) -> list[dict[str, Any]]:
    return [
        {
            "id": (client, job),
            "values": [float((client + 1) * job * i % 997) for i in range(values)],
        }
        for job in range(jobs)
    ]


async def main(
    clients: int = 4, jobs: int = 20, values: int = 10_000
) -> list[list[dict[str, Any]]]:
    """Start a server on a free loopback port, run *clients* concurrent clients against it,
    check every answer, stop the server, and return the answers per client."""
    work = [make_jobs(client, jobs, values) for client in range(clients)]
    results: list[list[dict[str, Any]]] = [[] for _ in work]

    async def client(index: int) -> None:
        results[index] = await run_client(port, work[index])

    async with trio.open_nursery() as server_nursery:
        # nursery.start returns once the server listens; port 0 picks a free port.
        listeners = await server_nursery.start(
            functools.partial(trio.serve_tcp, handle_client, 0, host=HOST)
        )
        port = listeners[0].socket.getsockname()[1]
        print(f"server listening on {HOST}:{port}")
        async with trio.open_nursery() as clients_nursery:
            for index in range(clients):
                clients_nursery.start_soon(client, index)
        # Every client is done and has closed its connection: stop the server.
        server_nursery.cancel_scope.cancel()
    for index, (client_jobs, answers) in enumerate(zip(work, results, strict=True)):
        assert answers == [summarize(job) for job in client_jobs], f"client {index}: wrong answers"
        print(f"client {index}: {len(answers)} answers, all correct")
    print(f"{clients} clients x {jobs} jobs of {values:,} values: server shut down cleanly")
    return results


async def serve_forever(port: int) -> None:
    """Serve on *port* until SIGINT (Ctrl-C) or SIGTERM, then stop cleanly."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(trio.serve_tcp, handle_client, port, host=HOST))
            print(f"serving on {HOST}:{port}; Ctrl-C to stop")
            async for signum in signals:
                print(f"{signal.Signals(signum).name}: stopping")
                nursery.cancel_scope.cancel()  # closes the listener and every connection
                break


async def connect(port: int, jobs: int, values: int) -> None:
    for answer in await run_client(port, make_jobs(0, jobs, values)):
        print(answer)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--clients",
        type=int,
        default=4,
        help="concurrent clients in demo mode (default: %(default)s)",
    )
    parser.add_argument(
        "--jobs", type=int, default=20, help="work items per client (default: %(default)s)"
    )
    parser.add_argument(
        "--values", type=int, default=10_000, help="numbers per work item (default: %(default)s)"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--serve", type=int, metavar="PORT", help="only run the server")
    mode.add_argument("--connect", type=int, metavar="PORT", help="only run one client")
    args = parser.parse_args()
    if args.serve is not None:
        trio.run(serve_forever, args.serve)
    elif args.connect is not None:
        trio.run(connect, args.connect, args.jobs, args.values)
    else:
        trio.run(main, args.clients, args.jobs, args.values)
