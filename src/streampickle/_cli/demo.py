"""``streampickle demo``: stream a large object over loopback, then the naive way.

Each transfer runs between two fresh processes (``python -m streampickle demo --role ...``,
hidden options), as in real use: in one process the way run second would reuse the pages the
first one faulted in, and win for that alone.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO

from .common import CommandError, positive
from .demo_child import build as _build
from .demo_child import child as _child
from .demo_child import require as _require

__all__ = ["add_parser", "run"]

_DEMO_HELP = """\
Each transfer runs between two fresh processes on 127.0.0.1: a receiver (a server) and a
sender (a client), as in real use. The ways alternate: streampickle (adump into the socket,
aload on the receiver as the frames arrive) and the naive way (pickle.dumps, an 8-byte length
prefix and one send; the receiver does receive_exactly and pickle.loads). Both use protocol 5;
the receiver compares the object with one it built itself (before the transfer, frozen out of
the garbage collector's way). One warm-up transfer each way is
not counted, then --runs transfers each way (the order swapped every other round); the table
shows medians, and the range over the runs for the wall time. A "floor" row times what any
streaming scheme still has to do on the receiver: pickle.loads of the same bytes, read from a
file, in a fresh process. A one-line verdict ends the output. A progress line on stderr counts
the bytes sent and received through the progress hooks of adump and aload.

The default (500,000 records, about 25 MB pickled, 3 runs: 8 transfers and 3 floors) takes
about 20-30 s on 2 cores, longer on a busy machine.

measured, per way (each end measures itself, times on the shared monotonic clock):
  wall time           from the start of pickling on the sender to the object loaded on the
                      receiver
  peak memory         the resident-set high-water mark during the transfer, minus the
                      resident set before it, of the sender plus the receiver (Linux: VmHWM,
                      reset through /proc/self/clear_refs). It counts everything the transfer
                      holds (the pickle, buffers and the received copy of the object) at no
                      cost to the other figures; tracemalloc would see only Python
                      allocations and slows unpickling of small objects about 9x. Where the
                      high-water mark cannot be reset it is reported as unavailable ("n/a",
                      null).
  longest loop stall  the most a task sleeping 1 ms at a time on the sender's or the
                      receiver's loop woke up late: how long that loop could run nothing else
  time to first byte  from the start of pickling to the first byte received
  CPU time            process time of the sender and of the receiver during the transfer:
                      where the wall time is well above the larger of the two, the ends
                      were short of cores (a busy machine) rather than slow

--json prints {"backend", "payload", "records", "mb", "memory_measure", "results", "runs",
"floor_s", "floor", "verdict", "samples"}, where "results" maps "streampickle" and "naive" to
{"bytes", "wall_s", "peak_memory_mb", "max_stall_ms", "first_byte_ms", "intact"} (medians over
the runs; "intact": every run's object arrived equal) and "wall_s_range", "sender_peak_memory_mb",
"receiver_peak_memory_mb", "sender_max_stall_ms", "receiver_max_stall_ms", "sender_cpu_s",
"receiver_cpu_s"; "floor_s" is the
median floor time, "floor" its runs and range; "samples" lists every transfer, warm-ups
included ("warmup": true)."""


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
        "--records", type=positive, default=500_000, metavar="N",
        help="records in the graph (default: 500,000, about 25 MB pickled)",
    )  # fmt: skip
    sub.add_argument(
        "--mb", type=positive, default=100, metavar="N",
        help="MiB (2**20 bytes) of arrays for --payload arrays; the table's MB are 10**6 bytes "
        "(default: 100)",
    )  # fmt: skip
    sub.add_argument(
        "--runs", type=positive, default=3, metavar="N",
        help="counted transfers each way, after one warm-up each (default: 3)",
    )  # fmt: skip
    sub.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="show the progress line on stderr (default: when stderr is a terminal)",
    )  # fmt: skip
    sub.add_argument("--json", action="store_true", help="print the results as JSON")
    # One end of a transfer, in its own process (started by the demo itself).
    hidden = argparse.SUPPRESS
    sub.add_argument("--role", choices=("send", "receive", "floor"), help=hidden)
    sub.add_argument("--method", choices=("streampickle", "naive"), help=hidden)
    sub.add_argument("--source", help=hidden)
    sub.set_defaults(run=run)


METHODS = ("streampickle", "naive")
TIMEOUT = 300  # seconds a child process may take before the demo gives up


@dataclass
class Result:
    """One way's figures, medians over the runs (see ``streampickle demo --help``)."""

    bytes: int = 0
    wall_s: float = 0.0
    peak_memory_mb: float | None = None
    max_stall_ms: float = 0.0
    first_byte_ms: float = 0.0
    intact: bool = False
    wall_s_range: list[float] = field(default_factory=list)
    sender_peak_memory_mb: float | None = None
    receiver_peak_memory_mb: float | None = None
    sender_max_stall_ms: float = 0.0
    receiver_max_stall_ms: float = 0.0
    sender_cpu_s: float = 0.0
    receiver_cpu_s: float = 0.0


def run(args: argparse.Namespace) -> int:
    if args.role is not None:
        _child(args)
    if args.backend == "uvloop":
        _require("uvloop", "--backend uvloop")
    elif args.backend == "trio":
        _require("trio", "--backend trio")
    if args.payload == "arrays":
        _require("numpy", "--payload arrays")
    show = sys.stderr.isatty() if args.progress is None else args.progress
    samples: list[dict[str, Any]] = []
    floors: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="streampickle-demo-") as folder:
        source = Path(folder, "payload.pickle")
        source.write_bytes(pickle.dumps(_build(args), protocol=5))
        gc.collect()
        for method in METHODS:
            samples.append(_pair(args, method, show, warmup=True))
        for round_ in range(args.runs):
            for method in METHODS if round_ % 2 == 0 else METHODS[::-1]:
                samples.append(_pair(args, method, show, warmup=False))
            with _start(args, "floor", source=str(source)) as child:
                floors.append(child.result())
    results = {m: _summary([s for s in samples if s["method"] == m]) for m in METHODS}
    floor = _floor_summary(floors)
    verdict = _verdict(results, floor["floor_s"])
    intact = all(sample["intact"] for sample in samples)
    if args.json:
        print(json.dumps(_demo_json(args, results, floor, verdict, samples), indent=2))
    else:
        print(_demo_table(args, results, floor, verdict, intact))
    if not intact:
        raise CommandError("an object arrived different from the one sent")
    return 0


# -- the parent: one process per end, one transfer at a time ---------------------------------


class _Child:
    """A child process of the demo (``--role``): its JSON lines on stdout, read by a thread.
    Progress lines feed *progress*; the others wait in a queue for `message`."""

    def __init__(self, command: list[str], progress: Callable[[int], None] | None) -> None:
        self.stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in result)
        package = str(Path(__file__).resolve().parents[2])  # the child imports this package
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [package, os.environ.get("PYTHONPATH")]))}  # fmt: skip
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, env=env
        )
        self.messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.progress = progress
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            message = json.loads(line)
            if "progress" in message:
                if self.progress is not None:
                    self.progress(message["progress"])
            else:
                self.messages.put(message)
        self.messages.put(None)  # end of output

    def tell(self, line: str) -> None:
        """Write *line* to the child's stdin and close it."""
        assert self.process.stdin is not None
        with self.process.stdin:
            self.process.stdin.write(line.encode() + b"\n")

    def message(self) -> dict[str, Any]:
        try:
            message = self.messages.get(timeout=TIMEOUT)
        except queue.Empty:
            message = None
        if message is None:
            self.close()
            self.stderr.seek(0)
            lines = self.stderr.read().decode(errors="replace").strip().splitlines()
            raise CommandError(f"a demo process failed: {lines[-1] if lines else 'no output'}")
        return message

    def result(self) -> dict[str, Any]:
        result: dict[str, Any] = self.message()["result"]
        self.process.wait(TIMEOUT)
        return result

    def close(self) -> None:
        """End the process if it still runs; close its pipes."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.thread.join(TIMEOUT)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()

    def __enter__(self) -> _Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        self.stderr.close()


def _start(
    args: argparse.Namespace, role: str, progress: Callable[[int], None] | None = None, **extra: Any
) -> _Child:
    command = [sys.executable, "-m", "streampickle", "demo", "--role", role]
    for name in ("payload", "records", "mb", "backend", *extra):
        command += [f"--{name}", str(extra.get(name, getattr(args, name)))]
    command.append("--progress" if progress is not None else "--no-progress")
    return _Child(command, progress)


def _pair(args: argparse.Namespace, method: str, show: bool, warmup: bool) -> dict[str, Any]:
    """One transfer by *method* from a fresh sender to a fresh receiver process."""
    label = f"{method} (warm-up)" if warmup else method
    progress = _Progress(label, sys.stderr, show)
    # Both start at once (imports and the sender's payload overlap); the sender reads the
    # receiver's port from its stdin.
    with (
        _start(args, "receive", progress.received if show else None, method=method) as receiver,
        _start(args, "send", progress.sent if show else None, method=method) as sender,
    ):
        sender.tell(str(receiver.message()["port"]))
        sent, received = sender.result(), receiver.result()
    progress.close()
    start = sent["start"]
    peaks = (sent["peak_memory_mb"], received["peak_memory_mb"])
    return {
        "method": method,
        "warmup": warmup,
        "bytes": sent["bytes"],
        "wall_s": received["end"] - start,
        "peak_memory_mb": None if None in peaks else sum(peaks),
        "max_stall_ms": max(sent["max_stall_ms"], received["max_stall_ms"]),
        "first_byte_ms": (received["first"] - start) * 1000,
        "intact": received["intact"] and received["bytes"] == sent["bytes"],
        "sender_peak_memory_mb": peaks[0],
        "receiver_peak_memory_mb": peaks[1],
        "sender_max_stall_ms": sent["max_stall_ms"],
        "receiver_max_stall_ms": received["max_stall_ms"],
        "sender_cpu_s": sent["cpu_s"],
        "receiver_cpu_s": received["cpu_s"],
    }


def _median(values: list[Any]) -> Any:
    return None if None in values else statistics.median(values)


def _summary(samples: list[dict[str, Any]]) -> Result:
    counted = [sample for sample in samples if not sample["warmup"]]
    result = Result(intact=all(sample["intact"] for sample in samples))
    for name in asdict(result):
        if name not in ("intact", "wall_s_range"):
            setattr(result, name, _median([sample[name] for sample in counted]))
    walls = [sample["wall_s"] for sample in counted]
    result.wall_s_range = [min(walls), max(walls)]
    return result


def _floor_summary(floors: list[dict[str, Any]]) -> dict[str, Any]:
    seconds = [floor["floor_s"] for floor in floors]
    return {
        "floor_s": statistics.median(seconds),
        "floor_s_range": [min(seconds), max(seconds)],
        "peak_memory_mb": _median([floor["peak_memory_mb"] for floor in floors]),
        "samples": seconds,
    }


def _verdict(results: dict[str, Result], floor_s: float) -> str:
    ours, naive = results["streampickle"], results["naive"]
    text = (
        f"streampickle: {ours.wall_s / naive.wall_s:.2f}x the naive time, "
        f"{ours.wall_s / floor_s:.2f}x the receiver's floor; "
        f"longest loop stall {ours.max_stall_ms:,.0f} ms vs {naive.max_stall_ms:,.0f} ms"
    )
    if ours.peak_memory_mb is not None and naive.peak_memory_mb is not None:
        text += f"; peak memory {ours.peak_memory_mb:,.0f} MB vs {naive.peak_memory_mb:,.0f} MB"
    return text


# -- the children: one end of a transfer each, or the floor ---------------------------------


class _Progress:
    """The demo's progress line on stderr: bytes sent and received, fed by the progress hooks.

    A hand-made line rather than tqdm or rich: the total is unknown while streaming (so a
    counter with a rate is all either would show), and the command line then needs nothing
    beyond the package's own dependencies. On a terminal the line is redrawn in place ten
    times a second; elsewhere (``--progress`` into a file or pipe) a plain line is written
    each second, and a last one at the end. The counts come from the two child processes,
    through one reader thread each.
    """

    def __init__(self, label: str, stream: TextIO, enabled: bool) -> None:
        self.label = label
        self.stream = stream
        self.enabled = enabled
        self.tty = stream.isatty()
        self.counts = [0, 0]  # sent, received
        self.start = 0.0  # perf_counter() at the first count: the rate leaves out start-up
        self.drawn = 0.0
        self.lock = threading.Lock()

    def sent(self, count: int) -> None:
        self.counts[0] = count
        self._draw()

    def received(self, count: int) -> None:
        self.counts[1] = count
        self._draw()

    def close(self) -> None:
        self._draw(last=True)

    def _draw(self, last: bool = False) -> None:
        with self.lock:
            self._draw_locked(last)

    def _draw_locked(self, last: bool) -> None:
        now = time.perf_counter()
        self.start = self.start or now
        if not self.enabled or (not last and now - self.drawn < (0.1 if self.tty else 1.0)):
            return
        self.drawn = now
        sent, received = (count / 1e6 for count in self.counts)
        rate = received / max(now - self.start, 1e-9)
        text = f"{self.label}: sent {sent:.1f} MB, received {received:.1f} MB ({rate:.0f} MB/s)"
        end = "\n" if last or not self.tty else ""
        self.stream.write(("\r\x1b[K" if self.tty else "") + text + end)
        self.stream.flush()


# -- output -----------------------------------------------------------------------------------


def _demo_json(
    args: argparse.Namespace,
    results: dict[str, Result],
    floor: dict[str, Any],
    verdict: str,
    samples: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "backend": args.backend,
        "payload": args.payload,
        "records": args.records if args.payload == "records" else None,
        "mb": args.mb if args.payload == "arrays" else None,
        "memory_measure": None if results["naive"].peak_memory_mb is None else "rss_high_water",
        "results": {method: asdict(result) for method, result in results.items()},
        "runs": args.runs,
        "floor_s": floor["floor_s"],
        "floor": floor,
        "verdict": verdict,
        "samples": samples,
    }


_ROWS: tuple[tuple[str, str, str], ...] = (
    ("pickle size (MB)", "bytes", "{:.1f}"),
    ("wall time (s)", "wall_s", "{:.3f}"),
    ("  range over runs (s)", "wall_s_range", "{:.2f}-{:.2f}"),
    ("peak memory (MB, RSS)", "peak_memory_mb", "{:.1f}"),
    ("  sender + receiver", "", ""),
    ("longest loop stall (ms)", "max_stall_ms", "{:.1f}"),
    ("time to first byte (ms)", "first_byte_ms", "{:.1f}"),
    ("CPU time (s)", "", ""),
    ("  sender + receiver", "-", ""),
)


def _demo_table(
    args: argparse.Namespace,
    results: dict[str, Result],
    floor: dict[str, Any],
    verdict: str,
    intact: bool,
) -> str:
    what = f"{args.records:,} records" if args.payload == "records" else f"{args.mb} MiB of arrays"
    runs = f"{args.runs} run" + ("s" if args.runs > 1 else "")
    lines = [
        f"payload: {what}, protocol 5, loopback TCP, backend {args.backend}",
        f"sender and receiver in fresh processes; medians of {runs} each way, after a warm-up",
        f"{'':24} {METHODS[0]:>13} {METHODS[1]:>13}",
    ]
    for label, key, form in _ROWS:
        sides = [results[method] for method in METHODS]
        if key == "" and label.startswith(" "):
            cells = [_sides(r.sender_peak_memory_mb, r.receiver_peak_memory_mb, 0) for r in sides]
        elif key == "":
            cells = [_cell(r.sender_cpu_s + r.receiver_cpu_s, key, "{:.2f}") for r in sides]
        elif key == "-":
            cells = [_sides(r.sender_cpu_s, r.receiver_cpu_s, 2) for r in sides]
        else:
            cells = [_cell(getattr(results[method], key), key, form) for method in METHODS]
        lines.append(f"{label:24} {cells[0]:>13} {cells[1]:>13}")
    low, high = floor["floor_s_range"]
    lines.append(
        f"receiver's floor (pickle.loads of the same bytes, fresh process): "
        f"{floor['floor_s']:.3f} s ({low:.2f}-{high:.2f})"
    )
    lines.append("the object arrived intact both ways" if intact else "OBJECT CORRUPTED")
    lines.append(verdict)
    return "\n".join(lines)


def _cell(value: Any, key: str, form: str) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, list):
        return form.format(*value)
    return form.format(value / 1e6 if key == "bytes" else value)


def _sides(sender: float | None, receiver: float | None, digits: int) -> str:
    if sender is None or receiver is None:
        return "n/a"
    return f"{sender:.{digits}f} + {receiver:.{digits}f}"
