"""One transfer over loopback TCP, sender and receiver each in a fresh process.

`run_transfer` starts this script twice (``--role receive``, then ``--role send``); each role
measures itself and prints one JSON line. `benchmarks/run_suite.py` runs the whole matrix; this
script on its own runs one transfer, for a quick look::

    python benchmarks/bench_stream.py --backend trio --method streampickle --payload arrays --mb 100

Methods (both ends change together):

- ``streampickle``: ``adump`` into the socket / ``aload`` from it;
- ``naive``: ``pickle.dumps`` + write of an 8-byte length prefix and the pickle / read the
  prefix, read exactly that many bytes (``readexactly``; a ``receive_some`` loop on trio) +
  ``pickle.loads``;
- ``naive-thread``: the same, with ``pickle.dumps`` run in a worker thread
  (``anyio.to_thread.run_sync``).

What each role measures, over the transfer only (the payload is built, imports and warm-ups done
before the first reading):

- peak RSS increase: ``ru_maxrss`` after minus before (a fresh process per transfer, so the
  high-water mark belongs to this transfer);
- max event-loop stall: the longest a 1 ms heartbeat task was late (and the most CPU time the
  loop's thread spent in one such gap, which leaves out preemption by other processes);
- times on ``time.monotonic()``, which the two processes share (CLOCK_MONOTONIC on Linux):
  the sender's start, the receiver's first byte and the moment its object is whole.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, SupportsIndex

import anyio
import anyio.to_thread

import streampickle

BACKENDS = ("asyncio", "uvloop", "trio")
METHODS = ("streampickle", "naive", "naive-thread")
PAYLOADS = ("records", "arrays")
HOST = "127.0.0.1"
HEARTBEAT = 0.001  # seconds between heartbeats
ARRAYS = 8  # the arrays payload is this many numpy arrays of equal size
PREFIX = 8  # bytes of the naive length prefix
BLAST_WRITE = 1 << 20  # bytes per write of a ready pickle (receivers alone), as adump's largest
TIMEOUT = 900  # seconds a role may take before the transfer is declared hung
PARAMETERS = ("backend", "method", "payload", "protocol")  # Case fields passed as --name=value


@dataclass(frozen=True)
class Case:
    """One configuration: *megabytes* is the target pickle size (1 MB = 10**6 bytes). With
    *blast* the sender pickles before the clock starts and writes the pickle in 1 MiB slices
    (after the prefix for the naive receiver), so that only the receivers differ."""

    backend: str
    method: str
    payload: str
    megabytes: float
    protocol: int = 5
    blast: bool = False


# ---------------------------------------------------------------------------------------------
# Payloads.


def record(i: int) -> dict[str, Any]:
    return {"id": i, "name": f"user{i}", "email": f"u{i}@example.com", "score": i / 3, "ok": True}


def build(payload: str, megabytes: float, protocol: int) -> Any:
    """A graph of small records, or `ARRAYS` numpy arrays, pickling to about *megabytes*."""
    target = int(megabytes * 1e6)
    if payload == "records":
        sample = [record(i) for i in range(10**6, 10**6 + 200)]  # ids of typical length
        per_record = len(pickle.dumps(sample, protocol)) / len(sample)
        return [record(i) for i in range(max(1, round(target / per_record)))]
    import numpy

    size = max(1, target // ARRAYS)
    return [numpy.full(size, i, numpy.uint8) for i in range(ARRAYS)]  # every page touched


def build_measured(payload: str, megabytes: float, protocol: int) -> tuple[Any, float]:
    """`build`, and the memory (MiB) the object itself takes (numpy's import excluded)."""
    build(payload, 0.001, protocol)  # imports numpy: not the object's memory
    gc.collect()
    before = current_rss_mib()
    obj = build(payload, megabytes, protocol)
    return obj, current_rss_mib() - before


def fingerprint(obj: Any, verify: bool, protocol: int) -> str:
    """A digest both ends compute: of the whole re-pickled object with *verify* (costs a
    pickle's worth of memory, after the measurement), else of its shape and a few values."""
    if verify:
        return hashlib.sha256(pickle.dumps(obj, protocol)).hexdigest()
    if obj and isinstance(obj[0], dict):
        summary: Any = [len(obj), obj[0], obj[-1]]
    else:
        summary = [(len(a), int(a[0]), int(a[-1]), int(a.sum())) for a in obj]
    return hashlib.sha256(repr(summary).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Measuring.


def max_rss_mib() -> float:
    """The process's resident memory high-water mark so far."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024  # bytes there, KiB here


def current_rss_mib() -> float:
    """Resident memory now (Linux ``/proc/self/statm``; the high-water mark elsewhere).

    A transfer's peak increase is `max_rss_mib` after it minus this before it: exact when the
    transfer sets a new high-water mark, an overestimate by at most the earlier peak's excess
    over the current RSS when it does not (small transfers)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:
        return max_rss_mib()
    return pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


class Heartbeat:
    """A task that sleeps `HEARTBEAT` in a loop. `stall` is the longest the event loop went
    without running it since `reset` (wall time: includes the process being preempted by other
    work on the machine); `cpu_stall` the most CPU time the loop's thread spent in one such
    gap (excludes preemption, and also waiting for the GIL)."""

    def __init__(self) -> None:
        self.worst = self.worst_cpu = 0.0
        self.since, self.since_cpu = time.monotonic(), time.thread_time()  # this sleep's start

    def reset(self) -> None:
        self.worst = self.worst_cpu = 0.0

    def stall(self) -> float:
        """The worst lateness so far, counting the current sleep if it is already late (a
        blocking call that just returned has not let the task record it yet)."""
        return max(self.worst, time.monotonic() - self.since - HEARTBEAT)

    def cpu_stall(self) -> float:
        return max(self.worst_cpu, time.thread_time() - self.since_cpu)

    async def run(self) -> None:
        while True:
            self.since, self.since_cpu = time.monotonic(), time.thread_time()
            await anyio.sleep(HEARTBEAT)
            self.worst = max(self.worst, time.monotonic() - self.since - HEARTBEAT)
            self.worst_cpu = max(self.worst_cpu, time.thread_time() - self.since_cpu)


@asynccontextmanager
async def heartbeat() -> AsyncIterator[Heartbeat]:
    beat = Heartbeat()
    async with anyio.create_task_group() as group:
        group.start_soon(beat.run)
        await anyio.sleep(0.01)  # let it start ticking
        yield beat
        group.cancel_scope.cancel()


def run_async(backend: str, main: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """Run *main* on *backend* (uvloop is anyio's asyncio backend with ``use_uvloop``)."""
    if backend == "uvloop":
        return anyio.run(main, backend="asyncio", backend_options={"use_uvloop": True})
    return anyio.run(main, backend=backend)


# ---------------------------------------------------------------------------------------------
# Streams: what a user of each backend has. The receiver's stream notes when the first byte came.


class TimedStreamReader(asyncio.StreamReader):
    """An asyncio ``StreamReader`` that notes when data first arrived (still a StreamReader,
    so `aload` reads it as it reads any)."""

    first_byte = 0.0
    #: The connection's writer, kept alive: on Python 3.13 a StreamWriter that is garbage
    #: collected closes its transport, which the reader would see as an immediate EOF.
    writer: asyncio.StreamWriter | None = None

    def feed_data(self, data: Iterable[SupportsIndex]) -> None:
        self.first_byte = self.first_byte or time.monotonic()
        super().feed_data(data)


class TimedTrioStream:
    """A trio ``ReceiveStream`` wrapper that notes when data first arrived."""

    first_byte = 0.0

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data: bytes = await self.stream.receive_some(max_bytes)
        self.first_byte = self.first_byte or time.monotonic()
        return data


async def trio_receive_exactly(stream: TimedTrioStream, size: int) -> bytes:
    """trio has no ``receive_exactly``: pieces up to 1 MiB, joined (as anyio's does)."""
    pieces, remaining = [], size
    while remaining:
        piece = await stream.receive_some(min(remaining, 1 << 20))
        if not piece:
            raise EOFError(f"stream ended {remaining} bytes short of {size}")
        pieces.append(piece)
        remaining -= len(piece)
    return b"".join(pieces)


async def accept(backend: str, announce: Callable[[int], None]) -> tuple[Any, Any]:
    """Listen on a free port, *announce* it, accept one connection: return (stream for
    `aload`, receive_exactly coroutine function)."""
    if backend == "trio":
        import trio

        listener = (await trio.open_tcp_listeners(0, host=HOST))[0]
        announce(listener.socket.getsockname()[1])
        stream = TimedTrioStream(await listener.accept())
        await listener.aclose()
        return stream, lambda size: trio_receive_exactly(stream, size)
    reader = TimedStreamReader(limit=1 << 16)
    connected = asyncio.Event()

    def on_connect(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reader.writer = writer
        connected.set()

    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: asyncio.StreamReaderProtocol(reader, on_connect), HOST, 0
    )
    announce(server.sockets[0].getsockname()[1])
    await connected.wait()
    server.close()
    return reader, reader.readexactly


class Connection:
    """The sender's socket: ``stream`` for `adump`, ``send_all``/``aclose`` for the naive way."""

    def __init__(self, stream: Any, send_all: Callable[[bytes], Awaitable[None]]) -> None:
        self.stream, self.send_all = stream, send_all

    @classmethod
    async def open(cls, backend: str, port: int) -> Connection:
        if backend == "trio":
            import trio

            stream = await trio.open_tcp_stream(HOST, port)
            return cls(stream, stream.send_all)
        _, writer = await asyncio.open_connection(HOST, port)

        async def send_all(data: bytes) -> None:
            writer.write(data)
            await writer.drain()

        return cls(writer, send_all)

    async def aclose(self) -> None:
        if isinstance(self.stream, asyncio.StreamWriter):
            self.stream.close()
            await self.stream.wait_closed()  # the transport has flushed its buffer
        else:
            await self.stream.aclose()


# ---------------------------------------------------------------------------------------------
# The two roles.


class Discard:
    async def write(self, data: bytes) -> None:
        pass


async def warm_up(case: Case) -> None:
    """Load what the method uses on first call (anyio's backend, the worker thread, the
    greenlet bridge, numpy), with a tiny payload of the same kind, so that it is not counted
    as the transfer's and does not raise the RSS high-water mark."""
    protocol = case.protocol
    sample = build(case.payload, 0.001, protocol)
    await streampickle.adump(sample, Discard(), protocol)
    streampickle.loads(pickle.dumps(sample, protocol))
    if case.method == "naive-thread":
        await anyio.to_thread.run_sync(pickle.dumps, sample, protocol)


async def send(case: Case, obj: Any, port: int) -> dict[str, Any]:
    connection = await Connection.open(case.backend, port)
    await warm_up(case)
    ready = pickle.dumps(obj, case.protocol) if case.blast else None
    gc.collect()
    async with heartbeat() as beat:
        beat.reset()
        before, start = current_rss_mib(), time.monotonic()
        sent = await send_object(case, obj, connection, ready)
        await connection.aclose()
        stall, cpu_stall = beat.stall(), beat.cpu_stall()
    return {
        "start": start,
        "bytes": sent,
        "rss_mib": max_rss_mib() - before,
        "stall_ms": stall * 1000,
        "cpu_stall_ms": cpu_stall * 1000,
    }


async def send_object(case: Case, obj: Any, connection: Connection, ready: bytes | None) -> int:
    """Send *obj* the *case*'s way (or the *ready* pickle); return the pickle's size."""
    if case.method == "streampickle" and ready is None:
        return await streampickle.adump(obj, connection.stream, case.protocol)
    if ready is not None:
        data = ready
    elif case.method == "naive":
        data = pickle.dumps(obj, case.protocol)
    else:
        data = await anyio.to_thread.run_sync(pickle.dumps, obj, case.protocol)
    if case.method != "streampickle":
        await connection.send_all(len(data).to_bytes(PREFIX, "little"))
    if ready is None:
        await connection.send_all(data)
    else:
        # The receivers alone: write at full speed without making the sender the bottleneck
        # (asyncio's transport on 3.11 sends a buffered 1 GB write in quadratic time).
        view = memoryview(ready)
        for start in range(0, len(view), BLAST_WRITE):
            await connection.send_all(view[start : start + BLAST_WRITE])  # type: ignore[arg-type]
    return len(data)


async def receive(case: Case, announce: Callable[[int], None]) -> tuple[Any, dict[str, Any]]:
    await warm_up(case)
    stream, receive_exactly = await accept(case.backend, announce)
    gc.collect()
    async with heartbeat() as beat:
        beat.reset()
        before = current_rss_mib()
        if case.method == "streampickle":
            obj = await streampickle.aload(stream, max_object_size=None)
        else:
            size = int.from_bytes(await receive_exactly(PREFIX), "little")
            data = await receive_exactly(size)
            obj = pickle.loads(data)
            del data
        done = time.monotonic()
        stall, cpu_stall = beat.stall(), beat.cpu_stall()
    result = {"first_byte": stream.first_byte, "done": done, "stall_ms": stall * 1000}
    result["cpu_stall_ms"] = cpu_stall * 1000
    result["rss_mib"] = max_rss_mib() - before
    return obj, result


def role_main(args: argparse.Namespace) -> None:
    case = Case(args.backend, args.method, args.payload, args.mb, args.protocol, args.blast)
    if args.role == "send":
        obj, object_mib = build_measured(case.payload, case.megabytes, case.protocol)
        port = int(sys.stdin.readline())  # from the receiver, once it listens
        result = run_async(case.backend, lambda: send(case, obj, port))
        result["object_mib"] = object_mib
    else:

        def announce(port: int) -> None:
            print(port, flush=True)

        async def main() -> dict[str, Any]:
            obj, result = await receive(case, announce)
            result["fingerprint"] = fingerprint(obj, args.verify, case.protocol)
            return result

        result = run_async(case.backend, main)
    if args.role == "send":
        result["fingerprint"] = fingerprint(obj, args.verify, case.protocol)
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# The parent: one transfer.


def run_pair(listener: list[str], connector: list[str], what: str) -> tuple[Any, Any]:
    """Start both roles at once (their start-ups overlap); pass the port the *listener*
    prints first to the *connector*'s stdin; return the JSON each prints last.

    Raises ``RuntimeError`` naming *what* if a role fails, ``subprocess.TimeoutExpired`` if
    one hangs (both are killed then).
    """
    pipes: dict[str, Any] = {"stdout": subprocess.PIPE, "text": True}
    with (
        subprocess.Popen(listener, **pipes) as first,
        subprocess.Popen(connector, stdin=subprocess.PIPE, **pipes) as second,
    ):
        try:
            assert first.stdout is not None
            outputs = second.communicate(first.stdout.readline(), timeout=TIMEOUT)[0], ""
            outputs = outputs[0], first.communicate(timeout=TIMEOUT)[0]
        except BaseException:
            first.kill()
            second.kill()
            raise
    for command, process in ((listener, first), (connector, second)):
        if process.returncode:
            raise RuntimeError(f"{what}: {command[-1]} failed, exit status {process.returncode}")
    return json.loads(outputs[1]), json.loads(outputs[0])


def run_transfer(case: Case, verify: bool = False) -> dict[str, Any]:
    """Run one transfer of *case* in two fresh processes; return its measurements.

    Raises ``RuntimeError`` if a role fails or the receiver's object differs from the
    sender's (by `fingerprint`), ``subprocess.TimeoutExpired`` if a role hangs.
    """
    flags = [f"--{key}={value}" for key, value in asdict(case).items() if key in PARAMETERS]
    flags += [f"--mb={case.megabytes}"] + (["--verify"] if verify else [])
    flags += ["--blast"] if case.blast else []
    me = [sys.executable, str(Path(__file__).resolve()), *flags]
    got, sent = run_pair([*me, "--role=receive"], [*me, "--role=send"], str(case))
    if sent["fingerprint"] != got["fingerprint"]:
        raise RuntimeError(f"{case}: the receiver's object differs from the sender's")
    return {
        "megabytes": sent["bytes"] / 1e6,
        "object_mib": sent["object_mib"],
        "wall_s": got["done"] - sent["start"],
        "receive_s": got["done"] - got["first_byte"],
        "ttfb_ms": (got["first_byte"] - sent["start"]) * 1000,
        "sender_rss_mib": sent["rss_mib"],
        "receiver_rss_mib": got["rss_mib"],
        "sender_stall_ms": sent["stall_ms"],
        "receiver_stall_ms": got["stall_ms"],
        "sender_cpu_stall_ms": sent["cpu_stall_ms"],
        "receiver_cpu_stall_ms": got["cpu_stall_ms"],
    }


# ---------------------------------------------------------------------------------------------
# The floor: what the standard library's own streaming load costs the receiver.


def unpickle_floor(payload: str, megabytes: float, protocol: int = 5) -> dict[str, float]:
    """Peak RSS increase of ``pickle.load`` from a file of the payload's pickle, in a fresh
    process, and the object's own memory (as the sender measures it): what any receiver of
    these bytes pays at least (for records, the C unpickler's memo: a pointer per memoized
    object, held until the load ends)."""
    with tempfile.TemporaryDirectory() as directory:
        me = [sys.executable, str(Path(__file__).resolve()), f"--payload={payload}"]
        me += [f"--mb={megabytes}", f"--protocol={protocol}", f"--file={directory}/p.pickle"]
        made, loaded = (
            json.loads(
                subprocess.run(
                    [*me, f"--role={role}"], capture_output=True, text=True, check=True, timeout=600
                ).stdout
            )
            for role in ("dump", "load")
        )
    return {"object_mib": made["object_mib"], "load_rss_mib": loaded["rss_mib"]}


def floor_role(args: argparse.Namespace) -> dict[str, float]:
    """``--role dump``: build the payload, pickle it to ``--file``; ``--role load``: load it."""
    if args.role == "dump":
        obj, object_mib = build_measured(args.payload, args.mb, args.protocol)
        with open(args.file, "wb") as file:
            pickle.dump(obj, file, args.protocol)
        return {"object_mib": object_mib}
    build(args.payload, 0.001, args.protocol)  # imports numpy: not the object's memory
    gc.collect()
    before = current_rss_mib()
    with open(args.file, "rb") as file:
        pickle.load(file)
    return {"rss_mib": max_rss_mib() - before}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--backend", choices=BACKENDS, default="asyncio")
    parser.add_argument("--method", choices=METHODS, default="streampickle")
    parser.add_argument("--payload", choices=PAYLOADS, default="records")
    parser.add_argument("--mb", type=float, default=10.0, help="target pickle size, MB")
    parser.add_argument("--protocol", type=int, default=5)
    parser.add_argument("--verify", action="store_true", help="compare whole pickles' digests")
    parser.add_argument("--blast", action="store_true", help="pickle first: receivers alone")
    parser.add_argument(
        "--role", choices=("send", "receive", "dump", "load"), help=argparse.SUPPRESS
    )
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)  # dump and load
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.role in ("dump", "load"):
        return print(json.dumps(floor_role(args)))
    if args.role:
        return role_main(args)
    case = Case(args.backend, args.method, args.payload, args.mb, args.protocol, args.blast)
    print(json.dumps({**asdict(case), **run_transfer(case, args.verify)}, indent=2))


if __name__ == "__main__":
    main()
