"""Feed objects to a child Python process over its stdin and read its results from its stdout.

    python examples/subprocess_worker.py [--items 200] [--size 5000] [--backend asyncio|trio]

The parent starts this same script with ``--worker`` as a child process (``anyio.open_process``)
and talks to it through its pipes: anyio gives the child's stdin as a send stream and its
stdout as a receive stream, which ``StapledByteStream`` joins into one byte stream for a
`PickleStream`. The parent sends work items and receives results *concurrently* (two tasks):
if it sent everything first, the child would block writing results into a full stdout pipe
while the parent blocked writing into a full stdin pipe, and both would wait forever.

The child needs nothing async: ``streampickle.load``/``dump`` on ``sys.stdin.buffer`` and
``sys.stdout.buffer`` are drop-ins for ``pickle.load``/``dump``, and the ``EOFError`` of
``load`` at the end of stdin is its signal to exit. Its stderr is left to the parent's stderr
for diagnostics: stdout carries pickles only.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import anyio
from anyio.streams.stapled import StapledByteStream

import streampickle
from streampickle import PickleStream


def work(item: dict[str, Any]) -> dict[str, Any]:
    """The child's job for one item (the parent uses it too, as the oracle)."""
    numbers: list[int] = item["numbers"]
    return {
        "id": item["id"],
        "sorted": sorted(numbers),
        "sum_of_squares": sum(n * n for n in numbers),
    }


def worker() -> None:
    """The child: answer each pickled item on stdin with a pickled result on stdout."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            item = streampickle.load(stdin)
        except EOFError:  # the parent closed our stdin between items: we are done
            return
        streampickle.dump(work(item), stdout, protocol=5)
        stdout.flush()  # the parent is waiting for this result; don't let it sit in a buffer


def make_items(items: int, size: int) -> list[dict[str, Any]]:
    return [
        {"id": i, "numbers": [(i * 7919 + j * 104729) % 10_007 for j in range(size)]}
        for i in range(items)
    ]


async def main(items: int = 200, size: int = 5_000) -> list[dict[str, Any]]:
    """Run the child, stream *items* work items of *size* numbers through it, check and
    return the results.

    A child that dies early shows its traceback on stderr; here its stdout ends, so
    ``receive`` raises ``anyio.EndOfStream`` (or ``BrokenResourceError`` inside a result) and
    ``feed`` may get ``BrokenResourceError`` from the closed stdin pipe. A child that answered
    everything but then exits non-zero raises ``RuntimeError``.
    """
    todo = make_items(items, size)
    results: list[dict[str, Any]] = []
    command = [sys.executable, __file__, "--worker"]
    async with await anyio.open_process(command, stderr=None) as process:
        assert process.stdin is not None and process.stdout is not None  # we asked for pipes
        stream = PickleStream(StapledByteStream(process.stdin, process.stdout), protocol=5)

        async def feed() -> None:
            for item in todo:
                await stream.send(item)
            await stream.send_eof()  # closes the child's stdin: its load() raises EOFError

        async with anyio.create_task_group() as tg:
            tg.start_soon(feed)
            for _ in todo:
                results.append(await stream.receive())
        await stream.aclose()
        code = await process.wait()
    if code != 0:
        raise RuntimeError(f"the worker exited with status {code}")
    assert results == [work(item) for item in todo], "the worker's results are wrong"
    print(f"{len(results)} items of {size:,} numbers through one worker process, all correct")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--items", type=int, default=200, help="work items to send (default: %(default)s)"
    )
    parser.add_argument(
        "--size", type=int, default=5_000, help="numbers per work item (default: %(default)s)"
    )
    parser.add_argument(
        "--backend",
        choices=["asyncio", "trio"],
        default="asyncio",
        help="the event loop (default: %(default)s)",
    )
    parser.add_argument("--worker", action="store_true", help="run as the child (internal)")
    args = parser.parse_args()
    if args.worker:
        worker()
    else:
        anyio.run(main, args.items, args.size, backend=args.backend)
