"""The python engine: an iterative pickler in pure Python (no recursion, no greenlet).

`Saver.iter_dump` yields the same bytes as ``pickle.dumps`` (the C pickler), in chunks cut at
opcode boundaries (`framer`), at every protocol 0-5, for graphs of any depth: its stack is a
list of generators (`saver`, `containers`, `reduce`). It can be resumed from any thread.
"""

from __future__ import annotations

from .base import Hooks
from .framer import FRAME_SIZE
from .saver import Saver

__all__ = ["FRAME_SIZE", "Hooks", "Saver"]
