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
load. The state of a stream lives here, keyed by the stream's identity and dropped when the stream
is collected (a weak reference: nothing here keeps a stream alive). A stream that cannot be
weakly referenced is not tracked.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from anyio import BrokenResourceError, BusyResourceError, get_cancelled_exc_class

__all__ = ["Hold", "hold"]


class _State:
    __slots__ = ("broken", "busy", "leftover")

    def __init__(self) -> None:
        self.busy = False
        self.broken: str | None = None  #: why the stream is broken, once it is
        self.leftover = b""  #: bytes read past the last pickle, for the next one


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
    """What the holder of a stream reports: set `started` once a byte of the pickle has
    moved (then leaving with an exception breaks the stream); `moved` counts bytes, for the
    message. A reader's holder also keeps what it read past its pickle for the next holder
    (`keep_leftover`, `take_leftover`), where the stream is tracked (`can_keep`)."""

    __slots__ = ("_state", "moved", "started")

    def __init__(self, state: _State | None) -> None:
        self._state = state
        self.started = False
        self.moved = 0

    @property
    def can_keep(self) -> bool:
        return self._state is not None

    def take_leftover(self) -> bytes:
        if self._state is None:
            return b""
        data, self._state.leftover = self._state.leftover, b""
        return data

    def keep_leftover(self, data: bytes) -> None:
        if self._state is not None:
            self._state.leftover = data


@contextmanager
def hold(stream: object, role: str) -> Iterator[Hold]:
    """Hold *stream* for one pickle, as *role* (``"adump"``: writing one, ``"aload"``: reading
    one), a task at a time.

    Raises ``anyio.BusyResourceError`` if another task holds it for the same role, and
    ``anyio.BrokenResourceError`` if an earlier holder left it inside a pickle: an exception
    (cancellation included) that leaves the block after `Hold.started` was set breaks the
    stream for that role for good.
    """
    state = _state(stream, role)
    if state is not None:
        if state.broken is not None:
            raise BrokenResourceError(state.broken)
        if state.busy:
            action = "writing a pickle to" if role == "adump" else "reading a pickle from"
            raise BusyResourceError(f"{action} (in {role})")
        state.busy = True
    current = Hold(state)
    try:
        yield current
    except BaseException as exc:
        if state is not None and current.started:
            state.broken = _broken_message(stream, role, current.moved, exc)
        raise
    finally:
        if state is not None:
            state.busy = False


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
