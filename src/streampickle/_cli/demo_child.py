"""The child processes of ``streampickle demo``: one end of a transfer (``--role send`` or
``receive``), or the floor (``--role floor``: ``pickle.loads`` of the payload in a fresh
process). Each prints its figures to the parent as JSON lines (see `demo`)."""

from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import re
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn

import anyio
from anyio.abc import ByteReceiveStream, SocketAttribute, SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from .._async import adump, aload
from .._sansio import Progress
from .common import CommandError

__all__ = ["build", "child", "require", "same"]

HEARTBEAT = 0.001  # seconds between the heartbeat task's ticks


def require(module: str, option: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise CommandError(f"{option} needs {module}: pip install {module}") from None


def build(args: argparse.Namespace) -> Any:
    """The object to send: a graph of small records, or numpy arrays (pages touched)."""
    if args.payload == "records":
        return [
            {"id": i, "name": f"record {i}", "score": i / 7, "tags": ("a", "b"), "parent": i // 2}
            for i in range(args.records)
        ]
    require("numpy", "--payload arrays")
    import numpy

    count = 8
    return [numpy.full((args.mb << 20) // count, i, numpy.uint8) for i in range(count)]


def same(sent: Any, received: Any) -> bool:
    if type(sent) is list and sent and type(sent[0]).__name__ == "ndarray":
        import numpy

        return len(sent) == len(received) and all(map(numpy.array_equal, sent, received))
    return bool(sent == received)


def _emit(**message: Any) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def child(args: argparse.Namespace) -> NoReturn:
    """Run one end (or the floor), print its figures as a JSON line, and exit at once: the
    teardown of a large graph would only add to the demo's duration."""
    if args.role == "floor":
        _floor(args)
    else:
        backend, options = args.backend, {}
        if backend == "uvloop":
            backend, options = "asyncio", {"use_uvloop": True}
        role = _send if args.role == "send" else _receive
        anyio.run(role, args, backend=backend, backend_options=options)
    sys.stdout.flush()
    os._exit(0)


class _Emitter:
    """A progress hook in a child: counts to the parent as JSON lines, ten a second at most."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.count = 0
        self.drawn = 0.0

    def __call__(self, count: int) -> None:
        self.count = count
        now = time.monotonic()
        if self.enabled and now - self.drawn >= 0.1:
            self.drawn = now
            _emit(progress=count)

    def close(self) -> None:
        if self.enabled:
            _emit(progress=self.count)


async def _send(args: argparse.Namespace) -> None:
    obj = build(args)
    progress = _Emitter(bool(args.progress))
    stall = [0.0]
    port = int(sys.stdin.readline())  # from the parent, once the receiver listens
    client = await anyio.connect_tcp("127.0.0.1", port)
    async with client, anyio.create_task_group() as group:
        group.start_soon(_heartbeat, stall)
        await BufferedByteReceiveStream(client).receive_exactly(1)  # the receiver is ready
        baseline = _reset_peak()
        stall[0] = 0.0
        start, cpu = time.monotonic(), time.process_time()
        size = await _SEND[args.method](obj, client, progress)
        cpu = time.process_time() - cpu
        peak = _peak_mb(baseline)
        group.cancel_scope.cancel()
    progress.close()
    figures = {"start": start, "bytes": size, "peak_memory_mb": peak, "cpu_s": cpu}
    _emit(result={**figures, "max_stall_ms": stall[0] * 1000})


async def _receive(args: argparse.Namespace) -> None:
    # The object to compare with, built while the sender builds its own (two cores) and frozen:
    # the collector skips it, so it costs the measured unpickling nothing.
    expected = build(args)
    gc.freeze()
    progress = _Emitter(bool(args.progress))
    stall = [0.0]
    figures: dict[str, Any] = {}
    received: Any = None
    done = anyio.Event()

    async def serve(stream: SocketStream) -> None:
        nonlocal received
        async with stream:
            baseline = _reset_peak()
            stall[0] = 0.0
            await stream.send(b"!")  # go
            timed = _FirstByte(stream)
            cpu = time.process_time()
            received = await _RECEIVE[args.method](timed, progress)
            figures["end"] = time.monotonic()
            figures["cpu_s"] = time.process_time() - cpu
            figures["peak_memory_mb"] = _peak_mb(baseline)
            figures["first"] = timed.first
            figures["bytes"] = progress.count
        done.set()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, serve)
        group.start_soon(_heartbeat, stall)
        _emit(port=listener.extra(SocketAttribute.local_port))
        await done.wait()
        group.cancel_scope.cancel()  # stop serving and the heartbeat
    progress.close()
    figures["max_stall_ms"] = stall[0] * 1000
    figures["intact"] = same(expected, received)  # after the figures: not measured
    _emit(result=figures)


def _floor(args: argparse.Namespace) -> None:
    """The receiver's floor: ``pickle.loads`` of the whole pickle, in this fresh process."""
    data = Path(args.source).read_bytes()
    baseline = _reset_peak()
    start = time.perf_counter()
    obj = pickle.loads(data)
    seconds = time.perf_counter() - start
    _emit(result={"floor_s": seconds, "peak_memory_mb": _peak_mb(baseline)})
    del obj


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
        self.first = 0.0  # monotonic() when the first receive returned

    async def receive(self, max_bytes: int = 65536) -> bytes:
        data = await self.stream.receive(max_bytes)
        self.first = self.first or time.monotonic()
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
