"""The async dump driver: `write_chunks` moves an engine's chunks into a stream.

The engine yields chunks synchronously; this driver writes each through the stream's `Writer`
adapter. Backpressure comes from awaiting the stream, fairness from a checkpoint after a write
when one is due (`streampickle._turns`), and bounded memory from never holding more than one
chunk (large chunks are cut into memoryview slices of at most `PIECE_SIZE` bytes, never copied
whole).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator

from ._adapters import writer_for
from ._ownership import hold
from ._sansio import PIECE_SIZE, Chunk, Progress
from ._turns import Turns

__all__ = ["slices", "write_chunks"]


def slices(chunk: Chunk) -> Iterator[Chunk]:
    """*chunk* itself, or memoryview slices of it of at most `PIECE_SIZE` bytes (no copy)."""
    if len(chunk) <= PIECE_SIZE:
        yield chunk
        return
    view = memoryview(chunk)
    for start in range(0, len(view), PIECE_SIZE):
        yield view[start : start + PIECE_SIZE]


async def write_chunks(
    chunks: Generator[Chunk, None, None],
    stream: object,
    progress: Progress | None = None,
    *,
    owner: object = None,
) -> int:
    """Write the engine's *chunks* to *stream*; return the number of bytes written.

    The stream is checked (``TypeError``, see `streampickle._adapters.writer_for`) before
    the first chunk is pickled, and held for the whole pickle (`streampickle._ownership.hold`;
    *owner*, if given, is held instead: the user's stream that *stream* wraps):
    ``anyio.BusyResourceError`` while another task writes a pickle to it,
    ``anyio.BrokenResourceError`` once a write of a pickle to it stopped part-way. *chunks*
    is always closed on exit, so an error or a cancellation unwinds the pickler.
    """
    try:
        writer = writer_for(stream)
        turns = Turns()
        with hold(stream if owner is None else owner, "adump") as held:
            for chunk in chunks:  # pickling runs here, synchronously: about one frame
                for piece in slices(chunk):
                    held.started = True  # a write interrupted half-way breaks the stream
                    await writer.write(piece)
                    held.moved += len(piece)
                    if progress is not None:
                        progress(held.moved)
                    # drain() returns without yielding while the transport is not paused, and
                    # some streams never yield: a checkpoint lets other tasks run between
                    # writes, when one is due (see streampickle._turns).
                    await turns.take()
            return held.moved
    finally:
        chunks.close()
