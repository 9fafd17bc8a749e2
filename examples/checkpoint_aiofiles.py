"""Checkpoint a large state to disk without blocking the event loop, and load it back.

    python examples/checkpoint_aiofiles.py [--megabytes 64] [--records 100000] [--dir DIR]
                                           [--backend asyncio|trio]

``adump`` pickles the state straight into an async file, frame by frame, so the loop keeps
serving other tasks and memory holds one frame, never the whole pickle. Large buffers (here the
``array.array`` of weights, a ``bytearray``) are written from the object itself, as memoryview
slices, without a copy. ``aload`` reads it back as the unpickler asks for bytes.

Two variants, the same code apart from how the file is opened:

* ``aiofiles.open(path, "wb")`` (asyncio only: aiofiles runs file calls in asyncio's executor);
* ``anyio.open_file(path, "wb")`` (anyio's ``AsyncFile``: works on asyncio and on trio).

The checkpoint is written the crash-safe way: to a temporary file, flushed and fsynced, then
renamed over the previous checkpoint, so a reader sees the old state or the new one, never half.
The file holds exactly ``pickle.dumps(state, protocol=5)``: plain ``pickle.load`` reads it too.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import datetime
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

import streampickle

Saver = Callable[[Any, Path], Awaitable[int]]
Loader = Callable[[Path], Awaitable[Any]]


def make_state(megabytes: float, records: int) -> dict[str, Any]:
    """A training-like state: a big numeric buffer, a raw byte buffer and an object graph."""
    doubles = int(megabytes * (1 << 20) * 0.75) // 8  # three quarters of the size in floats
    return {
        "step": 12_345,
        "saved_at": datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.timezone.utc),
        "weights": array.array("d", (i * 0.001 for i in range(doubles))),
        "optimizer": bytearray(int(megabytes * (1 << 20) * 0.25)),
        "history": [{"step": i, "loss": 1 / (i + 1), "tags": ["train"]} for i in range(records)],
    }


async def fsync(fd: int) -> None:
    await anyio.to_thread.run_sync(os.fsync, fd)  # fsync blocks: keep it off the loop


# -- aiofiles (asyncio) ----------------------------------------------------------------------


async def save_aiofiles(state: Any, path: Path) -> int:
    """Write *state* to *path* atomically with aiofiles; return the pickle's size."""
    import aiofiles
    import aiofiles.os

    temporary = path.with_suffix(".tmp")
    async with aiofiles.open(temporary, "wb") as file:
        written = await streampickle.adump(state, file, protocol=5)
        await file.flush()
        await fsync(file.fileno())
    await aiofiles.os.replace(temporary, path)
    return written


async def load_aiofiles(path: Path) -> Any:
    import aiofiles

    async with aiofiles.open(path, "rb") as file:
        return await streampickle.aload(file)


# -- anyio AsyncFile (asyncio or trio) --------------------------------------------------------


async def save_anyio(state: Any, path: Path) -> int:
    """Write *state* to *path* atomically with anyio's ``open_file``; return the pickle's size."""
    temporary = anyio.Path(path.with_suffix(".tmp"))
    async with await anyio.open_file(temporary, "wb") as file:
        written = await streampickle.adump(state, file, protocol=5)
        await file.flush()
        await fsync(file.wrapped.fileno())
    await temporary.replace(path)
    return written


async def load_anyio(path: Path) -> Any:
    async with await anyio.open_file(path, "rb") as file:
        return await streampickle.aload(file)


VARIANTS: dict[str, tuple[Saver, Loader]] = {
    "aiofiles": (save_aiofiles, load_aiofiles),
    "anyio": (save_anyio, load_anyio),
}


@dataclass
class Checkpoint:
    variant: str
    path: Path
    size: int  # bytes written by adump
    save_s: float
    load_s: float


def running_on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # trio (or another loop) is running, not asyncio
        return False
    return True


async def checkpoint(variant: str, state: Any, directory: Path) -> Checkpoint:
    """Save *state* with *variant*, load it back and check it arrived intact."""
    save, load = VARIANTS[variant]
    path = directory / f"state-{variant}.pickle"
    start = time.perf_counter()
    size = await save(state, path)
    saved = time.perf_counter()
    loaded = await load(path)
    done = time.perf_counter()
    assert loaded == state, f"{variant}: the checkpoint loaded back different"
    return Checkpoint(variant, path, size, saved - start, done - saved)


async def main(directory: Path, megabytes: float = 64, records: int = 100_000) -> list[Checkpoint]:
    """Checkpoint a state of about *megabytes* plus *records* history entries into
    *directory* with every variant this event loop supports, and load each back."""
    state = make_state(megabytes, records)
    variants = ["aiofiles", "anyio"] if running_on_asyncio() else ["anyio"]
    if "aiofiles" not in variants:
        print("aiofiles runs on asyncio only: skipping that variant on this event loop")
    results = []
    for variant in variants:
        result = await checkpoint(variant, state, directory)
        results.append(result)
        print(
            f"{variant:9} {result.size / 1e6:7.1f} MB saved in {result.save_s:5.2f} s, "
            f"loaded back intact in {result.load_s:5.2f} s ({result.path.name})"
        )
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--megabytes", type=float, default=64, help="size of the buffers (default: %(default)s)"
    )
    parser.add_argument(
        "--records", type=int, default=100_000, help="history entries (default: %(default)s)"
    )
    parser.add_argument("--dir", type=Path, help="where to write (default: a temporary dir)")
    parser.add_argument(
        "--backend",
        choices=["asyncio", "trio"],
        default="asyncio",
        help="the event loop (default: %(default)s)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        target = args.dir or Path(scratch)
        anyio.run(main, target, args.megabytes, args.records, backend=args.backend)
