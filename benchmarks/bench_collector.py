"""Receiving object graphs without the garbage collector's toll: streampickle's receive against
the receiver's own floor, ``pickle.loads`` in a fresh process with the collector off.

    python benchmarks/bench_collector.py                 # 125k-1M records, 3 rounds: ~3 minutes
    python benchmarks/bench_collector.py --quick         # 50k and 100k records, 1 round
    python benchmarks/bench_collector.py --markdown benchmarks/results/collector-3.11.md

The payload: ``--records`` small records the collector tracks (`record`: a dict holding a
list), at protocol 5. Ways, each in fresh processes, run alternately in each round:

- ``streampickle``: a sender process ``adump``s the list over loopback TCP (asyncio), a
  receiver process ``aload``s it; the time is from the sender's start to the object whole.
- ``streampickle, pause off``: the same, the receiver having called
  ``streampickle.set_gc_pause(False)`` (the collector as plain pickle has it).
- ``floor``: ``pickle.loads`` of the same bytes (read from a file first) in a fresh process,
  with the collector off (``gc.disable()``): what any receiver pays at least.
- ``pickle.loads, collector on``: the same with the collector on, as users run it.

Also for the receivers: the longest stall of the event loop during the receive (a 1 ms
heartbeat task's worst lateness, see `bench_stream.Heartbeat`), the full collections run
during it (``gc.get_stats()``), and the time of one ``gc.collect()`` right after: the full
collection CPython runs some time later in every way (its cost; it is not part of the receive,
and comes when the collector's own trigger fires). For the floor, also the time the C
unpickler takes to free its memo when a load ends (`memo_freed_ms`): one step that every
load of these bytes runs at its end, so no receiver's longest stall can be shorter. Medians
over ``--rounds`` with ranges.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_stream
from bench_protocols import add_output_options, median_range, write_outputs

import streampickle

SIZES = (125_000, 250_000, 500_000, 1_000_000)
QUICK_SIZES = (50_000, 100_000)
WAYS = ("streampickle", "streampickle, pause off", "floor", "pickle.loads, collector on")


def record(i: int) -> dict[str, Any]:
    """A record the collector tracks: it holds a list (a dict of atomic values is untracked)."""
    return {"id": i, "name": f"user{i}", "score": i / 3, "tags": [i % 7, "x"]}


def records(count: int) -> list[dict[str, Any]]:
    return [record(i) for i in range(count)]


# -- the children ---------------------------------------------------------------------------


def collected_after() -> float:
    """Milliseconds of one full collection, run now."""
    start = time.perf_counter()
    gc.collect()
    return (time.perf_counter() - start) * 1000


def floor_child(args: argparse.Namespace) -> dict[str, Any]:
    data = args.file.read_bytes()
    pickle.loads(pickle.dumps(records(100), 5))  # warm-up
    gc.collect()
    if args.gc == "off":
        gc.disable()
    full = gc.get_stats()[-1]["collections"]
    start = time.perf_counter()
    obj = pickle.loads(data)
    seconds = time.perf_counter() - start
    full = gc.get_stats()[-1]["collections"] - full
    gc.enable()
    assert len(obj) == args.records and obj[-1] == record(args.records - 1)
    return {
        "seconds": seconds,
        "full_collections": full,
        "collect_after_ms": collected_after(),
        "memo_freed_ms": memo_freed_ms(data),
    }


def memo_freed_ms(data: bytes) -> float:
    """Milliseconds the C unpickler takes to free its memo once a load of *data* is done (one
    reference per memoized object, each touched once more): a single step inside every load
    of these bytes, ``pickle.loads`` and streampickle's alike, which nothing can split."""
    gc.disable()
    unpickler = pickle.Unpickler(io.BytesIO(data))
    obj = unpickler.load()
    start = time.perf_counter()
    del unpickler
    freed = (time.perf_counter() - start) * 1000
    del obj
    gc.enable()
    return freed


async def receive(args: argparse.Namespace) -> dict[str, Any]:
    if args.gc == "off":
        streampickle.set_gc_pause(False)
    await bench_stream.warm_up(bench_stream.Case("asyncio", "streampickle", "records", 0.01))

    def announce(port: int) -> None:
        print(port, flush=True)

    stream, _ = await bench_stream.accept("asyncio", announce)
    gc.collect()
    full = gc.get_stats()[-1]["collections"]
    async with bench_stream.heartbeat() as beat:
        beat.reset()
        cpu = time.process_time()
        obj = await streampickle.aload(stream)
        done = time.monotonic()
        cpu = time.process_time() - cpu
        stall = beat.stall()
    full = gc.get_stats()[-1]["collections"] - full
    assert len(obj) == args.records and obj[-1] == record(args.records - 1)
    return {
        "done": done,
        "first_byte": stream.first_byte,
        "receiver_cpu_s": cpu,
        "stall_ms": stall * 1000,
        "full_collections": full,
        "collect_after_ms": collected_after(),
    }


async def send(args: argparse.Namespace, obj: Any) -> dict[str, Any]:
    """Blast the pickle, made before the clock starts, in 1 MiB writes (so that the receiver
    is measured alone: pickling these records takes longer than loading them); or, with
    ``--live``, ``adump`` it."""
    data = b"" if args.live else pickle.dumps(obj, 5)
    port = int(sys.stdin.readline())
    connection = await bench_stream.Connection.open("asyncio", port)
    start = time.monotonic()
    if args.live:
        await streampickle.adump(obj, connection.stream, 5)
    else:
        view = memoryview(data)
        for offset in range(0, len(data), 1 << 20):
            await connection.send_all(view[offset : offset + (1 << 20)])  # type: ignore[arg-type]
    await connection.aclose()
    return {"start": start}


def child(args: argparse.Namespace) -> None:
    if args.role == "floor":
        result = floor_child(args)
    elif args.role == "receive":
        result = bench_stream.run_async("asyncio", lambda: receive(args))
    else:
        obj = records(args.records)
        result = bench_stream.run_async("asyncio", lambda: send(args, obj))
    print(json.dumps(result), flush=True)


# -- the parent -----------------------------------------------------------------------------


def me(*flags: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *flags]


def run_way(way: str, count: int, file: Path, live: bool) -> dict[str, Any]:
    flags = [f"--records={count}"] + (["--live"] if live else [])
    if way in ("floor", "pickle.loads, collector on"):
        gc_flag = "--gc=off" if way == "floor" else "--gc=on"
        done = subprocess.run(
            me(*flags, "--role=floor", gc_flag, f"--file={file}"),
            capture_output=True,
            text=True,
            check=True,
            timeout=900,
        )
        return dict(json.loads(done.stdout))
    gc_flag = "--gc=off" if way.endswith("pause off") else "--gc=on"
    got, sent = bench_stream.run_pair(
        me(*flags, "--role=receive", gc_flag), me(*flags, "--role=send"), f"{way} {count}"
    )
    return {
        **got,
        "seconds": got["done"] - got["first_byte"],
        "wall_s": got["done"] - sent["start"],
    }


def table(results: dict[int, dict[str, list[dict[str, Any]]]], note: str) -> str:
    version = ".".join(map(str, sys.version_info[:2]))
    lines = [
        f"# Receiving object graphs: the collector's toll (Python {version})",
        "",
        note or "Medians of the rounds (min-max). Ratios: the way's time / the floor's.",
        "",
        "| records | way | time (s) | / floor | longest loop stall (ms) | full collections "
        "during | one gc.collect() after (ms) | the unpickler's memo freed (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for count, ways in results.items():
        floor = statistics.median(run["seconds"] for run in ways["floor"])
        for way, runs in ways.items():
            seconds = [run["seconds"] for run in runs]
            stall = [run["stall_ms"] for run in runs if "stall_ms" in run]
            freed = [run["memo_freed_ms"] for run in runs if "memo_freed_ms" in run]
            lines.append(
                f"| {count:,} | {way} | {median_range(seconds, '{:.2f}')} | "
                f"{statistics.median(seconds) / floor:.2f}x | "
                f"{median_range(stall, '{:.0f}') if stall else '-'} | "
                f"{statistics.median(run['full_collections'] for run in runs):.0f} | "
                f"{statistics.median(run['collect_after_ms'] for run in runs):.0f} | "
                f"{median_range(freed, '{:.0f}') if freed else '-'} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="50k and 100k records, 1 round")
    parser.add_argument("--sizes", type=int, nargs="+", help="record counts")
    parser.add_argument("--rounds", type=int, help="rounds (3; quick 1)")
    parser.add_argument("--live", action="store_true", help="the sender adumps as it sends")
    parser.add_argument("--role", choices=("floor", "receive", "send"), help=argparse.SUPPRESS)
    parser.add_argument("--records", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--gc", choices=("on", "off"), default="on", help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    add_output_options(parser)
    args = parser.parse_args(argv)
    if args.role:
        return child(args)
    sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    rounds = args.rounds or (1 if args.quick else 3)
    results: dict[int, dict[str, list[dict[str, Any]]]] = {}
    with tempfile.TemporaryDirectory() as directory:
        for count in sizes:
            file = Path(directory) / f"{count}.pickle"
            file.write_bytes(pickle.dumps(records(count), 5))
            results[count] = {way: [] for way in WAYS}
            for round_ in range(rounds):
                order = WAYS if round_ % 2 == 0 else WAYS[::-1]
                for way in order:
                    results[count][way].append(run_way(way, count, file, args.live))
                    print(f"{count:>9,} {way:28s} {results[count][way][-1]}", file=sys.stderr)
    report = {"python": sys.version, "results": {str(k): v for k, v in results.items()}}
    write_outputs(table(results, args.note), report, args)


if __name__ == "__main__":
    main()
