"""Stream a pickle over loopback TCP: `streampickle.adump` against naive ``pickle.dumps`` + write.

Sender and receiver run in separate processes (this script runs itself with ``--role``). For
each payload and method it reports:

- wall time: from the sender starting to pickle to the receiver's last byte;
- time to first byte: from the sender starting to pickle to the receiver's first byte;
- sender peak RSS increase: ``ru_maxrss`` after the send minus before (the payload is built
  before the first reading, so only what sending adds is counted);
- max event-loop stall: the longest a 1 ms heartbeat task in the sender's loop was late.

The two processes share ``time.monotonic()`` (CLOCK_MONOTONIC on Linux). Figures are medians
over ``--repeat`` runs. The machine is shared, so treat them as indicative::

    python benchmarks/bench_stream.py                # 300k records and 400 MB of arrays
    python benchmarks/bench_stream.py --quick --verify
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import pickle
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import streampickle

HEARTBEAT = 0.001  # seconds between heartbeats in the sender's event loop
METHODS = ("naive", "adump")
PAYLOADS = ("records", "arrays")


def build(payload: str, args: argparse.Namespace) -> Any:
    """The object to send: a graph of small records, or large numpy arrays."""
    if payload == "records":
        return [
            {"id": i, "name": f"user{i}", "email": f"u{i}@example.com", "score": i / 3, "ok": True}
            for i in range(args.records)
        ]
    import numpy  # only the arrays payload needs it

    size = (args.arrays_mb << 20) // args.array_count
    return [numpy.full(size, i, numpy.uint8) for i in range(args.array_count)]  # pages touched


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


async def heartbeat(lateness: list[float]) -> None:
    """Record how late each 1 ms sleep wakes up: the time the loop was blocked."""
    while True:
        before = time.monotonic()
        await asyncio.sleep(HEARTBEAT)
        lateness.append(time.monotonic() - before - HEARTBEAT)


class Discard:
    async def write(self, data: bytes) -> None:
        pass


async def send(obj: Any, method: str, port: int, protocol: int) -> dict[str, float]:
    await streampickle.adump(None, Discard())  # warm up: anyio loads its backend on first use
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    lateness: list[float] = [0.0]
    beating = asyncio.ensure_future(heartbeat(lateness))
    await asyncio.sleep(0.01)  # let the heartbeat start
    start = time.monotonic()
    if method == "adump":
        sent = await streampickle.adump(obj, writer, protocol)
    else:
        data = pickle.dumps(obj, protocol)
        writer.write(data)
        await writer.drain()
        sent = len(data)
        del data
    writer.close()
    await writer.wait_closed()  # the transport has flushed its buffer
    beating.cancel()
    return {"start": start, "bytes": sent, "max_stall_ms": max(lateness) * 1000}


def run_sender(args: argparse.Namespace) -> None:
    obj = build(args.payload, args)
    gc.collect()
    before = max_rss_mb()
    result: dict[str, Any] = asyncio.run(send(obj, args.method, args.port, args.protocol))
    result["rss_increase_mb"] = max_rss_mb() - before
    if args.verify:  # after the measurement: this builds the whole pickle
        result["sha256"] = hashlib.sha256(pickle.dumps(obj, args.protocol)).hexdigest()
    print(json.dumps(result), flush=True)


def run_receiver(args: argparse.Namespace) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        print(server.getsockname()[1], flush=True)
        connection, _ = server.accept()
    buffer, received, first = bytearray(1 << 20), 0, 0.0
    kept = bytearray()
    with connection:
        while count := connection.recv_into(buffer):
            first = first or time.monotonic()
            received += count
            if args.verify:
                kept += memoryview(buffer)[:count]
    result: dict[str, Any] = {"first_byte": first, "last_byte": time.monotonic()}
    result["received"] = received
    if args.verify:
        pickle.loads(kept)  # raises if the stream is not one whole pickle
        result["sha256"] = hashlib.sha256(kept).hexdigest()
    print(json.dumps(result), flush=True)


def role_args(args: argparse.Namespace) -> list[str]:
    flags = ["--records", args.records, "--arrays-mb", args.arrays_mb]
    flags += ["--array-count", args.array_count, "--protocol", args.protocol]
    return [str(flag) for flag in flags] + (["--verify"] if args.verify else [])


def run_once(payload: str, method: str, args: argparse.Namespace) -> dict[str, Any]:
    """One transfer: a receiver process, then a sender process connecting to it."""
    me = [sys.executable, str(Path(__file__).resolve())]
    with subprocess.Popen(
        [*me, "--role", "receive", *role_args(args)], stdout=subprocess.PIPE, text=True
    ) as receiver:
        assert receiver.stdout is not None
        port = receiver.stdout.readline().strip()
        sender = subprocess.run(
            [
                *me,
                "--role",
                "send",
                "--port",
                port,
                "--method",
                method,
                "--payload",
                payload,
                *role_args(args),
            ],
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        )
        got = json.loads(receiver.stdout.read())
    sent = json.loads(sender.stdout)
    if got["received"] != sent["bytes"] or got.get("sha256") != sent.get("sha256"):
        raise RuntimeError(f"{payload}/{method}: receiver got {got}, sender sent {sent}")
    return {
        "payload": payload,
        "method": method,
        "megabytes": sent["bytes"] / 1e6,
        "wall_s": got["last_byte"] - sent["start"],
        "first_byte_ms": (got["first_byte"] - sent["start"]) * 1000,
        "rss_increase_mb": sent["rss_increase_mb"],
        "max_stall_ms": sent["max_stall_ms"],
        "verified": args.verify,
    }


FIELDS = ("megabytes", "wall_s", "first_byte_ms", "rss_increase_mb", "max_stall_ms")


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    row = {key: runs[0][key] for key in ("payload", "method", "verified")}
    row.update({key: statistics.median(run[key] for run in runs) for key in FIELDS})
    row["runs"] = [{key: run[key] for key in FIELDS} for run in runs]
    return row


def print_table(rows: list[dict[str, Any]]) -> None:
    header = f"{'payload':8} {'method':6} {'MB':>8} {'wall s':>8} {'TTFB ms':>9}"
    print(header + f" {'RSS +MB':>8} {'stall ms':>9}")
    for row in rows:
        print(
            f"{row['payload']:8} {row['method']:6} {row['megabytes']:8.1f} {row['wall_s']:8.3f}"
            f" {row['first_byte_ms']:9.1f} {row['rss_increase_mb']:8.1f}"
            f" {row['max_stall_ms']:9.1f}"
        )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=300_000, help="small records in the graph")
    parser.add_argument("--arrays-mb", type=int, default=400, help="total size of the arrays")
    parser.add_argument("--array-count", type=int, default=8, help="how many arrays")
    parser.add_argument("--protocol", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; medians reported")
    parser.add_argument("--payloads", default=",".join(PAYLOADS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run: a smoke test")
    parser.add_argument("--verify", action="store_true", help="check the received pickle")
    parser.add_argument("--json", type=Path, default=Path("bench_stream.json"))
    parser.add_argument("--role", choices=("send", "receive"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--payload", choices=PAYLOADS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.records, args.arrays_mb, args.array_count, args.repeat = 2000, 4, 2, 1
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.role == "send":
        return run_sender(args)
    if args.role == "receive":
        return run_receiver(args)
    rows = []
    for payload in args.payloads.split(","):
        for method in args.methods.split(","):
            rows.append(median_row([run_once(payload, method, args) for _ in range(args.repeat)]))
    print_table(rows)
    config = {k: v for k, v in vars(args).items() if k not in ("role", "port", "json")}
    config.update(python=sys.version.split()[0], platform=sys.platform)
    args.json.write_text(json.dumps({"config": config, "results": rows}, indent=2, default=str))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
