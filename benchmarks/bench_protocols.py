"""Receive time per pickle protocol and stream kind, as a ratio to ``pickle.loads`` (issue 11).

    python benchmarks/bench_protocols.py            # 100k records, 3 rounds: about 5 minutes
    python benchmarks/bench_protocols.py --quick    # 5k records, 2 rounds: under a minute
    python benchmarks/bench_protocols.py --markdown benchmarks/results/protocols.md --json p.json
    python benchmarks/bench_protocols.py --kinds trio,anyio --protocols 2,5 --size 300000

What is measured: how long the library takes to receive the pickle of an object graph, from the
moment its first byte is available to the receiver to the moment the object is built, divided
by the time ``pickle.loads`` takes on the same bytes in the same receiver process. 1.0 would
be a loader that costs nothing on top of the C unpickler; a loader that goes to the stream once
per opcode (protocols 0-3 on a stream that cannot take bytes back) shows as a large ratio.

- **Payload**: ``--size`` small records (`bench_stream.record`: dicts of five str/int/float/bool
  fields), the object-graph case, where every record is a few dozen opcodes.
- **Protocols** 0 to 5 (``--protocols``).
- **Ways** of receiving (``--ways``): ``aload`` (``await aload(stream)``, one pickle of the
  whole list); ``aiter_load`` (``async for obj in aiter_load(stream)`` over the list split
  into ``--pickles`` (10) lists pickled back to back: timed to the last object);
  ``PickleStream.receive`` (the same lists, sent with ``PickleStream.send`` at the same
  protocol and read by as many ``receive()`` calls, on ``PickleStream(anyio_stream)``,
  ``PickleStream.from_trio(stream)`` or ``PickleStream.from_asyncio(reader, writer)``).
  Every way is called with the default limits and a ``progress`` hook (`Meter`).
- **Stream kinds** (``--kinds``, see `KINDS`): an asyncio ``StreamReader``
  (``asyncio.open_connection``); an anyio ``SocketStream`` (``anyio.connect_tcp``, asyncio
  backend); an anyio ``BufferedByteReceiveStream`` around one (``BufferedByteStream`` for
  `PickleStream`); a trio ``SocketStream`` (``trio.open_tcp_stream``); an async generator
  yielding what ``reader.read(65536)`` of an asyncio ``StreamReader`` returns; an aiofiles
  file reading a FIFO; an aiofiles file reading a regular file. `PickleStream` needs a
  two-way byte stream, so it is "n/a" for the last three.

How: for each stream kind this script starts a fresh sender process and a fresh receiver
process (`bench_stream.run_pair`). The sender builds the records and pickles them with
``pickle.dumps(obj, protocol)`` for every protocol before anything is timed, and listens on
loopback TCP. For each case the receiver connects, runs ``gc.collect()``, writes a 5-byte
request (which case) straight to the socket's file descriptor, and blocks in ``poll()`` until
the first byte of the answer is readable (no event-loop iteration in between, so no stream
layer has taken it yet); the clock (``time.perf_counter``) starts there. The sender writes the
ready bytes in 1 MiB writes (into the FIFO for ``aiofiles-fifo``; for ``aiofiles-file`` it
writes the file and answers on the socket, and the clock starts once the receiver has opened
the file). For ``PickleStream.receive`` those bytes are what ``PickleStream.send`` wrote, per
list, into a recording transport before the clock (`Recorder`; they must equal the
``pickle.dumps`` of the lists). With ``--live-send`` the sender instead calls
``PickleStream.send`` on the socket during the transfer, pickling as it sends: the receiver
then mostly waits for the sender's pickling (about as long as unpickling), so that row then
measures the transfer, not the receiver; a dagger marks the cells where the sender's sends
took at least 80% of the receive time. The receiver checks
the objects against its own copy of the records, drops them, runs ``gc.collect()`` and times
``pickle.loads`` of the identical bytes (its own ``pickle.dumps`` of the same records; the
sender's and the receiver's SHA-256 must match): that run's baseline. The records and pickles
the receiver keeps are moved out of the collector's sight (``gc.freeze``) before the first
timed case, so that they weigh on neither side.

Repetitions are interleaved: every round runs every protocol x way once, in a rotated order,
each case on a fresh connection, after an untimed warm-up round on 100 records. A cell's
figure is the median of its per-round ratios, with their range and the median receive time.

Caps, so that the run stays bounded: a receive still running after ``--timeout`` seconds (5;
quick 0.5) is cancelled (an anyio cancel scope, and `backstop` for a loader that never
yields to the event loop), not run again, and reported as "~N est. (> 5 s)", N being the
ratio extrapolated from the bytes the ``progress`` hook had counted by then (a rough figure,
on the low side: the hook counts bytes taken from the stream, which may run ahead of the
unpickler). Today protocols 0-3 on the streams that cannot take bytes back take minutes per
case at the default size (about 1 ms per record on a trio stream), hence a cap this short; pass
``--timeout 60`` to wait longer. A cell slower than ``--once-above`` (2 s) in its first round
is not repeated (one run, no range). Nothing here asserts a time: it reports.

Output: a markdown table (rows: stream kind x way; columns: protocols), printed, and written
to ``--markdown PATH`` if given; ``--json PATH`` writes every run's figures. ``--note`` adds a
line to the markdown (say, which version of the library was measured).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import itertools
import json
import math
import os
import pickle
import select
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, contextmanager, suppress
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any, cast

import anyio
import anyio.to_thread
from anyio.abc import ByteStream, SocketAttribute, SocketListener, SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream, BufferedByteStream
from bench_stream import BLAST_WRITE, HOST, record, run_async, run_pair
from run_suite import log, machine, names

import streampickle
from streampickle import PickleStream

PROTOCOLS = tuple(range(pickle.HIGHEST_PROTOCOL + 1))
WAYS = ("aload", "aiter_load", "PickleStream.receive")
AIOLOAD, AITER, PICKLESTREAM = range(len(WAYS))
QUIT = 255  # the request that ends the sender
#: A request: warm-up flag, protocol, way, sequence number (matches the sender's timings).
REQUEST = struct.Struct("!BBBH")
WARM_RECORDS = 100
READY = b"r"  # aiofiles-file: the sender has written the file
POLL_TIMEOUT = 60.0  # seconds the receiver waits for the first byte before giving up
IDLE = 600.0  # seconds the sender waits for the next request before giving up
BACKSTOP = 0.5  # seconds after the cap that `backstop` interrupts a case the cap could not
SENDER_BOUND = 0.8  # PickleStream cells whose sender's sends took this much of the receive


@dataclass(frozen=True)
class Kind:
    """A stream kind: the receiver's backend, how the bytes travel (``tcp``, ``fifo`` or
    ``file``), whether `PickleStream` applies, and a line for the markdown."""

    backend: str
    transport: str
    picklestream: bool
    text: str


KINDS = {
    "asyncio": Kind(
        "asyncio", "tcp", True,
        "asyncio `StreamReader` from `asyncio.open_connection` (`PickleStream.from_asyncio`)",
    ),
    "anyio": Kind(
        "asyncio", "tcp", True,
        "anyio `SocketStream` from `anyio.connect_tcp`, asyncio backend (`PickleStream(stream)`)",
    ),
    "anyio-buffered": Kind(
        "asyncio", "tcp", True,
        "anyio `BufferedByteReceiveStream` around that `SocketStream` "
        "(`PickleStream(BufferedByteStream(stream))`)",
    ),
    "trio": Kind(
        "trio", "tcp", True,
        "trio `SocketStream` from `trio.open_tcp_stream` (`PickleStream.from_trio`)",
    ),
    "async-iter": Kind(
        "asyncio", "tcp", False,
        "async generator yielding `await reader.read(65536)` of an asyncio `StreamReader`",
    ),
    "aiofiles-fifo": Kind(
        "asyncio", "fifo", False,
        "`aiofiles.open(fifo, 'rb')`: a FIFO the sender writes (not seekable)",
    ),
    "aiofiles-file": Kind(
        "asyncio", "file", False,
        "`aiofiles.open(path, 'rb')`: a regular file the sender wrote (seekable)",
    ),
}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The payload, built the same in both processes.


def records(count: int) -> list[dict[str, Any]]:
    return [record(i) for i in range(count)]


def split(items: list[Any], parts: int) -> list[list[Any]]:
    """*items* in *parts* consecutive lists (as equal as can be)."""
    size = len(items)
    return [items[size * k // parts : size * (k + 1) // parts] for k in range(parts)]


@dataclass
class Pickles:
    """One protocol's bytes: the whole list's pickle, and the parts' pickles."""

    whole: bytes
    parts: list[bytes]

    @classmethod
    def of(cls, payload: list[Any], parts: list[list[Any]], protocol: int) -> Pickles:
        return cls(pickle.dumps(payload, protocol), [pickle.dumps(p, protocol) for p in parts])

    def digest(self) -> str:
        digest = hashlib.sha256(self.whole)
        for data in self.parts:
            digest.update(data)
        return digest.hexdigest()


def payloads(size: int, pickles: int, protocols: list[int]) -> dict[bool, Any]:
    """{warm: (records, parts, {protocol: Pickles})} for the measured and the warm-up size."""
    made = {}
    for warm, count in ((False, size), (True, WARM_RECORDS)):
        payload = records(count)
        parts = split(payload, pickles)
        made[warm] = payload, parts, {p: Pickles.of(payload, parts, p) for p in protocols}
    return made


# ---------------------------------------------------------------------------------------------
# The sender: listens, answers each request with the case's bytes.


async def sender(args: argparse.Namespace) -> dict[str, Any]:
    kind = KINDS[args.kind]
    made = payloads(args.size, args.pickles, args.protocols)
    recorded = {}  # {(warm, protocol): what PickleStream.send writes for the parts}
    for (warm, (_, parts, _)), protocol in itertools.product(made.items(), args.protocols):
        recorded[warm, protocol] = await Recorder.record(parts, protocol)
    listeners = await anyio.create_tcp_listener(local_host=HOST)
    listener = cast(SocketListener, listeners.listeners[0])  # one, for 127.0.0.1
    print(listener.extra(SocketAttribute.local_port), flush=True)
    send_s: dict[int, float] = {}
    aborted = []
    async with listener:
        while True:
            with anyio.fail_after(IDLE):  # the receiver died without a word
                connection, seq = await listener.accept(), -1
            try:
                request = await BufferedByteReceiveStream(connection).receive_exactly(REQUEST.size)
                warm, protocol, way, seq = REQUEST.unpack(request)
                if way == QUIT:
                    break
                _, parts, by_protocol = made[bool(warm)]
                pickles = by_protocol[protocol]
                data = pickles.whole if way == AIOLOAD else b"".join(pickles.parts)
                if way == PICKLESTREAM:
                    data = b"" if args.live_send else recorded[bool(warm), protocol]
                start = time.perf_counter()
                await deliver(kind, args.dir, connection, protocol, parts, data)
                send_s[seq] = time.perf_counter() - start
            except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                aborted.append(seq)  # the receiver gave up (its timeout) and closed
            finally:
                await connection.aclose()
    digests = {p: pickles.digest() for p, pickles in made[False][2].items()}
    picklestream = {p: hashlib.sha256(recorded[False, p]).hexdigest() for p in args.protocols}
    return {
        "digests": digests, "picklestream_digests": picklestream,
        "send_s": send_s, "aborted": aborted,
    }  # fmt: skip


class Recorder(ByteStream):
    """A transport that keeps what `PickleStream.send` writes into it."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    @classmethod
    async def record(cls, parts: list[list[Any]], protocol: int) -> bytes:
        recorder = cls()
        stream = PickleStream(recorder, protocol=protocol)
        for part in parts:
            await stream.send(part)
        return b"".join(recorder.chunks)

    async def send(self, item: bytes) -> None:
        self.chunks.append(bytes(item))

    async def receive(self, max_bytes: int = 65536) -> bytes:
        raise anyio.EndOfStream

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


async def deliver(
    kind: Kind,
    directory: Path,
    connection: SocketStream,
    protocol: int,
    parts: list[list[Any]],
    ready: bytes,
) -> None:
    """Send one case: the *ready* bytes (blocking writes into the FIFO or the file), or if
    there are none (``--live-send``) the parts through `PickleStream.send`, pickling them."""
    if not ready:
        stream = PickleStream(connection, protocol=protocol)
        for part in parts:
            await stream.send(part)
        return
    data = memoryview(ready)
    if kind.transport == "tcp":
        for start in range(0, len(data), BLAST_WRITE):
            await connection.send(data[start : start + BLAST_WRITE])  # type: ignore[arg-type]
        return
    await anyio.to_thread.run_sync(write_file, directory / kind.transport, data)
    if kind.transport == "file":
        await connection.send(READY)


def write_file(path: Path, data: memoryview) -> None:
    """Blocking writes of at most 1 MiB (a FIFO: opening waits for the receiver)."""
    with open(path, "wb", buffering=0) as file:
        while data:
            data = data[file.write(data[:BLAST_WRITE]) :]


# ---------------------------------------------------------------------------------------------
# The receiver: one case per connection, timed, then the same bytes through pickle.loads.


async def chunks(reader: asyncio.StreamReader) -> AsyncGenerator[bytes, None]:
    """The async iterable kind: what the asyncio reader returns, 64 KiB at most a chunk."""
    while data := await reader.read(65536):
        yield data


Opener = Callable[[], Awaitable[tuple[Any, int | None]]]


async def connect(
    name: str, port: int, way: int, protocol: int, directory: Path, stack: AsyncExitStack
) -> tuple[int, Opener]:
    """Connect for one case. Return the socket's descriptor (for the request) and a coroutine
    function to await after the request: it returns what the way reads and the descriptor to
    poll for the first byte (None: the bytes are all there already)."""
    if name == "trio":
        import trio

        trio_stream = await trio.open_tcp_stream(HOST, port)
        stack.push_async_callback(trio_stream.aclose)
        fd = trio_stream.socket.fileno()
        target: Any = trio_stream
        if way == PICKLESTREAM:
            target = PickleStream.from_trio(trio_stream, protocol=protocol)
        return fd, ready(target, fd)
    if name in ("anyio", "anyio-buffered"):
        anyio_stream = await anyio.connect_tcp(HOST, port)
        stack.push_async_callback(anyio_stream.aclose)
        fd = anyio_stream.extra(SocketAttribute.raw_socket).fileno()
        target = anyio_stream
        if name == "anyio-buffered":
            buffered = BufferedByteStream if way == PICKLESTREAM else BufferedByteReceiveStream
            target = buffered(anyio_stream)
        if way == PICKLESTREAM:
            target = PickleStream(target, protocol=protocol)
        return fd, ready(target, fd)
    reader, writer = await asyncio.open_connection(HOST, port)
    stack.push_async_callback(close_writer, writer)
    fd = writer.get_extra_info("socket").fileno()
    if name == "asyncio":
        if way == PICKLESTREAM:
            return fd, ready(PickleStream.from_asyncio(reader, writer, protocol=protocol), fd)
        return fd, ready(reader, fd)
    if name == "async-iter":
        iterable = chunks(reader)
        stack.push_async_callback(iterable.aclose)
        return fd, ready(iterable, fd)
    import aiofiles

    async def open_file() -> tuple[Any, int | None]:
        if name == "aiofiles-file":
            await reader.readexactly(len(READY))  # the sender has written the file
        file = await aiofiles.open(directory / KINDS[name].transport, "rb")  # FIFO: waits
        stack.push_async_callback(file.close)
        return file, file.fileno() if name == "aiofiles-fifo" else None

    return fd, open_file


def ready(target: Any, fd: int) -> Opener:
    async def opener() -> tuple[Any, int | None]:
        return target, fd

    return opener


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with suppress(OSError):  # reset by the sender after a timeout
        await writer.wait_closed()


def wait_readable(fd: int) -> None:
    """Block (the event loop too, on purpose) until *fd* has a byte to read."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if not poller.poll(POLL_TIMEOUT * 1000):
        raise TimeoutError(f"no byte in {POLL_TIMEOUT} s")


class Capped(BaseException):
    """Raised by `backstop` in the library's code."""


class Backstop:
    """SIGALRM while armed raises `Capped`, but only in the library's own code: anywhere
    else (the event loop, this script) it tries again 10 ms later."""

    armed = False
    library = str(Path(streampickle.__file__).resolve().parent)

    @classmethod
    def handler(cls, signum: int, frame: FrameType | None) -> None:
        if not cls.armed:
            return
        if frame is not None and frame.f_code.co_filename.startswith(cls.library):
            cls.armed = False
            raise Capped
        signal.setitimer(signal.ITIMER_REAL, 0.01)


@contextmanager
def backstop(seconds: float) -> Iterator[None]:
    """Interrupt a case still running after *seconds*. A cancel scope cancels a receive only
    when it awaits something that yields to the event loop; a loader that parses bytes it
    already holds, one ``await`` per opcode that never suspends, is beyond its reach."""
    signal.signal(signal.SIGALRM, Backstop.handler)
    Backstop.armed = True
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        Backstop.armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)


class Meter:
    """The ``progress`` hook of every way: the bytes read so far, for the estimate of a
    case cancelled at the cap (`PickleStream.receive` counts per object: `next` adds them
    up). It is called a few hundred times per pickle where the loader reads ahead, per opcode
    where it does not (a call that costs little next to a receive)."""

    def __init__(self) -> None:
        self.before = self.count = 0

    def __call__(self, count: int) -> None:
        self.count = count

    def next(self) -> None:
        self.before, self.count = self.before + self.count, 0

    @property
    def read(self) -> int:
        return self.before + self.count


async def receive(way: int, target: Any, count: int, meter: Meter) -> tuple[list[Any], float]:
    """Receive *count* objects (one for `aload`) the *way*; return them and when the last
    was built."""
    if way == AIOLOAD:
        obj = await streampickle.aload(target, progress=meter)
        return [obj], time.perf_counter()
    if way == PICKLESTREAM:
        objs = []
        for _ in range(count):
            objs.append(await target.receive(progress=meter))
            meter.next()
        return objs, time.perf_counter()
    objs, done = [], 0.0
    async for obj in streampickle.aiter_load(target, progress=meter):  # to the end, untimed
        objs.append(obj)
        if len(objs) == count:
            done = time.perf_counter()
    return objs, done


@dataclass
class Case:
    protocol: int
    way: int


class Receiver:
    def __init__(self, args: argparse.Namespace, port: int) -> None:
        self.args, self.port, self.seq = args, port, 0
        self.made = payloads(args.size, args.pickles, args.protocols)

    async def run(self, case: Case, warm: bool) -> dict[str, Any]:
        """One case: connect, request, time the way; then time ``pickle.loads``."""
        payload, parts, by_protocol = self.made[warm]
        pickles = by_protocol[case.protocol]
        expected = [payload] if case.way == AIOLOAD else parts
        self.seq += 1
        seq, timed_out, done = self.seq, False, 0.0
        async with AsyncExitStack() as stack:
            fd, opener = await connect(
                self.args.kind, self.port, case.way, case.protocol, self.args.dir, stack
            )
            gc.collect()
            os.write(fd, REQUEST.pack(warm, case.protocol, case.way, seq))
            target, poll_fd = await opener()
            if poll_fd is not None:
                wait_readable(poll_fd)
            meter, cap = Meter(), self.args.timeout
            start = time.perf_counter()
            try:
                with backstop(cap + BACKSTOP), anyio.move_on_after(cap):
                    objs, done = await receive(case.way, target, len(expected), meter)
            except Capped:
                pass
            if not done:  # cancelled, or interrupted
                timed_out, objs, done = True, [], time.perf_counter()
        if not timed_out and objs != expected:
            raise RuntimeError(f"{self.args.kind} {case}: received objects differ")
        del objs
        datas = [pickles.whole] if case.way == AIOLOAD else pickles.parts
        gc.collect()
        begin = time.perf_counter()
        loaded = [pickle.loads(data) for data in datas]
        loads_s = time.perf_counter() - begin
        del loaded
        run: dict[str, Any] = {"seq": seq, "way_s": None, "loads_s": loads_s}
        if not timed_out:
            return run | {"way_s": done - start}
        size = sum(map(len, datas))
        estimate = (done - start) * size / meter.read if meter.read else None
        return run | {"read_bytes": meter.read, "bytes": size, "estimate_s": estimate}

    async def main(self) -> dict[str, Any]:
        args = self.args
        ways = [w for w in args.ways if w != PICKLESTREAM or KINDS[args.kind].picklestream]
        cases = [Case(p, w) for p in args.protocols for w in ways]
        for case in cases:
            await self.run(case, warm=True)
        gc.collect()
        gc.freeze()  # the records and pickles this process keeps: out of the collector's way
        runs: dict[tuple[int, int], list[dict[str, Any]]] = {(c.protocol, c.way): [] for c in cases}
        for round_ in range(args.repeat):
            shift = round_ * len(cases) // args.repeat
            for case in cases[shift:] + cases[:shift]:
                earlier = runs[case.protocol, case.way]
                if earlier and (earlier[0]["way_s"] or math.inf) > args.once_above:
                    continue  # timed out, or slow enough to run once
                run = await self.run(case, warm=False)
                earlier.append(run)
                log(f"  round {round_ + 1}/{args.repeat} {args.kind} protocol {case.protocol} "
                    f"{WAYS[case.way]}: {outcome(run, args.timeout)}")  # fmt: skip
        pickles = self.made[False][2]
        return {
            "digests": {p: made.digest() for p, made in pickles.items()},
            "picklestream_digests": {
                p: hashlib.sha256(b"".join(made.parts)).hexdigest() for p, made in pickles.items()
            },
            "pickle_bytes": {p: len(made.whole) for p, made in pickles.items()},
            "runs": [
                {"protocol": p, "way": WAYS[w], "runs": found} for (p, w), found in runs.items()
            ],
        }


def outcome(run: dict[str, Any], timeout: float) -> str:
    loads = f"loads {run['loads_s']:.3f} s"
    if run["way_s"] is not None:
        return f"{run['way_s']:.3f} s ({loads}, {run['way_s'] / run['loads_s']:.2f}x)"
    text = f"> {timeout:g} s, {run['read_bytes']:,} of {run['bytes']:,} bytes read"
    if run["estimate_s"] is not None:
        text += f" (est. {run['estimate_s']:.0f} s, {run['estimate_s'] / run['loads_s']:.0f}x)"
    return f"{text} ({loads})"


def role_main(args: argparse.Namespace) -> None:
    backend = KINDS[args.kind].backend
    if args.role == "send":
        result = run_async("asyncio", lambda: sender(args))
    else:
        port = int(sys.stdin.readline())  # from the sender
        try:
            result = run_async(backend, Receiver(args, port).main)
        finally:
            with socket.create_connection((HOST, port)) as quit:  # the sender can end too
                quit.sendall(REQUEST.pack(0, 0, QUIT, 0))
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# The parent: a sender/receiver pair per stream kind, then the table.


def run_kind(name: str, args: argparse.Namespace, directory: Path) -> list[dict[str, Any]]:
    """Every protocol x way of one stream kind, in one sender/receiver pair; one row per
    cell (its runs with the sender's send times, and their medians)."""
    flags = [f"--kind={name}", f"--size={args.size}", f"--pickles={args.pickles}"]
    flags += [f"--protocols={','.join(map(str, args.protocols))}", f"--repeat={args.repeat}"]
    flags += [f"--ways={','.join(WAYS[w] for w in args.ways)}", f"--dir={directory}"]
    flags += [f"--timeout={args.timeout}", f"--once-above={args.once_above}"]
    flags += ["--live-send"] if args.live_send else []
    me = [sys.executable, str(Path(__file__).resolve()), *flags]
    sent, got = run_pair([*me, "--role=send"], [*me, "--role=receive"], name)
    if sent["digests"] != got["digests"]:
        raise RuntimeError(f"{name}: the sender's pickles differ from the receiver's")
    if sent["picklestream_digests"] != got["picklestream_digests"]:
        raise RuntimeError(f"{name}: PickleStream.send's bytes differ from pickle.dumps's")
    send_s = {int(seq): seconds for seq, seconds in sent["send_s"].items()}
    rows = []
    for cell in got["runs"]:
        for run in cell["runs"]:
            run["send_s"] = send_s.get(run["seq"])
            run["ratio"] = None if run["way_s"] is None else run["way_s"] / run["loads_s"]
        rows.append({"kind": name, **cell, **summarize(cell["runs"])})
        rows[-1]["pickle_bytes"] = got["pickle_bytes"][str(cell["protocol"])]
    return rows


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians and ranges over a cell's completed runs (``timed_out`` if one was cancelled)."""
    complete = [run for run in runs if run["way_s"] is not None]
    summary: dict[str, Any] = {
        "timed_out": len(complete) < len(runs),
        "loads_s": statistics.median(run["loads_s"] for run in runs),
    }
    for run in runs:
        if run["way_s"] is None and run["estimate_s"] is not None:
            summary["estimated_ratio"] = run["estimate_s"] / run["loads_s"]
    if complete:
        ratios = [run["ratio"] for run in complete]
        sends = [run["send_s"] for run in complete if run["send_s"] is not None]
        summary |= {
            "ratio": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "way_s": statistics.median(run["way_s"] for run in complete),
            "send_s": statistics.median(sends) if sends else None,
        }
    return summary


def cell_text(row: dict[str, Any] | None, timeout: float) -> str:
    if row is None:
        return "n/a"
    if row["timed_out"]:
        if "estimated_ratio" not in row:
            return f"> {timeout:g} s"
        return f"~{row['estimated_ratio']:.0f} est. (> {timeout:g} s)"
    text = f"{row['ratio']:.2f} ({row['way_s']:.3g} s)"
    if len(row["runs"]) > 1:
        text += f" [{row['ratio_min']:.2f}-{row['ratio_max']:.2f}]"
    if row["way"] == WAYS[PICKLESTREAM] and (row["send_s"] or 0) >= SENDER_BOUND * row["way_s"]:
        text += " †"
    return text


def markdown(report: dict[str, Any]) -> str:
    config, host = report["config"], report["machine"]
    rows, timeout = report["rows"], config["timeout"]
    protocols, kinds = config["protocols"], config["kinds"]
    by_cell = {(row["kind"], row["way"], row["protocol"]): row for row in rows}
    versions = ", ".join(f"{name} {version}" for name, version in host["versions"].items())
    command = " ".join(["python benchmarks/bench_protocols.py", *config["argv"]])
    lines = [
        "# Receive time per pickle protocol and stream kind",
        "",
        f"Produced by `{command}` on {host['date']} in {duration(config['duration_s'])}; "
        f"streampickle {report['streampickle']}.",
        f"Machine: {host['cpu']}, {host['cpus']} cores, {host['memory_gib']} GiB RAM, "
        f"{host['os']}; Python {host['python']}; {versions}. 5-minute load average "
        "{:.1f} at the start, {:.1f} at the end.".format(*host["load_average_5min"]),
        *([f"Note: {config['note']}"] if config["note"] else []),
        "",
        f"Each cell: the receive time (first byte available to object built) divided by "
        f"`pickle.loads` of the same bytes in the same receiver process, median of "
        f"{config['repeat']} interleaved rounds (fewer where noted), then the median receive "
        "time in seconds, then the range of the ratios. Payload: "
        f"{config['size']:,} records (dicts of 5 small fields) as one pickle for `aload`, "
        f"as {config['pickles']} pickles back to back for `aiter_load` and "
        "`PickleStream.receive`. "
        f"*~N est. (> {timeout:g} s)*: cancelled at the per-case cap and not repeated; N is "
        "the ratio had it gone on at the rate it read until then (the time it ran times the "
        "pickle's size over the bytes the `progress` hook had counted: rough, and on the low "
        "side, as the hook counts bytes taken from the stream, which may run ahead of the "
        "unpickler). A cell without a range ran "
        f"once (slower than {config['once_above']:g} s in its first round). *n/a*: "
        "`PickleStream` needs a two-way byte stream. "
        + (
            "`PickleStream.receive` rows: the sender called `PickleStream.send` on the socket "
            "during the transfer (`--live-send`), pickling as it sent; †: its sends took at "
            f"least {SENDER_BOUND:.0%} of the receive time, so the sender may have set the pace."
            if config["live_send"]
            else "`PickleStream.receive` rows: the sender wrote the bytes `PickleStream.send` "
            "had written before the clock started (the same bytes as `pickle.dumps` of each "
            "list), as for the other ways, so that only the receiver is timed."
        ),
        "",
        "| stream kind | way | " + " | ".join(f"protocol {p}" for p in protocols) + " |",
        "|---|---|" + "---:|" * len(protocols),
    ]
    for kind, way in itertools.product(kinds, config["ways"]):
        cells = [cell_text(by_cell.get((kind, way, p)), timeout) for p in protocols]
        if kind in report["failures"]:
            cells = ["failed"] * len(protocols)
        lines.append(f"| {kind} | `{way}` | " + " | ".join(cells) + " |")
    lines += [
        "",
        "The baseline: `pickle.loads` of the whole list's pickle (median over every `aload` "
        "run of every kind, in seconds, with its range).",
        "",
        "| protocol | pickle MB | `pickle.loads` s |",
        "|---:|---:|---:|",
    ]
    for protocol in protocols:
        found = [row for row in rows if row["protocol"] == protocol]
        times = [run["loads_s"] for row in found if row["way"] == "aload" for run in row["runs"]]
        if found and times:
            lines.append(
                f"| {protocol} | {found[0]['pickle_bytes'] / 1e6:.2f} | "
                f"{statistics.median(times):.4f} [{min(times):.4f}-{max(times):.4f}] |"
            )
    lines += ["", "Stream kinds:", ""]
    lines += [f"- `{kind}`: {KINDS[kind].text}" for kind in kinds]
    if report["failures"]:
        lines += ["", "Failures:", ""]
        lines += [f"- `{kind}`: {error}" for kind, error in report["failures"].items()]
    return "\n".join(lines) + "\n"


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} minutes"


def library() -> str:
    """Where streampickle is imported from, and its git commit if that is a checkout."""
    where = Path(streampickle.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--", "."],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return f"from `{where}` (not a git checkout)"
    return f"from `{where}` at commit {commit}" + (" with local changes" if dirty else "")


def protocol_list(text: str) -> list[int]:
    chosen = [int(p) for p in text.split(",") if p]
    if not chosen or not set(chosen) <= set(PROTOCOLS):
        raise argparse.ArgumentTypeError(f"protocols are among {PROTOCOLS}")
    return chosen


def way_list(text: str) -> list[int]:
    return [WAYS.index(way) for way in names(WAYS)(text)]


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """--markdown, --json and --note, as `write_outputs` uses them (shared by the benchmarks
    that write a table of their own)."""
    parser.add_argument("--markdown", type=Path, help="write the table here too")
    parser.add_argument("--json", type=Path, help="write every run's figures here")
    parser.add_argument("--note", default="", help="a line for the markdown (what was measured)")


def median_range(values: list[float], form: str) -> str:
    """``"median (min-max)"``, each number formatted with *form* (e.g. ``"{:.2f}"``)."""
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{form.format(mid)} ({form.format(low)}-{form.format(high)})"


def write_outputs(table: str, report: dict[str, Any], args: argparse.Namespace) -> None:
    """Print *table*, and write it and *report* where --markdown and --json say."""
    print(table)
    if args.markdown:
        args.markdown.write_text(table)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="5k records, 2 rounds")
    parser.add_argument("--size", type=int, help="records in the payload (default 100000)")
    parser.add_argument("--pickles", type=int, default=10, help="pickles for aiter_load etc.")
    parser.add_argument("--repeat", type=int, help="interleaved rounds (default 3; quick 2)")
    parser.add_argument("--kinds", type=names(KINDS), default=list(KINDS))
    parser.add_argument("--protocols", type=protocol_list, default=list(PROTOCOLS))
    parser.add_argument("--ways", type=way_list, default=list(range(len(WAYS))))
    parser.add_argument("--timeout", type=float, help="per-case cap, seconds (5; quick 0.5)")
    parser.add_argument(
        "--once-above", type=float, default=2.0,
        help="seconds: a cell slower than this in its first round is not repeated",
    )  # fmt: skip
    parser.add_argument(
        "--live-send", action="store_true",
        help="PickleStream.receive: the sender pickles as it sends (PickleStream.send on the "
        "socket during the transfer), instead of writing what PickleStream.send wrote before",
    )  # fmt: skip
    add_output_options(parser)
    parser.add_argument("--role", choices=("send", "receive"), help=argparse.SUPPRESS)
    parser.add_argument("--kind", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.size = args.size or (5_000 if args.quick else 100_000)
    args.repeat = args.repeat or (2 if args.quick else 3)
    args.timeout = args.timeout or (0.5 if args.quick else 5.0)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.role:
        return role_main(args)
    started, load_before = time.monotonic(), os.getloadavg()[1]
    rows, failures = [], {}
    with tempfile.TemporaryDirectory() as directory:
        os.mkfifo(Path(directory) / "fifo")
        for name in args.kinds:
            log(f"{name}: {args.size} records, protocols {args.protocols}, {args.repeat} rounds")
            try:
                rows += run_kind(name, args, Path(directory))
            except (RuntimeError, subprocess.TimeoutExpired) as error:
                log(f"{name}: failed: {error}")
                failures[name] = str(error)
    host = machine() | {"load_average_5min": [load_before, os.getloadavg()[1]]}
    host["versions"]["aiofiles"] = metadata.version("aiofiles")
    report = {
        "machine": host,
        "streampickle": library(),
        "config": {
            "argv": sys.argv[1:] if argv is None else argv,
            "size": args.size,
            "pickles": args.pickles,
            "repeat": args.repeat,
            "kinds": args.kinds,
            "protocols": args.protocols,
            "ways": [WAYS[w] for w in args.ways],
            "timeout": args.timeout,
            "once_above": args.once_above,
            "live_send": args.live_send,
            "note": args.note,
            "duration_s": time.monotonic() - started,
        },
        "rows": rows,
        "failures": failures,
    }
    write_outputs(markdown(report), report, args)


if __name__ == "__main__":
    main()
