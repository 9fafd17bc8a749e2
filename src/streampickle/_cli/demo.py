"""``streampickle demo``: stream a large object over loopback, then the naive way."""

from __future__ import annotations

import argparse
import gc
import json
import pickle
import re
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import anyio
from anyio.abc import ByteReceiveStream, SocketAttribute, SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from .._async import adump, aload
from .._sansio import Progress
from .common import CommandError, positive

__all__ = ["add_parser", "run"]

_DEMO_HELP = """\
A server and a client run on one event loop in this process, on 127.0.0.1. The client sends
the payload twice: first with streampickle (adump into the socket, aload on the server as the
frames arrive), then the naive way (pickle.dumps, an 8-byte length prefix and one send; the
server does receive_exactly and pickle.loads). Both use protocol 5 and the received object is
compared with the original. A progress line on stderr counts the bytes sent and received
through the progress hooks of adump and aload.

measured, per way:
  wall time           from the start of pickling to the object loaded on the server
  peak memory         the process's resident-set high-water mark during the transfer, minus
                      the resident set before it (Linux: VmHWM, reset through
                      /proc/self/clear_refs). It counts everything the transfer holds (the
                      pickle, buffers and the received copy of the object) at no cost to the
                      other figures; tracemalloc would see only Python allocations and slows
                      unpickling of small objects about 9x, skewing the time and stall
                      figures. Where the high-water mark cannot be reset it is reported as
                      unavailable ("n/a", null).
  longest loop stall  the most a task sleeping 1 ms at a time on the same loop woke up late:
                      how long the loop could run nothing else
  time to first byte  from the start of pickling to the first byte received by the server

--json prints {"backend", "payload", "records", "mb", "memory_measure", "results"}, where
"results" maps "streampickle" and "naive" to {"bytes", "wall_s", "peak_memory_mb",
"max_stall_ms", "first_byte_ms", "intact"}."""


def add_parser(commands: Any) -> None:
    """Add the command to *commands* (argparse subparsers)."""
    raw = argparse.RawDescriptionHelpFormatter
    sub = commands.add_parser(
        "demo", help="compare streaming with the naive way", description=_DEMO_HELP,
        formatter_class=raw,
    )  # fmt: skip
    sub.add_argument(
        "--backend", choices=("asyncio", "uvloop", "trio"), default="asyncio",
        help="event loop (default: asyncio)",
    )  # fmt: skip
    sub.add_argument(
        "--payload", choices=("records", "arrays"), default="records",
        help="records: a graph of small dicts; arrays: numpy arrays (needs numpy)",
    )  # fmt: skip
    sub.add_argument(
        "--records", type=positive, default=1_000_000, metavar="N",
        help="records in the graph (default: 1,000,000, about 50 MB pickled)",
    )  # fmt: skip
    sub.add_argument(
        "--mb", type=positive, default=100, metavar="N",
        help="megabytes of arrays for --payload arrays (default: 100)",
    )  # fmt: skip
    sub.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="show the progress line on stderr (default: when stderr is a terminal)",
    )  # fmt: skip
    sub.add_argument("--json", action="store_true", help="print the results as JSON")
    sub.set_defaults(run=run)


HEARTBEAT = 0.001  # seconds between the heartbeat task's ticks
METHODS = ("streampickle", "naive")


@dataclass
class Result:
    """One transfer's figures (see ``streampickle demo --help``)."""

    bytes: int = 0
    wall_s: float = 0.0
    peak_memory_mb: float | None = None
    max_stall_ms: float = 0.0
    first_byte_ms: float = 0.0
    intact: bool = False


def run(args: argparse.Namespace) -> int:
    payload = _build(args)
    backend, options = args.backend, {}
    if backend == "uvloop":
        _require("uvloop", "--backend uvloop")
        backend, options = "asyncio", {"use_uvloop": True}
    elif backend == "trio":
        _require("trio", "--backend trio")
    show = sys.stderr.isatty() if args.progress is None else args.progress
    results = {}
    for method in METHODS:
        result, received = anyio.run(
            _transfer, payload, method, _Progress(method, sys.stderr, show),
            backend=backend, backend_options=options,
        )  # fmt: skip
        result.intact = _same(payload, received)
        results[method] = result
        del received
    intact = all(result.intact for result in results.values())
    if args.json:
        print(json.dumps(_demo_json(args, results), indent=2))
    else:
        print(_demo_table(args, results))
    if not intact:
        raise CommandError("an object arrived different from the one sent")
    return 0


def _require(module: str, option: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise CommandError(f"{option} needs {module}: pip install {module}") from None


def _build(args: argparse.Namespace) -> Any:
    """The object to send: a graph of small records, or numpy arrays (pages touched)."""
    if args.payload == "records":
        return [
            {"id": i, "name": f"record {i}", "score": i / 7, "tags": ("a", "b"), "parent": i // 2}
            for i in range(args.records)
        ]
    _require("numpy", "--payload arrays")
    import numpy

    count = 8
    return [numpy.full((args.mb << 20) // count, i, numpy.uint8) for i in range(count)]


def _same(sent: Any, received: Any) -> bool:
    if type(sent) is list and sent and type(sent[0]).__name__ == "ndarray":
        import numpy

        return len(sent) == len(received) and all(map(numpy.array_equal, sent, received))
    return bool(sent == received)


async def _transfer(obj: Any, method: str, progress: _Progress) -> tuple[Result, Any]:
    """Send *obj* from a client to a server on loopback by *method*; measure it. Return the
    figures and the object received (compared, and freed, by the caller: both take long
    enough on a large graph to show up as loop stalls)."""
    result = Result()
    received: Any = None
    done = anyio.Event()
    stall = [0.0]
    start, baseline = 0.0, None  # set right before the send, read by serve()

    async def serve(stream: SocketStream) -> None:
        nonlocal received
        async with stream:
            timed = _FirstByte(stream)
            received = await _RECEIVE[method](timed, progress.received)
            result.wall_s = time.perf_counter() - start
            result.peak_memory_mb = _peak_mb(baseline)
            result.first_byte_ms = (timed.first - start) * 1000
        done.set()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, serve)
        group.start_soon(_heartbeat, stall)
        async with await anyio.connect_tcp("127.0.0.1", port) as client:
            await anyio.sleep(0.01)  # let the heartbeat start
            baseline = _reset_peak()
            start = time.perf_counter()
            result.bytes = await _SEND[method](obj, client, progress.sent)
            await done.wait()
        group.cancel_scope.cancel()  # stop serving and the heartbeat
    progress.close()
    result.max_stall_ms = stall[0] * 1000
    return result, received


async def _heartbeat(stall: list[float]) -> None:
    """Sleep 1 ms at a time; keep in *stall* the most a wake-up came late."""
    last = time.perf_counter()
    while True:
        await anyio.sleep(HEARTBEAT)
        now = time.perf_counter()
        stall[0] = max(stall[0], now - last - HEARTBEAT)
        last = now


class _FirstByte(ByteReceiveStream):
    """A receive stream that notes when its first bytes arrived."""

    def __init__(self, stream: ByteReceiveStream) -> None:
        self.stream = stream
        self.first = 0.0  # perf_counter() when the first receive returned

    async def receive(self, max_bytes: int = 65536) -> bytes:
        data = await self.stream.receive(max_bytes)
        self.first = self.first or time.perf_counter()
        return data

    async def aclose(self) -> None:
        await self.stream.aclose()


async def _stream_send(obj: Any, stream: SocketStream, progress: Progress) -> int:
    return await adump(obj, stream, protocol=5, progress=progress)


async def _stream_receive(stream: ByteReceiveStream, progress: Progress) -> Any:
    return await aload(stream, progress=progress)


async def _naive_send(obj: Any, stream: SocketStream, progress: Progress) -> int:
    data = pickle.dumps(obj, protocol=5)  # the whole pickle, built while the loop waits
    await stream.send(len(data).to_bytes(8, "little"))
    await stream.send(data)
    progress(len(data))
    return len(data)


async def _naive_receive(stream: ByteReceiveStream, progress: Progress) -> Any:
    buffered = BufferedByteReceiveStream(stream)
    size = int.from_bytes(await buffered.receive_exactly(8), "little")
    data = await buffered.receive_exactly(size)
    progress(size)
    return pickle.loads(data)


_SEND: dict[str, Callable[[Any, SocketStream, Progress], Awaitable[int]]] = {
    "streampickle": _stream_send,
    "naive": _naive_send,
}
_RECEIVE: dict[str, Callable[[ByteReceiveStream, Progress], Awaitable[Any]]] = {
    "streampickle": _stream_receive,
    "naive": _naive_receive,
}


class _Progress:
    """The demo's progress line on stderr: bytes sent and received, fed by the progress hooks.

    A hand-made line rather than tqdm or rich: the total is unknown while streaming (so a
    counter with a rate is all either would show), and the command line then needs nothing
    beyond the package's own dependencies. On a terminal the line is redrawn in place ten
    times a second; elsewhere (``--progress`` into a file or pipe) a plain line is written
    each second, and a last one at the end.
    """

    def __init__(self, label: str, stream: TextIO, enabled: bool) -> None:
        self.label = label
        self.stream = stream
        self.enabled = enabled
        self.tty = stream.isatty()
        self.counts = [0, 0]  # sent, received
        self.start = time.perf_counter()
        self.drawn = 0.0

    def sent(self, count: int) -> None:
        self.counts[0] = count
        self._draw()

    def received(self, count: int) -> None:
        self.counts[1] = count
        self._draw()

    def close(self) -> None:
        self._draw(last=True)

    def _draw(self, last: bool = False) -> None:
        now = time.perf_counter()
        if not self.enabled or (not last and now - self.drawn < (0.1 if self.tty else 1.0)):
            return
        self.drawn = now
        sent, received = (count / 1e6 for count in self.counts)
        rate = received / max(now - self.start, 1e-9)
        text = f"{self.label}: sent {sent:.1f} MB, received {received:.1f} MB ({rate:.0f} MB/s)"
        end = "\n" if last or not self.tty else ""
        self.stream.write(("\r\x1b[K" if self.tty else "") + text + end)
        self.stream.flush()


# -- peak memory ------------------------------------------------------------------------------

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kb(field: str) -> int:
    found = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    if found is None:
        raise OSError(f"no {field} in {_STATUS}")
    return int(found.group(1))


def _reset_peak() -> int | None:
    """Reset the resident-set high-water mark; return the resident set in KiB, or ``None``
    where the mark cannot be reset (not Linux, or /proc not writable)."""
    gc.collect()  # garbage of earlier runs must not be counted, or reused, by this one
    try:
        _CLEAR_REFS.write_text("5")
        return _status_kb("VmRSS")
    except OSError:
        return None


def _peak_mb(baseline: int | None) -> float | None:
    """Megabytes the high-water mark rose above *baseline* since `_reset_peak`."""
    if baseline is None:
        return None
    # The mark is kept per page fault, the baseline read after the reset: a page freed in
    # between can put the mark a page below the baseline.
    return max(0, _status_kb("VmHWM") - baseline) * 1024 / 1e6


# -- output -----------------------------------------------------------------------------------


def _demo_json(args: argparse.Namespace, results: dict[str, Result]) -> dict[str, Any]:
    return {
        "backend": args.backend,
        "payload": args.payload,
        "records": args.records if args.payload == "records" else None,
        "mb": args.mb if args.payload == "arrays" else None,
        "memory_measure": None if results["naive"].peak_memory_mb is None else "rss_high_water",
        "results": {method: asdict(result) for method, result in results.items()},
    }


_ROWS: tuple[tuple[str, str, str], ...] = (
    ("pickle size (MB)", "bytes", "{:.1f}"),
    ("wall time (s)", "wall_s", "{:.3f}"),
    ("peak memory (MB, RSS)", "peak_memory_mb", "{:.1f}"),
    ("longest loop stall (ms)", "max_stall_ms", "{:.1f}"),
    ("time to first byte (ms)", "first_byte_ms", "{:.1f}"),
)


def _demo_table(args: argparse.Namespace, results: dict[str, Result]) -> str:
    what = f"{args.records:,} records" if args.payload == "records" else f"{args.mb} MB of arrays"
    lines = [
        f"payload: {what}, protocol 5, loopback TCP, backend {args.backend}",
        f"{'':24} {METHODS[0]:>13} {METHODS[1]:>13}",
    ]
    for label, key, form in _ROWS:
        cells = [_cell(getattr(results[method], key), key, form) for method in METHODS]
        lines.append(f"{label:24} {cells[0]:>13} {cells[1]:>13}")
    intact = all(result.intact for result in results.values())
    lines.append("the object arrived intact both ways" if intact else "OBJECT CORRUPTED")
    return "\n".join(lines)


def _cell(value: float | None, key: str, form: str) -> str:
    if value is None:
        return "n/a"
    return form.format(value / 1e6 if key == "bytes" else value)
