"""The one greenlet-leak check of the test suite.

The engine runs the C pickler and unpickler on greenlets; a greenlet that is never finished or
unwound keeps its frames (and the objects they reference) alive. `live_greenlets` counts them;
the ``no_leaked_greenlets`` fixture (conftest.py) wraps a test in a `GreenletLedger`.
"""

from __future__ import annotations

import gc
from types import CodeType, FrameType

import greenlet


def live_greenlets(inside: CodeType | None = None) -> int:
    """Greenlets started and not finished, each thread's main greenlet (``parent is None``)
    excluded. Collects garbage first, so only greenlets something still references count.
    *inside*: only those suspended with a frame of that code on their stack."""
    gc.collect()
    return sum(
        1
        for o in gc.get_objects()
        # bool(g): started and not dead (an unstarted greenlet holds no frame); an idle
        # worker of the engine's pool holds no job's frame either
        if isinstance(o, greenlet.greenlet)
        and o.parent is not None
        and bool(o)
        and not getattr(o, "idle", False)
        and (inside is None or _runs(o, inside))
    )


def _runs(worker: greenlet.greenlet, code: CodeType) -> bool:
    """True if *worker*'s stack holds a frame of *code*."""
    frame: FrameType | None = worker.gr_frame
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False


def _dumping_code() -> CodeType:
    """The code a pickler's greenlet suspends in, at each write (`_cengine._yield_write`)."""
    from streampickle import _cengine

    return _cengine._yield_write.__code__


def freeze_the_collected() -> None:
    """Move every object alive now to the collector's permanent generation (``gc.freeze``).

    Called once collection is over (conftest.py; ``gc.unfreeze`` at the end of the session):
    what the test modules built at import (the corpus, the payloads: some 120,000 objects) is
    then left out of every later ``gc.collect`` and of `live_greenlets`' scan, which visit only
    what the tests make. That takes a leak check from about 120 ms to under 1 ms. No greenlet
    is running then, so none is hidden; ``gc.get_referrers`` no longer sees frozen referrers
    (only hypothesis's ``register_random`` relies on it, at import, before the freeze).
    """
    from streampickle import _cengine

    _cengine._pool.idle.clear()  # idle workers made at import would be frozen: invisible
    gc.collect()
    assert live_greenlets() == 0
    gc.freeze()


class GreenletLedger:
    """The live greenlets when a test began (`baseline`), to compare with `live` mid-test;
    the fixture checks at teardown that the count is not above the baseline."""

    def __init__(self) -> None:
        self.baseline = live_greenlets()

    def live(self) -> int:
        return live_greenlets()

    def dumping(self) -> int:
        """The live greenlets suspended inside a pickler's write: a sender's, never a
        receiver's (whose count depends on how far its bytes have arrived)."""
        return live_greenlets(_dumping_code())

    def leaked(self) -> int:
        """How many more greenlets are live now than at the start (negative: fewer)."""
        return self.live() - self.baseline

    def check(self) -> None:
        assert self.leaked() <= 0, f"{self.leaked()} greenlet(s) left running by the test"
