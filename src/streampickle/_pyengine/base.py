"""The python engine's pickler state (`SaverBase`): protocol, hooks, memo, framer, and the
atoms it writes inline. `streampickle._pyengine.saver` adds the save loop; the saves of
containers and reductions (`containers`, `reduce`, `batches`) take a `SaverBase`.
"""

from __future__ import annotations

import copyreg
import io
import pickle
from collections.abc import Callable, Generator
from struct import pack
from typing import Any

from .._sansio import BufferCallback
from .framer import FRAME_SIZE, Framer

__all__ = ["Hooks", "SaverBase", "Steps"]

#: What a save that is not done inline returns: a generator of the saves it still needs
#: (each a generator, run to its end before this one resumes), or None for a turn to hand out
#: a frame.
Steps = Generator["Steps | None", None, None]

_BYTE = [bytes((i,)) for i in range(256)]
_BINGET = [b"h" + byte for byte in _BYTE]


class Hooks:
    """What a ``pickle.Pickler`` (subclass) instance customizes: ``persistent_id``,
    ``reducer_override`` and ``dispatch_table``, as the C pickler looks them up."""

    __slots__ = ("dispatch_table", "persistent_id", "reducer_override")

    def __init__(
        self,
        persistent_id: Callable[[Any], Any] | None = None,
        reducer_override: Callable[[Any], Any] | None = None,
        dispatch_table: Any = None,
    ) -> None:
        self.persistent_id = persistent_id
        self.reducer_override = reducer_override
        self.dispatch_table = copyreg.dispatch_table if dispatch_table is None else dispatch_table

    @classmethod
    def of(cls, pickler: pickle.Pickler) -> Hooks:
        """The hooks of *pickler* (methods a subclass defines, or attributes set on it)."""
        return cls(
            _hook(pickler, "persistent_id"),
            _hook(pickler, "reducer_override"),
            getattr(pickler, "dispatch_table", None),
        )


_ABSENT: Any = object()


def _call_none(obj: Any) -> Any:
    hook: Any = None
    return hook(obj)  # the TypeError the C pickler raises for a hook set to None


def _hook(pickler: pickle.Pickler, name: str) -> Callable[[Any], Any] | None:
    """*pickler*'s *name* hook, or None where it is ``pickle.Pickler``'s own (3.13's C Pickler
    has a ``persistent_id`` that returns None: calling it for every object would only cost)."""
    found = getattr(pickler, name, _ABSENT)
    if found is _ABSENT:
        return None
    if found is None:  # set to None: the C pickler calls it all the same (a TypeError)
        return _call_none
    default = getattr(pickle.Pickler, name, None)
    inherited = default is not None and getattr(type(pickler), name, None) is default
    if inherited and name not in getattr(pickler, "__dict__", {}):
        return None
    return found  # type: ignore[no-any-return]


class SaverBase:
    """One pickler's state: protocol, hooks, memo (``id(obj) -> (index, obj)``, kept across
    dumps as ``pickle.Pickler`` keeps it) and framer."""

    def __init__(
        self,
        protocol: int | None = None,
        *,
        fix_imports: bool = True,
        buffer_callback: BufferCallback = None,
        hooks: Hooks | None = None,
        frame_size: int = FRAME_SIZE,
    ) -> None:
        if protocol is None:
            protocol = pickle.DEFAULT_PROTOCOL
        if protocol < 0:
            protocol = pickle.HIGHEST_PROTOCOL
        elif protocol > pickle.HIGHEST_PROTOCOL:
            raise ValueError(f"pickle protocol must be <= {pickle.HIGHEST_PROTOCOL}")
        if buffer_callback is not None and protocol < 5:
            raise ValueError("buffer_callback needs protocol >= 5")
        if type(frame_size) is not int or frame_size < 1:
            raise ValueError(f"frame_size must be a positive int, not {frame_size!r}")
        self.proto = protocol
        self.bin = protocol >= 1
        self.fix_imports = fix_imports and protocol < 3
        self.buffer_callback = buffer_callback
        self.hooks = hooks if hooks is not None else Hooks()
        self.frame_size = frame_size
        self.memo: dict[int, tuple[int, Any]] = {}
        self.framer = Framer(frame_size, framing=False)
        self.write = self.framer.frame.extend
        self._frame = self.framer.frame
        self._pid = self.hooks.persistent_id

    def clear_memo(self) -> None:
        self.memo.clear()

    def save(self, obj: Any, persistent: bool = True) -> Steps | None:
        """Save *obj*: write it now and return None, or return the steps it needs."""
        raise NotImplementedError

    # -- memo ---------------------------------------------------------------------------------

    def memoize(self, obj: Any) -> None:
        memo = self.memo
        idx = len(memo)
        if self.proto >= 4:
            self.write(b"\x94")
        elif self.bin:
            self.write(b"q" + pack("<B", idx) if idx < 256 else b"r" + pack("<I", idx))
        else:
            self.write(b"p" + repr(idx).encode("ascii") + b"\n")
        memo[id(obj)] = idx, obj

    def get(self, idx: int) -> bytes:
        if self.bin:
            return b"h" + pack("<B", idx) if idx < 256 else b"j" + pack("<I", idx)
        return b"g" + repr(idx).encode("ascii") + b"\n"

    # -- atoms ----------------------------------------------------------------------------------

    def _save_int(self, obj: int) -> None:
        write = self.write
        if self.bin:
            if obj >= 0:
                if obj <= 0xFF:
                    write(b"K" + pack("<B", obj))
                    return
                if obj <= 0xFFFF:
                    write(b"M" + pack("<H", obj))
                    return
            if -0x80000000 <= obj <= 0x7FFFFFFF:
                write(b"J" + pack("<i", obj))
                return
        if self.proto >= 2:
            encoded = pickle.encode_long(obj)
            n = len(encoded)
            write(
                b"\x8a" + pack("<B", n) + encoded if n < 256 else b"\x8b" + pack("<i", n) + encoded
            )
            return
        if -0x80000000 <= obj <= 0x7FFFFFFF:
            write(b"I" + repr(obj).encode("ascii") + b"\n")
        else:
            write(b"L" + repr(obj).encode("ascii") + b"L\n")

    def save_bytes_raw(self, obj: Any) -> None:
        n = len(obj)
        if n <= 0xFF:
            self.write(b"C" + pack("<B", n) + obj)
        elif n > 0xFFFFFFFF and self.proto >= 4:
            self.framer.write_large(b"\x8e" + pack("<Q", n), obj)
        elif n >= FRAME_SIZE:
            self.framer.write_large(b"B" + pack("<I", n), obj)
        else:
            self.write(b"B" + pack("<I", n) + obj)

    def save_bytearray_raw(self, obj: Any) -> None:
        n = len(obj)
        if n >= FRAME_SIZE:
            self.framer.write_large(b"\x96" + pack("<Q", n), obj)
        else:
            self.write(b"\x96" + pack("<Q", n) + obj)

    def save_str(self, obj: str) -> None:
        if self.bin:
            encoded = obj.encode("utf-8", "surrogatepass")
            n = len(encoded)
            if n <= 0xFF and self.proto >= 4:
                self.write(b"\x8c" + pack("<B", n) + encoded)
            elif n > 0xFFFFFFFF and self.proto >= 4:
                self.framer.write_large(b"\x8d" + pack("<Q", n), encoded)
            elif n >= FRAME_SIZE:
                self.framer.write_large(b"X" + pack("<I", n), encoded)
            else:
                self.write(b"X" + pack("<I", n) + encoded)
        else:
            tmp = obj.replace("\\", "\\u005c").replace("\0", "\\u0000").replace("\n", "\\u000a")
            tmp = tmp.replace("\r", "\\u000d").replace("\x1a", "\\u001a")
            self.write(b"V" + tmp.encode("raw-unicode-escape") + b"\n")
        self.memoize(obj)

    def c_error(self, obj: Any, fallback: Exception) -> Exception:
        """The C pickler's own error for *obj* (its type and message), pickled with the same
        protocol and hooks, or *fallback* if it has none: errors are those of ``pickle``."""
        hooks = self.hooks

        class Probe(pickle.Pickler):
            dispatch_table = hooks.dispatch_table

        # On the class: 3.13's C Pickler makes an instance's persistent_id read-only.
        for name in ("persistent_id", "reducer_override"):
            hook = getattr(hooks, name)
            if hook is not None:
                setattr(Probe, name, staticmethod(hook))
        probe = Probe(io.BytesIO(), self.proto, fix_imports=self.fix_imports)
        try:
            probe.dump(obj)
        except Exception as exc:
            return exc
        return fallback
