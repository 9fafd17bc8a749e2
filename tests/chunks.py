"""The chunk-boundary rule every pickling engine is held to.

An engine yields a pickle as chunks: one per protocol 4/5 frame, and each large payload (bytes,
str or a buffer of at least the frame target, which the pickler writes outside the frames) as a
chunk of its own, so that adapters write whole frames and can pass big buffers through without
copying. `assert_whole_chunks` checks a chunk sequence against that rule, with ``pickletools``
as the oracle for where the opcodes, frames and payloads are.
"""

from __future__ import annotations

import pickletools
from collections.abc import Sequence
from dataclasses import dataclass

import streampickle

#: The pickler's frame target: payloads at least this big are written outside the frames.
FRAME_TARGET = 64 * 1024
#: A frame is committed once it reaches the target, at an opcode boundary: it can grow to
#: about twice the target before that (plus an opcode's header).
MAX_FRAMED_CHUNK = 2 * FRAME_TARGET + 64

Span = tuple[int, int]


@dataclass(frozen=True)
class Layout:
    """Where things are in a pickle: positions where a chunk may start or end (opcode starts,
    payload starts, the end), frame spans (FRAME opcode included) and large-payload spans."""

    boundaries: frozenset[int]
    frames: list[Span]
    payloads: list[Span]


def layout(data: bytes) -> Layout:
    """The `Layout` of the pickle *data* (one pickle, as ``pickletools.genops`` reads it)."""
    ops = list(pickletools.genops(data))
    boundaries = {len(data)}
    frames, payloads = [], []
    for i, (op, arg, pos) in enumerate(ops):
        end = ops[i + 1][2] if i + 1 < len(ops) else len(data)
        assert pos is not None and end is not None
        boundaries.add(pos)
        if op.name == "FRAME":
            assert isinstance(arg, int)
            frames.append((pos, pos + 9 + arg))
        elif isinstance(arg, str | bytes | bytearray):
            size = len(arg.encode("utf-8", "surrogatepass")) if isinstance(arg, str) else len(arg)
            if size >= FRAME_TARGET:
                payloads.append((end - size, end))
                boundaries.add(end - size)
    return Layout(frozenset(boundaries), frames, payloads)


def chunk_spans(chunks: Sequence[streampickle.Chunk]) -> list[Span]:
    """The byte span each chunk covers in the joined pickle."""
    spans, pos = [], 0
    for chunk in chunks:
        size = memoryview(chunk).nbytes
        spans.append((pos, pos + size))
        pos += size
    return spans


def assert_whole_chunks(chunks: Sequence[streampickle.Chunk], data: bytes) -> Layout:
    """Check that *chunks* are the pickle *data* (the oracle's bytes, e.g. ``pickle.dumps``)
    cut only where the rule allows, and return *data*'s `Layout` for further checks.

    At protocols 4 and 5: every chunk starts and ends between opcodes or at a payload's edge;
    each frame lies inside one chunk, and no chunk holds two frames; each large payload is a
    chunk of its own; a chunk holding a frame is at most `MAX_FRAMED_CHUNK` bytes. Below
    protocol 4 (no frames, no out-of-frame payloads) only the first rule applies.
    """
    assert b"".join(chunks) == data
    found = layout(data)
    spans = chunk_spans(chunks)
    for start, end in spans:  # chunks start and end between opcodes or at payload edges
        assert start in found.boundaries and end in found.boundaries, (start, end)
    if not data.startswith((b"\x80\x04", b"\x80\x05")):
        return found
    for frame in found.frames:  # each frame lies inside one chunk, and a chunk holds one frame
        holders = [s for s in spans if s[0] <= frame[0] and frame[1] <= s[1]]
        assert len(holders) == 1, frame
        assert sum(1 for f in found.frames if holders[0][0] <= f[0] < holders[0][1]) == 1, frame
    for payload in found.payloads:  # large payloads are chunks of their own
        assert payload in spans, payload
    framed = [s for s in spans if any(s[0] <= f[0] < s[1] for f in found.frames)]
    assert all(end - start <= MAX_FRAMED_CHUNK for start, end in framed), framed
    return found
