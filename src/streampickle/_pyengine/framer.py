"""The python engine's framer: where its opcodes go, cut into chunks at opcode boundaries.

As CPython's ``pickle._Framer`` (``commit_frame`` at the top of every ``save``), the saver
checks the frame's size before each object, an opcode boundary, and calls `Framer.commit` if
it reached the target size. At protocols 4 and 5 a frame is committed as one chunk
``FRAME + length + opcodes``; at protocols 0-3, which have no frames, the opcodes written so
far become a chunk, so that those pickles stream too. Large payloads (bytes, str and buffers
of at least the target size, at protocols 4-5 always outside frames) become chunks of their
own, uncopied.
"""

from __future__ import annotations

from struct import pack

from .._sansio import Chunk

__all__ = ["FRAME_SIZE", "FRAME_SIZE_MIN", "Framer"]

#: CPython's frame target (``pickle._Framer._FRAME_SIZE_TARGET``), the default *frame_size*.
FRAME_SIZE = 64 * 1024
#: Frames shorter than this are written without a FRAME opcode (as CPython does).
FRAME_SIZE_MIN = 4
_FRAME = b"\x95"


class Framer:
    """Collects opcodes into the current frame (or chunk: write with ``frame.extend``) and
    hands out finished chunks.

    *ready* holds the chunks finished and not yet taken: the saver's loop yields them at its
    next step, so at most one frame (and the payload that ended it) is held at a time.
    """

    __slots__ = ("frame", "framing", "prefix", "ready", "size")

    def __init__(self, size: int, *, framing: bool, prefix: bytes = b"") -> None:
        self.size = size
        self.framing = framing  # protocols 4-5
        self.prefix = prefix  # the PROTO opcode, outside the frames: joins the first chunk
        self.frame = bytearray()
        self.ready: list[Chunk] = []

    def _emit(self, chunk: bytes) -> None:
        if self.prefix:
            chunk, self.prefix = self.prefix + chunk, b""
        self.ready.append(chunk)

    def commit(self) -> None:
        """Finish the current frame (or chunk), whatever its size. *frame* stays the same
        bytearray (emptied), so savers may hold its ``extend`` as their ``write``."""
        frame = self.frame
        if not frame:
            return
        if self.framing and len(frame) >= FRAME_SIZE_MIN:
            self._emit(_FRAME + pack("<Q", len(frame)) + frame)
        else:
            self._emit(bytes(frame))
        frame.clear()

    def write_large(self, header: bytes, payload: Chunk) -> None:
        """A large payload: the frame before it is committed, then *header* and *payload* go
        out as they are (*payload* uncopied, outside any frame)."""
        self.commit()
        self._emit(header)
        self.ready.append(payload)

    def take(self) -> list[Chunk]:
        """The chunks ready, handed out (*ready* is emptied in place: savers hold it)."""
        ready = self.ready[:]
        self.ready.clear()
        return ready
