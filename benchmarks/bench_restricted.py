"""What restricted loading (``allow=``) costs, as a ratio to ``pickle.loads`` of the same bytes.

    python benchmarks/bench_restricted.py            # full sizes, 3 rounds: 3-4 minutes on 2 cores
    python benchmarks/bench_restricted.py --quick    # small sizes, 2 rounds: under a minute
    python benchmarks/bench_restricted.py --markdown benchmarks/results/restricted.md \\
        --json benchmarks/results/restricted.json
    python benchmarks/bench_restricted.py --cases large --mb 50 --rounds 5

Cases (``--cases``):

- ``records``: ``--records`` (100,000) small dicts (`record`) pickled at protocol 5;
  ``streampickle.loads(data, allow=[], max_opcodes=None, max_stack_depth=None)`` against
  ``pickle.loads(data)``: time, and peak memory.
- ``ints``: ``list(range(--ints))`` (1,000,000) at protocol 2, the same two calls.
- ``numbers``: a set of --ints / 2 ints from 2**40 and as many floats at protocol 2, which
  writes it as ``set([...])``: restricted with ``allow=ALLOW_BUILTINS`` (for ``set``), the
  list's census of its members' hashes (docs/security.md) and the ints past 2**31.
- ``large``: one ``bytes`` object of ``--mb`` MB (300; 1 MB = 10**6 bytes) at protocol 5,
  restricted with each of ``max_payload_size``, ``max_frame_size`` and ``max_object_size``
  that the pickle exceeds lifted (``None``): at 300 MB, ``max_payload_size`` (64 MiB).
- ``stall``: ~``--stall-mb`` MB (20) of records at protocol 5 received over loopback TCP on
  asyncio, the sender in another process: ``await streampickle.aload(reader, allow=[], ...)``
  (``max_opcodes``, ``max_stack_depth`` and ``max_memo_size`` lifted) against
  ``readexactly`` of the whole pickle then ``pickle.loads`` of it in the event loop. The
  figure is the longest gap between the wake-ups of a ticker task sleeping 1 ms in a loop,
  over the receive (from the first byte to the object); also the loop passes over the receive
  (counted by a task that awaits ``asyncio.sleep(0)`` in a loop) and the pickle's frames.
  The receiver runs as a server would: it does not build the expected object (it checks the
  received one by pickling it again: the sender's bytes, compared by digest) and does not call
  ``gc.freeze()`` (which turns streampickle's collector pause off: README, "The garbage collector").

How: every measurement runs in a fresh child process (for ``stall``, a fresh sender process
and a fresh receiver process). A child builds the payload and pickles it, loads a small pickle
of the same kind the same way (the warm-up, untimed), runs ``gc.collect()`` and
``gc.freeze()`` (not the stall's receiver: see above), resets the kernel's peak-RSS mark
(``/proc/self/clear_refs``, Linux), then times the one load (``time.perf_counter``). Memory:
peak RSS during the load (``VmHWM``) minus RSS before it (``VmRSS``), so it counts the built
object and everything the load
allocated on the way (not tracemalloc: it would slow the Python-level restricted loader far
more than the C unpickler). Each round runs, for every case, a plain child and a restricted
child back to back, plain first in odd rounds and restricted first in even ones; a case's
ratio is the median over ``--rounds`` (3) of each round's restricted / plain figure, given
with its min-max range. Each load child checks its object against the payload and reports the
SHA-256 of the bytes it loaded: both ways must have loaded identical bytes.

Output: a markdown table, printed and written to ``--markdown PATH``; ``--json PATH`` writes
every run's figures. Nothing here asserts a figure: it reports, next to the project's targets.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import hashlib
import json
import os
import pickle
import re
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

from bench_protocols import add_output_options, duration, library, write_outputs
from bench_stream import BLAST_WRITE, HOST, run_pair
from run_suite import log, machine, names

import streampickle
from streampickle._limits import LimitOptions

CASES = ("records", "ints", "numbers", "large", "stall")
WAYS = ("plain", "restricted")
PROTOCOL = {"records": 5, "ints": 2, "numbers": 2, "large": 5, "stall": 5}
#: The warm-up's size, per case (records, ints, numbers, MB, MB).
WARM = {"records": 1_000, "ints": 10_000, "numbers": 10_000, "large": 1.0, "stall": 0.05}
#: The project's targets: restricted / plain at most this (time; memory for ``large``).
TIME_TARGET = {"records": 3.0, "ints": 3.0, "numbers": 3.0, "large": 1.3}
MEMORY_TARGET = 1.2
TICK = 0.001  # seconds the ticker sleeps
PREFIX = struct.Struct("!Q")  # the sender's length prefix
TIMEOUT = 900.0  # seconds a child may take
MIB = 1 << 20


# ---------------------------------------------------------------------------------------------
# Payloads and the two ways, built the same in every process.


def record(i: int) -> dict[str, Any]:
    return {"id": i, "name": f"row {i}", "score": i * 0.5, "tags": ["a", "b"]}


def records_of(megabytes: float) -> list[dict[str, Any]]:
    """Records pickling (protocol 5) to about *megabytes*."""
    sample = [record(i) for i in range(100_000, 101_000)]
    per_record = len(pickle.dumps(sample, 5)) / len(sample)
    return [record(i) for i in range(max(1, round(megabytes * 1e6 / per_record)))]


def large(megabytes: float) -> bytes:
    """*megabytes* of bytes, every page written (not zeros: no page stays shared)."""
    size = int(megabytes * 1e6)
    return (bytes(range(256)) * (size // 256 + 1))[:size]


def build(case: str, size: float) -> Any:
    if case == "records":
        return [record(i) for i in range(int(size))]
    if case == "ints":
        return list(range(int(size)))
    if case == "numbers":
        half = int(size) // 2
        return {2**40 + i for i in range(half)} | {i / 3 for i in range(half)}
    if case == "large":
        return large(size)
    return records_of(size)


def lifted(case: str, data: bytes, payload: int = 0) -> LimitOptions:
    """The limits a restricted load of *case* lifts: for ``large`` (*payload*: its bytes),
    each of ``max_payload_size``, ``max_frame_size`` and ``max_object_size`` that the pickle
    *data* exceeds."""
    if case in ("records", "ints", "numbers"):
        return {"max_opcodes": None, "max_stack_depth": None}
    if case == "stall":
        return {"max_opcodes": None, "max_stack_depth": None, "max_memo_size": None}
    defaults, limits = streampickle.Limits(), LimitOptions()
    sizes = {"max_payload_size": payload, "max_frame_size": max(frames(data), default=0)}
    for name, size in (sizes | {"max_object_size": len(data)}).items():
        if getattr(defaults, name) is not None and size > getattr(defaults, name):
            limits[name] = None  # type: ignore[literal-required]
    return limits


def frames(data: bytes) -> list[int]:
    """The sizes of the frames a protocol 4/5 pickle starts with, up to the first opcode out
    of a frame (a large payload's: the pickler writes those outside the frames)."""
    sizes, at = [], 2  # after PROTO n
    while at < len(data) and data[at] == pickle.FRAME[0]:
        sizes.append(int.from_bytes(data[at + 1 : at + 9], "little"))
        at += 9 + sizes[-1]
    return sizes


def loader(way: str, limits: LimitOptions, case: str) -> Callable[[bytes], Any]:
    if way == "plain":
        return pickle.loads
    allow: Any = streampickle.ALLOW_BUILTINS if case == "numbers" else []
    return lambda data: streampickle.loads(data, allow=allow, **limits)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def reset_peak() -> None:
    """Give the C heap's free memory back to the system (``malloc_trim``, glibc), then reset
    the process's peak-RSS mark (``VmHWM``, and ``ru_maxrss``) to its RSS now."""
    with suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")


def status_mib(field: str) -> float:
    """``VmRSS`` or ``VmHWM`` of ``/proc/self/status``."""
    found = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    if found is None:
        raise RuntimeError(f"no {field} in /proc/self/status")
    return int(found.group(1)) / 1024


# ---------------------------------------------------------------------------------------------
# The load child: records, ints, large.


def load_role(args: argparse.Namespace) -> dict[str, Any]:
    protocol = PROTOCOL[args.case]
    obj = build(args.case, args.size)
    data = pickle.dumps(obj, protocol)
    limits = lifted(args.case, data, len(obj) if args.case == "large" else 0)
    load = loader(args.way, limits, args.case)
    expected = sha256(obj) if args.case == "large" else None
    if expected is not None:
        del obj  # compared by digest: not held during the load
    small = build(args.case, WARM[args.case])
    if load(pickle.dumps(small, protocol)) != small:  # the warm-up
        raise RuntimeError("the warm-up's object differs")
    del small
    gc.collect()
    gc.freeze()
    reset_peak()
    before = status_mib("VmRSS")
    start = time.perf_counter()
    got = load(data)
    seconds = time.perf_counter() - start
    peak = status_mib("VmHWM")
    if (sha256(got) != expected) if expected is not None else (got != obj):
        raise RuntimeError(f"{args.case} {args.way}: the loaded object differs")
    return {
        "seconds": seconds, "peak_mib": peak - before, "bytes": len(data),
        "digest": sha256(data), "limits": list(limits),
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The stall case: a sender process, a receiver process on asyncio.


def send_role(args: argparse.Namespace) -> dict[str, Any]:
    """Listen; answer each connection's request byte (``w``: warm-up, ``m``: measured,
    ``q``: quit) with the length prefix and the pickle, in 1 MiB writes."""
    pickles = {b"w": pickle.dumps(build("stall", WARM["stall"]), 5)}
    pickles[b"m"] = pickle.dumps(build("stall", args.size), 5)
    with socket.create_server((HOST, 0)) as server:
        print(server.getsockname()[1], flush=True)
        server.settimeout(TIMEOUT)
        while True:
            connection, _ = server.accept()
            with connection:
                request = connection.recv(1)
                if request not in pickles:
                    break
                data = memoryview(pickles[request])
                connection.sendall(PREFIX.pack(len(data)))
                for start in range(0, len(data), BLAST_WRITE):
                    connection.sendall(data[start : start + BLAST_WRITE])
    return {"digest": sha256(pickles[b"m"]), "bytes": len(pickles[b"m"])}


class Ticker:
    """A task sleeping `TICK` in a loop: `stall` is the longest gap between its going to sleep
    and its waking up since `reset` (wall time: counts the process being preempted too),
    `cpu_stall` the most CPU time this thread spent in one such gap."""

    def __init__(self) -> None:
        self.worst = self.worst_cpu = 0.0
        self.ticks = 0
        self.since, self.since_cpu = time.perf_counter(), time.thread_time()

    def reset(self) -> None:
        self.worst = self.worst_cpu = 0.0
        self.ticks = 0

    def stall(self) -> tuple[float, float]:
        """(wall, CPU), counting the gap under way (a load that just returned blocked it)."""
        now, cpu = time.perf_counter() - self.since, time.thread_time() - self.since_cpu
        return max(self.worst, now), max(self.worst_cpu, cpu)

    async def run(self) -> None:
        while True:
            self.since, self.since_cpu = time.perf_counter(), time.thread_time()
            await asyncio.sleep(TICK)
            self.ticks += 1
            self.worst = max(self.worst, time.perf_counter() - self.since)
            self.worst_cpu = max(self.worst_cpu, time.thread_time() - self.since_cpu)


class Passes:
    """A task that counts the event loop's passes (it runs once per pass)."""

    count = 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(0)
            self.count += 1


async def receive_one(
    port: int, request: bytes, way: str, limits: LimitOptions, ticker: Ticker, passes: Passes
) -> tuple[Any, dict[str, Any]]:
    """One connection: the object, and the receive's figures (from the prefix's arrival)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(request)
        await writer.drain()
        size = PREFIX.unpack(await reader.readexactly(PREFIX.size))[0]
        ticker.reset()
        passes_before, start = passes.count, time.perf_counter()
        loads_s = None
        if way == "restricted":
            obj = await streampickle.aload(reader, allow=[], **limits)
        else:
            data = await reader.readexactly(size)
            begin = time.perf_counter()
            obj = pickle.loads(data)
            loads_s = time.perf_counter() - begin
            del data
        seconds, (stall, cpu_stall) = time.perf_counter() - start, ticker.stall()
        figures = {
            "seconds": seconds, "stall_ms": stall * 1e3, "cpu_stall_ms": cpu_stall * 1e3,
            "loop_passes": passes.count - passes_before, "ticks": ticker.ticks, "loads_s": loads_s,
        }  # fmt: skip
        if await reader.read():
            raise RuntimeError("bytes left after the pickle")
    finally:
        writer.close()
        await writer.wait_closed()
    return obj, figures


async def receiver(args: argparse.Namespace, port: int) -> dict[str, Any]:
    warm = build("stall", WARM["stall"])
    limits = lifted("stall", b"")
    ticker, passes = Ticker(), Passes()
    tasks = [asyncio.create_task(ticker.run()), asyncio.create_task(passes.run())]
    if (await receive_one(port, b"w", args.way, limits, ticker, passes))[0] != warm:
        raise RuntimeError("the warm-up's object differs")
    gc.collect()  # not gc.freeze(), unlike the load cases: a server does not freeze its heap
    reset_peak()
    before = status_mib("VmRSS")
    obj, figures = await receive_one(port, b"m", args.way, limits, ticker, passes)
    figures["peak_mib"] = status_mib("VmHWM") - before
    for task in tasks:
        task.cancel()
    # The object pickled again: the sender's bytes if it arrived intact (`measure` compares
    # the digests; records pickle back byte for byte).
    data = pickle.dumps(obj, 5)
    return figures | {
        "bytes": len(data), "digest": sha256(data), "frames": len(frames(data)),
        "limits": list(limits),
    }  # fmt: skip


def receive_role(args: argparse.Namespace) -> dict[str, Any]:
    port = int(sys.stdin.readline())
    try:
        return asyncio.run(receiver(args, port))
    finally:
        with socket.create_connection((HOST, port)) as quit:  # the sender ends too
            quit.sendall(b"q")


# ---------------------------------------------------------------------------------------------
# The parent: the rounds, then the table.


def size_of(args: argparse.Namespace, case: str) -> float:
    sizes = {"records": args.records, "ints": args.ints, "numbers": args.ints, "large": args.mb}
    return float(sizes.get(case, args.stall_mb))


def measure(case: str, way: str, args: argparse.Namespace) -> dict[str, Any]:
    """One measurement, in a fresh child process (two for ``stall``)."""
    me = [sys.executable, str(Path(__file__).resolve()), f"--case={case}", f"--way={way}"]
    me.append(f"--size={size_of(args, case)}")
    if case == "stall":
        sent, got = run_pair([*me, "--role=send"], [*me, "--role=receive"], f"stall {way}")
        if sent["digest"] != got["digest"]:
            raise RuntimeError("stall: the sender's pickle differs from the receiver's")
        return dict(got)
    run = subprocess.run(
        [*me, "--role=load"], capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    if run.returncode:
        raise RuntimeError(f"{case} {way}: exit status {run.returncode}: {run.stderr[-2000:]}")
    return dict(json.loads(run.stdout))


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(case: str, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians and ranges of a case's runs, and of its per-round ratios."""
    plain, restricted = runs["plain"], runs["restricted"]
    if {run["digest"] for run in plain + restricted} != {plain[0]["digest"]}:
        raise RuntimeError(f"{case}: the two ways loaded different bytes")
    metrics = ["seconds", "peak_mib"] + (["stall_ms", "cpu_stall_ms"] if case == "stall" else [])
    row: dict[str, Any] = {"case": case, "bytes": plain[0]["bytes"], "runs": runs}
    row["limits"] = restricted[0]["limits"]
    for metric in metrics:
        row[metric] = {way: spread([run[metric] for run in runs[way]]) for way in WAYS}
        pairs = zip(restricted, plain, strict=True)
        row[metric]["ratio"] = spread([r[metric] / max(p[metric], 1e-9) for r, p in pairs])
    if case == "stall":
        row["frames"] = restricted[0]["frames"]
        row["loop_passes"] = {
            way: spread([run["loop_passes"] for run in runs[way]]) for way in WAYS
        }
        row["loads_s"] = spread([run["loads_s"] for run in plain])
        per_frame = [run["seconds"] * 1e3 / run["frames"] for run in restricted]
        row["per_frame_ms"] = spread(per_frame)
        row["yielded_per_frame"] = [
            run["loop_passes"] >= run["frames"] and run["stall_ms"] <= 2 * ms
            for run, ms in zip(restricted, per_frame, strict=True)
        ]
    return row


def text(figure: dict[str, float], digits: int = 2, unit: str = "") -> str:
    """A median with its range: ``1.23 [1.10-1.40]``."""
    found = [f"{figure[key]:.{digits}f}" for key in ("median", "min", "max")]
    return f"{found[0]}{unit} [{found[1]}-{found[2]}]"


def met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def load_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| case | pickle MB | `pickle.loads` s | restricted s | time ratio | target "
        "| `pickle.loads` +MiB | restricted +MiB | memory ratio | target |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for row in rows:
        case, seconds, peak = row["case"], row["seconds"], row["peak_mib"]
        time_ok = seconds["ratio"]["median"] <= TIME_TARGET[case]
        memory = "-"
        if case == "large":
            memory = f"<= {MEMORY_TARGET:g}x: {met(peak['ratio']['median'] <= MEMORY_TARGET)}"
        lines.append(
            f"| {DESCRIPTIONS[case]} | {row['bytes'] / 1e6:.1f} | {text(seconds['plain'], 3)} "
            f"| {text(seconds['restricted'], 3)} | **{text(seconds['ratio'], 1, 'x')}** "
            f"| <= {TIME_TARGET[case]:g}x: {met(time_ok)} | {text(peak['plain'], 1)} "
            f"| {text(peak['restricted'], 1)} | {text(peak['ratio'], 2, 'x')} | {memory} |"
        )
    return lines


def stall_lines(row: dict[str, Any], lifts: str) -> list[str]:
    frames, yielded = row["frames"], row["yielded_per_frame"]
    lines = [
        "",
        f"Event-loop stall: {row['bytes'] / 1e6:.1f} MB of records ({frames} frames) over "
        "loopback TCP on asyncio, the sender in another process, which writes an 8-byte "
        "length prefix then the pickle in 1 MiB writes; the clock starts once the receiver has "
        f"read the prefix. Restricted: {lifts} lifted (`None`). *Stall*: the longest gap "
        f"between a ticker task's `asyncio.sleep({TICK:g})` and its waking up, from the "
        "first byte to the object (an idle loop shows about 1.1 ms); *CPU in it*: the CPU "
        "time the loop's thread spent in that gap (leaves out preemption by the other "
        "processes on the machine). *Loop passes*: passes of the event loop during the "
        "receive. Target: the loop yielded at least once per frame, read here as at least as "
        "many loop passes as frames and a longest stall at most twice the restricted load's "
        f"mean time per frame ({text(row['per_frame_ms'], 1, ' ms')}); met in "
        f"{sum(yielded)} of {len(yielded)} rounds: {met(all(yielded))}. The plain way's "
        f"`pickle.loads` call alone took {text(row['loads_s'], 3, ' s')}.",
        "",
        "| way | receive s | stall ms | CPU in it ms | loop passes | receiver +MiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for way, label in zip(WAYS, STALL_WAYS, strict=True):
        lines.append(
            f"| {label} | {text(row['seconds'][way], 3)} | {text(row['stall_ms'][way], 1)} "
            f"| {text(row['cpu_stall_ms'][way], 1)} | {text(row['loop_passes'][way], 0)} "
            f"| {text(row['peak_mib'][way], 1)} |"
        )
    lines.append(
        f"| ratio | **{text(row['seconds']['ratio'], 1, 'x')}** "
        f"| **{text(row['stall_ms']['ratio'], 2, 'x')}** "
        f"| {text(row['cpu_stall_ms']['ratio'], 2, 'x')} | "
        f"| {text(row['peak_mib']['ratio'], 2, 'x')} |"
    )
    return lines


DESCRIPTIONS = {
    "records": "records: small dicts, protocol 5",
    "ints": "ints: `list(range(n))`, protocol 2",
    "numbers": "numbers: a set of big ints and floats, protocol 2",
    "large": "large: one `bytes`, protocol 5",
}
STALL_WAYS = (
    "`readexactly` + `pickle.loads` in the loop",
    "`await aload(reader, allow=[], ...)`",
)


def markdown(report: dict[str, Any]) -> str:
    config, host = report["config"], report["machine"]
    versions = ", ".join(f"{name} {version}" for name, version in host["versions"].items())
    command = " ".join(["python benchmarks/bench_restricted.py", *config["argv"]])
    rows = {row["case"]: row for row in report["rows"]}
    lifts = {case: ", ".join(f"`{name}`" for name in row["limits"]) for case, row in rows.items()}
    lines = [
        "# Restricted loading: what `allow=` costs",
        "",
        f"Produced by `{command}` on {host['date']} in {duration(config['duration_s'])}; "
        f"streampickle {report['streampickle']}.",
        f"Machine: {host['cpu']}, {host['cpus']} cores, {host['memory_gib']} GiB RAM, "
        f"{host['os']}; Python {host['python']}; {versions}. 5-minute load average "
        "{:.1f} at the start, {:.1f} at the end.".format(*host["load_average_5min"]),
        *([f"Note: {config['note']}"] if config["note"] else []),
        "",
        "Each figure: the median of "
        f"{config['rounds']} rounds, then its min-max range. Every measurement is a fresh "
        "process (a sender and a receiver process for the stall) that warms up on a small "
        "pickle of the same kind loaded the same way, untimed; the plain and the restricted "
        "way alternate, each round's ratio is restricted / plain of that round. *Time*: the "
        "one load call. *+MiB*: peak RSS during it minus RSS before it (the kernel's peak "
        "mark reset just before; not tracemalloc), so it includes the built object. "
        "Restricted: `streampickle.loads(data, allow=[], ...)` (numbers: "
        "`allow=ALLOW_BUILTINS`, for `set`), these limits lifted (`None`): "
        + "; ".join(f"{case}: {lift or 'none'}" for case, lift in lifts.items() if case != "stall")
        + ". Payloads: "
        f"{config['records']:,} records (`{{'id': i, 'name': f'row {{i}}', 'score': i * 0.5, "
        f"'tags': ['a', 'b']}}`), `list(range({config['ints']:,}))`, a set of "
        f"{config['ints'] // 2:,} ints from 2**40 and as many floats, one `bytes` of "
        f"{config['mb']:g} MB. The project's targets: records and ints within 3x of "
        "`pickle.loads`, the large payload within 1.3x in time and 1.2x in memory, the event "
        "loop yielded at least once per frame. The machine (2 cores) was busy with other "
        "work, which stretches times and stalls unevenly: the ranges show how much.",
        "",
        *(load_lines([rows[case] for case in CASES if case in rows and case != "stall"])),
    ]
    if "stall" in rows:
        lines += stall_lines(rows["stall"], lifts["stall"])
    if report["failures"]:
        lines += ["", "Failures:", ""]
        lines += [f"- `{case}`: {error}" for case, error in report["failures"].items()]
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 rounds")
    parser.add_argument("--cases", type=names(CASES), default=list(CASES))
    parser.add_argument("--records", type=int, help="records (default 100000; quick 5000)")
    parser.add_argument("--ints", type=int, help="ints (default 1000000; quick 50000)")
    parser.add_argument("--mb", type=float, help="the large payload, MB (default 300; quick 10)")
    parser.add_argument("--stall-mb", type=float, help="stall: records MB (default 20; quick 1)")
    parser.add_argument("--rounds", type=int, help="rounds (default 3; quick 2)")
    add_output_options(parser)
    parser.add_argument("--role", choices=("load", "send", "receive"), help=argparse.SUPPRESS)
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--way", choices=WAYS, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.records = args.records or (5_000 if args.quick else 100_000)
    args.ints = args.ints or (50_000 if args.quick else 1_000_000)
    args.mb = args.mb or (10.0 if args.quick else 300.0)
    args.stall_mb = args.stall_mb or (1.0 if args.quick else 20.0)
    args.rounds = args.rounds or (2 if args.quick else 3)
    return args


ROLES = {"load": load_role, "send": send_role, "receive": receive_role}


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.role:
        print(json.dumps(ROLES[args.role](args)), flush=True)
        return
    started, load_before = time.monotonic(), os.getloadavg()[1]
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        case: {way: [] for way in WAYS} for case in args.cases
    }
    failures: dict[str, str] = {}
    for round_ in range(args.rounds):
        ways = WAYS if round_ % 2 == 0 else WAYS[::-1]
        for case in args.cases:
            for way in ways:
                if case in failures:
                    continue
                try:
                    run = measure(case, way, args)
                except (RuntimeError, subprocess.TimeoutExpired) as error:
                    log(f"{case} {way}: failed: {error}")
                    failures[case] = str(error)
                    continue
                runs[case][way].append(run)
                log(f"round {round_ + 1}/{args.rounds} {case} {way}: {run['seconds']:.3f} s, "
                    f"+{run['peak_mib']:.1f} MiB"
                    + (f", stall {run['stall_ms']:.1f} ms" if case == "stall" else ""))  # fmt: skip
    rows = [summarize(case, runs[case]) for case in args.cases if case not in failures]
    host = machine() | {"load_average_5min": [load_before, os.getloadavg()[1]]}
    report = {
        "machine": host,
        "streampickle": library(),
        "config": {
            "argv": sys.argv[1:] if argv is None else argv,
            "cases": args.cases, "rounds": args.rounds, "records": args.records,
            "ints": args.ints, "mb": args.mb, "stall_mb": args.stall_mb, "note": args.note,
            "duration_s": time.monotonic() - started,
        },
        "rows": rows,
        "failures": failures,
    }  # fmt: skip
    write_outputs(markdown(report), report, args)


if __name__ == "__main__":
    main()
