"""An asyncio TCP server and its clients exchanging Python objects with `PickleStream`.

    python examples/asyncio_server.py [--clients 4] [--jobs 20] [--values 10000]
    python examples/asyncio_server.py --serve 8765          # the server alone, until Ctrl-C
    python examples/asyncio_server.py --connect 8765        # one client against it

Request/response: each client sends work items (dicts holding a list of numbers) and the server
answers each with a summary dict. Both sides use plain asyncio streams (``asyncio.start_server``,
``asyncio.open_connection``); ``PickleStream.from_asyncio`` turns the ``(reader, writer)`` pair
into an object stream, so there is no length prefix and no ``pickle.dumps`` of the whole message:
each object is pickled and unpickled frame by frame as it crosses the socket.

Shutdown is clean: a client half-closes its side after its last item (``send_eof``), the server
reads ``anyio.EndOfStream`` between objects, answers nothing more and closes the connection; the
server itself is closed after the last client has finished.

Only unpickle from peers you trust: see ``allowlisted_server.py`` for a server that accepts
untrusted clients.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import anyio

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


async def handle_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Serve one connection: answer every object it sends until it half-closes."""
    # The PickleStream owns the writer: leaving the `async with` closes the connection.
    async with PickleStream.from_asyncio(reader, writer) as stream:
        while True:
            try:
                job = await stream.receive()
            except anyio.EndOfStream:  # the client is done (it ended cleanly between objects)
                return
            await stream.send(summarize(job))


async def run_client(port: int, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Send *jobs* one at a time to the server on *port*; return its answers in order."""
    reader, writer = await asyncio.open_connection(HOST, port)
    async with PickleStream.from_asyncio(reader, writer, protocol=5) as stream:
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
    check every answer, shut the server down, and return the answers per client."""
    connections: set[asyncio.Task[Any]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # a connection handler always runs in a task
        connections.add(task)
        await handle_client(reader, writer)

    server = await asyncio.start_server(handle, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    print(f"server listening on {HOST}:{port}")
    async with server:  # stops listening on exit
        work = [make_jobs(client, jobs, values) for client in range(clients)]
        results = await asyncio.gather(*(run_client(port, client_jobs) for client_jobs in work))
    # Server.wait_closed() waits for the connections only from Python 3.12 on: wait here.
    await asyncio.gather(*connections)
    await server.wait_closed()
    for client, (client_jobs, answers) in enumerate(zip(work, results, strict=True)):
        assert answers == [summarize(job) for job in client_jobs], f"client {client}: wrong answers"
        print(f"client {client}: {len(answers)} answers, all correct")
    print(f"{clients} clients x {jobs} jobs of {values:,} values: server shut down cleanly")
    return results


async def serve_forever(port: int) -> None:
    server = await asyncio.start_server(handle_client, HOST, port)
    print(f"serving on {HOST}:{port}; Ctrl-C to stop")
    async with server:
        await server.serve_forever()


async def connect(port: int, jobs: int, values: int) -> None:
    answers = await run_client(port, make_jobs(0, jobs, values))
    for answer in answers:
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
        try:
            asyncio.run(serve_forever(args.serve))
        except KeyboardInterrupt:  # asyncio.run has cancelled serve_forever: the server closed
            print("stopped")
    elif args.connect is not None:
        asyncio.run(connect(args.connect, args.jobs, args.values))
    else:
        asyncio.run(main(args.clients, args.jobs, args.values))
