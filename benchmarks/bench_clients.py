"""Many clients at once: ``--clients`` connections each send one ~``--object-kb`` KB object to
one asyncio server, which receives each with `PickleStream` (or the naive way) and answers one
byte.

    python benchmarks/bench_clients.py                       # 1,000 and 5,000 clients, 3 rounds
    python benchmarks/bench_clients.py --clients 1000 --rounds 1
    python benchmarks/bench_clients.py --markdown benchmarks/results/clients.md

Ways (both ends change together; each round runs them alternately, each in a fresh server
process and a fresh clients process):

- ``streampickle``: the server wraps each connection in ``PickleStream.from_asyncio(reader,
  writer)`` and awaits ``receive()``; each client awaits ``PickleStream.send(obj)`` on its own.
- ``naive``: ``readexactly`` of an 8-byte length prefix and of the pickle, then
  ``pickle.loads``; each client writes ``prefix + pickle.dumps(obj, 5)`` and drains.

Every client then waits for the server's byte. Measured: the time from the first connection to
the last answer (the clients' process), the server's peak RSS over its RSS before the first
connection (``VmHWM`` after resetting it, Linux), the server's longest event-loop stall (a 1 ms
heartbeat's worst lateness), the clients' process peak RSS increase, and the CPU time each
process spent over the run (``time.process_time``: where the time goes, both ends sharing
2 cores). The server checks every
object against the one the client built; a damaged or missing one fails the run. Medians over
``--rounds`` with ranges.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import pickle
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_protocols import add_output_options, median_range, write_outputs
from bench_restricted import reset_peak, status_mib
from bench_server import make_object, raise_open_file_limit
from bench_stream import HOST, PREFIX, heartbeat, run_pair

import streampickle

WAYS = ("streampickle", "naive")
ACK = b"k"


# -- the server -----------------------------------------------------------------------------


async def serve(args: argparse.Namespace) -> dict[str, Any]:
    intact = 0
    done = asyncio.Event()
    started: list[float] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal intact
        if not started:
            started.append(time.monotonic())
        if args.way == "streampickle":
            obj = await streampickle.PickleStream.from_asyncio(reader, writer).receive()
        else:
            size = int.from_bytes(await reader.readexactly(PREFIX), "little")
            obj = pickle.loads(await reader.readexactly(size))
        if obj == make_object(obj["client"], args.object_kb):
            intact += 1
        del obj
        writer.write(ACK)
        await writer.drain()
        writer.close()
        if intact == args.clients:
            done.set()

    warm = streampickle.dumps(make_object(0, args.object_kb), 5)
    streampickle.loads(warm)
    gc.collect()
    server = await asyncio.start_server(handle, HOST, 0, backlog=args.clients)
    reset_peak()
    before, cpu = status_mib("VmRSS"), time.process_time()
    async with heartbeat() as beat:
        beat.reset()
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.wait_for(done.wait(), 900)
        stall = beat.stall()
    server.close()
    return {
        "intact": intact,
        "server_rss_mib": status_mib("VmHWM") - before,
        "server_stall_ms": stall * 1000,
        "server_s": time.monotonic() - started[0],
        "server_cpu_s": time.process_time() - cpu,
    }


# -- the clients ----------------------------------------------------------------------------


async def run_clients(args: argparse.Namespace) -> dict[str, Any]:
    port = int(sys.stdin.readline())
    objects = [make_object(number, args.object_kb) for number in range(args.clients)]
    gc.collect()
    reset_peak()
    before = status_mib("VmRSS")

    async def client(obj: Any) -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        if args.way == "streampickle":
            await streampickle.PickleStream.from_asyncio(reader, writer).send(obj)
        else:
            data = pickle.dumps(obj, 5)
            writer.write(len(data).to_bytes(PREFIX, "little") + data)
            await writer.drain()
        if await reader.readexactly(1) != ACK:
            raise RuntimeError("the server did not answer")
        writer.close()
        await writer.wait_closed()

    start, cpu = time.monotonic(), time.process_time()
    await asyncio.gather(*(client(obj) for obj in objects))
    return {
        "seconds": time.monotonic() - start,
        "clients_cpu_s": time.process_time() - cpu,
        "clients_rss_mib": status_mib("VmHWM") - before,
        "pickle_kb": len(pickle.dumps(objects[0], 5)) / 1000,
    }


# -- the parent -----------------------------------------------------------------------------


def run_case(way: str, clients: int, object_kb: int) -> dict[str, Any]:
    me = [sys.executable, str(Path(__file__).resolve()), f"--way={way}"]
    me += [f"--clients={clients}", f"--object-kb={object_kb}"]
    got, sent = run_pair([*me, "--role=server"], [*me, "--role=clients"], f"{way} {clients}")
    if got["intact"] != clients:
        raise RuntimeError(f"{way}: only {got['intact']} of {clients} objects arrived intact")
    return {**got, **sent}


COLUMNS = (
    ("time (s)", "seconds", "{:.2f}"),
    ("server peak +MiB", "server_rss_mib", "{:.0f}"),
    ("server longest stall (ms)", "server_stall_ms", "{:.0f}"),
    ("server CPU (s)", "server_cpu_s", "{:.2f}"),
    ("clients CPU (s)", "clients_cpu_s", "{:.2f}"),
    ("clients peak +MiB", "clients_rss_mib", "{:.0f}"),
)


def table(results: dict[int, dict[str, list[dict[str, Any]]]], note: str) -> str:
    version = ".".join(map(str, sys.version_info[:2]))
    lines = [
        f"# Many concurrent clients, one asyncio server (Python {version})",
        "",
        note or "Medians of the rounds (min-max); ratios: streampickle / naive.",
        "",
        "| clients | way | " + " | ".join(title for title, _, _ in COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for clients, ways in results.items():
        for way, runs in ways.items():
            cells = [median_range([run[key] for run in runs], form) for _, key, form in COLUMNS]
            lines.append(f"| {clients:,} | {way} | " + " | ".join(cells) + " |")
        ratios = []
        for _, key, _ in COLUMNS:
            ours = statistics.median(run[key] for run in ways["streampickle"])
            naive = statistics.median(run[key] for run in ways["naive"])
            ratios.append(f"{ours / naive:.2f}x" if naive > 0 else "-")
        lines.append(f"| {clients:,} | ratio | " + " | ".join(ratios) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--object-kb", type=int, default=100, help="each object's pickle, KB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--way", choices=WAYS, help=argparse.SUPPRESS)
    parser.add_argument("--role", choices=("server", "clients"), help=argparse.SUPPRESS)
    add_output_options(parser)
    args = parser.parse_args(argv)
    if args.role:
        args.clients = args.clients[0]
        raise_open_file_limit(args.clients + 64)
        role = serve if args.role == "server" else run_clients
        print(json.dumps(asyncio.run(role(args))), flush=True)
        return
    results: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for clients in args.clients:
        results[clients] = {way: [] for way in WAYS}
        for round_ in range(args.rounds):
            for way in WAYS if round_ % 2 == 0 else WAYS[::-1]:
                results[clients][way].append(run_case(way, clients, args.object_kb))
                print(f"{clients:>6,} {way:13s} {results[clients][way][-1]}", file=sys.stderr)
    report = {"python": sys.version, "results": {str(k): v for k, v in results.items()}}
    write_outputs(table(results, args.note), report, args)


if __name__ == "__main__":
    main()
