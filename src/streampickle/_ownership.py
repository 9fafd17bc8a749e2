"""Who is using a stream, and whether a pickle on it was left half-way.

`adump` and `aload` take any stream the user has, so two mistakes are easy: two tasks
pickling into one writer at once (their frames interleave: the peer gets neither object),
and reusing a writer or reader after an `adump`/`aload` that stopped part-way (an error or a
cancellation): the peer then reads a partial pickle followed by the next one, and a memo
reference of the second resolves into the first, so it can hand over a *wrong object* with no
error. `hold` makes both fail loudly: anyio's `BusyResourceError` for the first,
`BrokenResourceError` naming the cause for the second.

A reader's state also keeps the bytes a load read past its pickle (read-ahead on a stream
that cannot take bytes back, the rest of a chunk longer than the pickle) for the stream's next
load. A `PickleStream`'s loader parks its read-ahead buffer here instead (`Hold.park`: the
bytearray itself, uncopied), so that another `PickleStream` or an `aload` of the same stream
takes the bytes from it, even once that loader is gone.
The state of a stream lives here, keyed by the stream's identity and dropped when the stream is
collected (a weak reference: nothing here keeps a stream alive). A stream that cannot be
weakly referenced is not tracked.
"""

from __future__ import annotations

import weakref

from anyio import BrokenResourceError, BusyResourceError, get_cancelled_exc_class

__all__ = ["Hold", "hold"]


class _State:
    __slots__ = ("broken", "busy", "leftover", "parked", "parked_at")

    def __init__(self) -> None:
        self.busy = False
        self.broken: str | None = None  #: why the stream is broken, once it is
        self.leftover = b""  #: bytes read past the last pickle, for the next one
        #: or a reader's buffer that holds them from *parked_at* on (see `Hold.park`)
        self.parked: bytearray | None = None
        self.parked_at = 0


_STATES: dict[tuple[int, str], _State] = {}


def _state(stream: object, role: str) -> _State | None:
    key = (id(stream), role)
    state = _STATES.get(key)
    if state is None:
        try:
            weakref.finalize(stream, _STATES.pop, key, None)
        except TypeError:  # no weak references to it: untracked
            return None
        state = _STATES[key] = _State()
    return state


class Hold:
    """Holds *stream* for one pickle at a time, as *role* (``"adump"``: writing one,
    ``"aload"``: reading one): a context manager, which a `PickleStream` enters once per object.

    Entering raises ``anyio.BusyResourceError`` if another holder has the stream for the same
    role, and ``anyio.BrokenResourceError`` if an earlier holder left it inside a pickle: an
    exception (cancellation included) that leaves the block after `started` was set breaks
    the stream for that role for good. The holder sets `started` once a byte of the pickle
    has moved, and `moved` counts bytes, for the message. A reader's holder also keeps what it
    read past its pickle for the next holder (`keep_leftover`, `take_leftover`, `park`), where
    the stream is tracked (`can_keep`)."""

    __slots__ = ("_role", "_state", "_stream", "moved", "started")

    def __init__(self, stream: object, role: str) -> None:
        self._stream, self._role = stream, role
        self._state = _state(stream, role)
        self.started = False
        self.moved = 0

    def __enter__(self) -> Hold:
        state = self._state
        if state is not None:
            if state.broken is not None:
                raise BrokenResourceError(state.broken)
            if state.busy:
                role = self._role
                action = "writing a pickle to" if role == "adump" else "reading a pickle from"
                raise BusyResourceError(f"{action} (in {role})")
            state.busy = True
        self.started, self.moved = False, 0
        return self

    def __exit__(self, kind: object, exc: BaseException | None, traceback: object) -> None:
        state = self._state
        if state is not None:
            if exc is not None and self.started:
                state.broken = _broken_message(self._stream, self._role, self.moved, exc)
            state.busy = False

    @property
    def can_keep(self) -> bool:
        return self._state is not None

    def take_leftover(self) -> bytes:
        """The bytes the stream's last holder read past its pickle."""
        data = self.take_over(None)
        return b"" if data is None else data

    def take_over(self, mine: bytearray | None) -> bytes | None:
        """As `take_leftover`, but None if *mine* (the caller's own buffer, which its last
        load parked) still holds them, or the stream is not tracked."""
        state = self._state
        if state is None:
            return None
        parked, state.parked = state.parked, None
        if parked is not None and parked is mine:
            return None
        data, state.leftover = state.leftover, b""
        if parked is not None:  # another reader's buffer: its bytes are the stream's now
            data += parked[state.parked_at :]
            parked.clear()
        return data

    def keep_leftover(self, data: bytes) -> None:
        if self._state is not None:
            self._state.leftover, self._state.parked = data, None

    def park(self, buffer: bytearray, start: int) -> None:
        """The bytes past the last pickle are those of *buffer* from *start* on: whoever reads
        the stream next takes them (`take_leftover`); *buffer* holds no reference to the
        stream, so parking it keeps nothing alive."""
        if self._state is not None:
            self._state.leftover, self._state.parked, self._state.parked_at = b"", buffer, start


def hold(stream: object, role: str) -> Hold:
    """A `Hold` of *stream* as *role*, to enter for one pickle (``with hold(...) as held``)."""
    return Hold(stream, role)


def _broken_message(stream: object, role: str, moved: int, exc: BaseException) -> str:
    cause = (
        "it was cancelled"
        if isinstance(exc, get_cancelled_exc_class())
        else f"{type(exc).__name__}: {exc}"
    )
    kind = type(stream).__name__
    if role == "adump":
        return (
            f"an earlier adump into this {kind} stopped after writing {moved} bytes ({cause}): "
            "the peer holds a partial pickle, and a pickle written after it could load as a "
            "wrong object; close this stream (PickleStream marks itself broken the same way)"
        )
    return (
        f"an earlier aload from this {kind} stopped inside a pickle, after reading {moved} "
        f"bytes ({cause}): the rest of that pickle is still on the stream, so what follows "
        "is not the start of a pickle; close this stream"
    )
