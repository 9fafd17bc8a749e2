"""The python engine's save loop: CPython's pickler, without recursion.

Each ``save`` of a container returns a generator of the saves its contents need (sub-
generators), instead of calling ``save`` on them; `Saver.iter_dump` runs those generators on
an explicit stack (a list), so the depth of an object graph costs list entries, not C or
Python stack frames. Atoms (``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``, memo
references) are written inline. The opcodes, their order and the memo are those of CPython's
C pickler (``pickle.dumps``): the same type dispatch (``reducer_override`` and the dispatch
table are not consulted for the built-in types the C pickler saves itself), the same batching
of exact lists and dicts, the same framing (`streampickle._pyengine.framer`).
"""

from __future__ import annotations

import pickle
from collections.abc import Generator
from struct import pack
from types import FunctionType
from typing import Any

from .. import _collector
from .._sansio import Chunk
from .base import _ABSENT, _BINGET, _BYTE, SaverBase, Steps, _call_none
from .containers import DISPATCH
from .framer import Framer
from .reduce import check_reduce, save_global, save_pers, save_reduce, save_type

__all__ = ["Saver"]


class Saver(SaverBase):
    """The python engine's pickler: `iter_dump` yields an object's pickle as chunks."""

    # -- the loop ---------------------------------------------------------------------------

    def iter_dump(self, obj: Any) -> Generator[Chunk, None, None]:
        """*obj*'s pickle as chunks: frames at protocols 4-5 (about *frame_size* bytes each),
        chunks of about *frame_size* at protocols 0-3, large payloads on their own."""
        proto = b"\x80" + pack("<B", self.proto) if self.proto >= 2 else b""
        framer = self.framer = Framer(self.frame_size, framing=self.proto >= 4, prefix=proto)
        self.write, self._frame = framer.frame.extend, framer.frame
        self._pid = self.hooks.persistent_id
        try:
            yield from self._dump(obj)
        finally:
            self._pid = None  # no reference to the hooks' pickler once done (no cycle)

    def _dump(self, obj: Any) -> Generator[Chunk, None, None]:
        framer = self.framer
        stack: list[Steps] = []
        pending = self.save(obj)
        if pending is not None:
            stack.append(pending)
        out = 0  # bytes handed out, until the collector may pause (see _collector)
        pausing: bool | None = None
        while stack:
            if framer.ready:
                for chunk in framer.take():
                    if pausing is None and (out := out + len(chunk)) >= _collector.SMALL:
                        pausing = _collector.begin()
                    yield chunk
            paused = _collector.pause() if pausing else False
            try:
                self._run(stack)
            finally:
                _collector.resume(paused)
        self.write(b".")
        framer.commit()
        yield from framer.take()

    def _run(self, stack: list[Steps]) -> None:
        """Run the steps on *stack* until a chunk is ready or none are left (a segment)."""
        push, pop, ready = stack.append, stack.pop, self.framer.ready
        while stack and not ready:
            try:
                step = next(stack[-1])
            except StopIteration:
                pop()
                continue
            if step is not None:
                push(step)

    def save(self, obj: Any, persistent: bool = True) -> Steps | None:
        """Save *obj*: write it now and return None, or return the steps it needs."""
        if len(self._frame) >= self.frame_size:  # an opcode boundary (see framer)
            self.framer.commit()
        if self._pid is not None and persistent:
            pid = self._pid(obj)
            if pid is not None:
                return save_pers(self, pid)
        t = type(obj)
        if t is int:
            if self.bin and 0 <= obj <= 0xFF:
                self.write(b"K" + _BYTE[obj])
            else:
                self._save_int(obj)
            return None
        if obj is None:
            self.write(b"N")
            return None
        if t is bool:
            self.write(
                (b"\x88" if obj else b"\x89")
                if self.proto >= 2
                else (b"I01\n" if obj else b"I00\n")
            )
            return None
        if t is float:
            self.write(
                b"G" + pack(">d", obj) if self.bin else b"F" + repr(obj).encode("ascii") + b"\n"
            )
            return None
        found = self.memo.get(id(obj))
        if found is not None:
            idx = found[0]
            self.write(_BINGET[idx] if self.bin and idx < 256 else self.get(idx))
            return None
        if t is str:
            self.save_str(obj)
            return None
        save = DISPATCH.get(t)
        if save is not None:
            return save(self, obj)
        return self._save_other(obj, t)

    def _save_other(self, obj: Any, t: type) -> Steps | None:
        """Types the C pickler has no fast path for: reducer_override, then types and
        functions, then the dispatch table, then ``__reduce_ex__``/``__reduce__``."""
        rv: Any = NotImplemented
        hooks = self.hooks
        if hooks.reducer_override is not None:
            rv = hooks.reducer_override(obj)
        if rv is NotImplemented:
            if t is type:
                return save_type(self, obj)
            if t is FunctionType:
                return save_global(self, obj)
            reduce = _table_get(hooks.dispatch_table, t)
            if reduce is not None:
                rv = reduce(obj)
            elif issubclass(t, type):
                return save_global(self, obj)
            else:
                reduce_ex = getattr(obj, "__reduce_ex__", _ABSENT)
                if reduce_ex is not _ABSENT:  # called even if None, as the C pickler does
                    rv = reduce_ex(self.proto)
                else:
                    reduce = getattr(obj, "__reduce__", _ABSENT)
                    if reduce is _ABSENT:
                        raise self.c_error(obj, pickle.PicklingError(f"can't pickle {t!r}"))
                    rv = reduce()
        if isinstance(rv, str):
            return save_global(self, obj, rv)
        if not isinstance(rv, tuple) or not 2 <= len(rv) <= 6:
            raise self.c_error(obj, pickle.PicklingError("bad __reduce__ result"))
        check_reduce(self, obj, rv)
        return save_reduce(self, *rv, obj=obj)


def _table_get(table: Any, t: type) -> Any:
    """*table*[*t*] or None, as the C pickler reads a dispatch table (any mapping); an entry
    that is None is called all the same (the C pickler's TypeError)."""
    try:
        found = table[t]
    except KeyError:
        return None
    return _call_none if found is None else found
