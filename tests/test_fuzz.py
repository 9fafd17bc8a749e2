"""Property tests: random and mutated pickles through the restricted loader and aload.

Whatever the bytes, a restricted load returns an object or raises ``UnpicklingError`` (or a
subclass) or ``EOFError``, within the limits: no other exception, no hang, and memory
proportional to the input. The coverage-guided counterpart is ``fuzz/fuzz_load.py``.
"""

from __future__ import annotations

import contextlib
import pickle
import tracemalloc
from typing import Any

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hostile
import streampickle
from netutil import HANG_GUARD, while_sending
from streampickle import ALLOW_BUILTINS, ALLOW_COLLECTIONS, Allowlist
from test_limits import call, long, range_of, stack_global
from test_policy import BUILTIN_DATA

POLICY = ALLOW_BUILTINS | ALLOW_COLLECTIONS | Allowlist([("collections", "Counter")])
#: Small limits: what bounds each example's time and memory.
LIMITS: dict[str, Any] = {
    "max_frame_size": 1 << 16,
    "max_object_size": 1 << 18,
    "max_line_length": 1 << 12,
    "max_payload_size": 1 << 15,
    "max_memo_size": 1 << 10,
    "max_opcodes": 5_000,
    "max_stack_depth": 500,
    "max_expansion": 1 << 12,
}
DOCUMENTED = (pickle.UnpicklingError, EOFError)
#: Within LIMITS the unpickler holds at most ~5,000 objects of a few hundred bytes, the input
#: and its vetted copy: far below this.
MEMORY_BOUND = 8 << 20


def mutate(draw: st.DrawFn, pickled: bytes) -> bytes:
    """*pickled* with a few bytes flipped, inserted, deleted, or repeated, or cut short."""
    data = bytearray(pickled)
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "insert", "delete", "repeat", "cut"]))
        if kind == "flip" and position < len(data):
            data[position] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=9))
        elif kind == "delete":
            del data[position : position + draw(st.integers(1, 4))]
        elif kind == "repeat":
            data[position:position] = data[position : position + 8] * draw(st.integers(2, 50))
        else:
            del data[position:]
    return bytes(data)


@st.composite
def mutated_pickles(draw: st.DrawFn) -> bytes:
    """A pickle of builtin data at any protocol, mutated (`mutate`)."""
    return mutate(draw, pickle.dumps(draw(BUILTIN_DATA), draw(st.integers(0, 5))))


@st.composite
def hostile_pickles(draw: st.DrawFn) -> bytes:
    """One of the attacks of tests/hostile.py, at a random size, mutated half the time: deep
    chains of every kind, exponential and rehashed keys, colliding keys, shadowed methods,
    unknown encodings."""
    kind = draw(st.sampled_from(["deep", "exponential", "rehash", "collide", "shadow", "codec"]))
    if kind == "deep":
        data = hostile.DEEP[draw(st.sampled_from(sorted(hostile.DEEP)))](draw(st.integers(1, 700)))
    elif kind == "exponential":
        data = hostile.exponential_key(draw(st.integers(1, 64)))
    elif kind == "rehash":
        data = hostile.rehashed_int(draw(st.integers(9, 4000)), draw(st.integers(1, 3000)))
    elif kind == "collide":
        collide = hostile.COLLIDING[draw(st.sampled_from(sorted(hostile.COLLIDING)))]
        data = collide(draw(st.integers(1, 1500)))
    elif kind == "shadow":
        method = draw(st.sampled_from(["append", "extend", "add", "__setstate__"]))
        data = hostile.shadowed(method, draw(st.integers(0, 1 << 26)))
    else:
        data = hostile.unknown_encoding(draw(st.integers(0, 999)), draw(st.integers(0, 2000)))
    return mutate(draw, data) if draw(st.booleans()) else data


#: The attacks' policy: the presets, the class the instance chains use, tuple() for its chains.
HOSTILE_POLICY = POLICY | Allowlist([(hostile.ME, "Node"), ("builtins", "tuple")])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=hostile_pickles())
def test_attacks_of_any_size_raise_only_documented_errors(data: bytes) -> None:
    """The invariants under the default limits, whatever the attack's size: only documented
    errors, memory proportional to the input (and the process alive: crashes end the run)."""
    tracemalloc.start()
    try:
        with contextlib.suppress(*DOCUMENTED):
            streampickle.loads(data, allow=HOSTILE_POLICY)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_BOUND + 50 * len(data)


#: What the generated calls call: every callable of POLICY that takes a size or an iterable.
CALLABLES = [("builtins", name) for name in ("bytes", "bytearray", "set", "frozenset", "range")]
CALLABLES += [("collections", name) for name in ("deque", "OrderedDict", "Counter")]


@st.composite
def call_pickles(draw: st.DrawFn) -> bytes:
    """A list of calls of allowed callables, each given an int, a range, a payload or what
    an earlier call built (through the memo), of any size up to 2**40."""
    body = bytearray(b"\x80\x04(")
    for made in range(draw(st.integers(1, 8))):
        size = draw(st.integers(0, 300) | st.integers(0, 1 << 40))
        kind = draw(st.sampled_from(["int", "range", "payload", "earlier"]))
        if kind == "earlier" and made:
            argument = b"h" + bytes([draw(st.integers(0, made - 1))])  # BINGET
        elif kind == "range":
            argument = range_of(size)
        elif kind == "payload":
            argument = b"B" + (size % 5000).to_bytes(4, "little") + b"x" * (size % 5000)
        else:
            argument = long(size)
        body += call(stack_global(*draw(st.sampled_from(CALLABLES))), argument) + b"\x94"
    return bytes(body + b"l.")


PICKLES = (
    mutated_pickles()
    | st.binary(max_size=300).map(lambda raw: b"\x80\x04" + raw)
    | call_pickles()
    | hostile_pickles()
)


def restricted_load(data: bytes) -> None:
    with contextlib.suppress(*DOCUMENTED):
        streampickle.loads(data, allow=POLICY, **LIMITS)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=PICKLES)
def test_restricted_loads_raises_only_documented_errors(data: bytes) -> None:
    tracemalloc.start()
    try:
        restricted_load(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_BOUND + 50 * len(data)


@settings(max_examples=150, deadline=None)
@given(obj=BUILTIN_DATA, protocol=st.integers(0, 5))
def test_valid_pickles_load_within_the_default_limits(obj: Any, protocol: int) -> None:
    """The stack model and the limits never refuse what pickle itself writes."""
    data = pickle.dumps(obj, protocol)
    assert streampickle.loads(data, allow=ALLOW_BUILTINS) == pickle.loads(data)


#: anyio_backend is function-scoped but constant across a test's examples.
ASYNC_CHECKS = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]


async def aload_buffered(data: bytes) -> Any:
    """aload over an anyio stream delivering *data* in small pieces (read ahead, unread)."""
    send, receive = anyio.create_memory_object_stream[bytes](len(data) // 7 + 2)
    for start in range(0, len(data), 7):
        send.send_nowait(data[start : start + 7])
    send.close()
    with receive:
        return await streampickle.aload(BufferedByteReceiveStream(receive), allow=POLICY, **LIMITS)


@pytest.mark.anyio
@settings(max_examples=150, deadline=None, suppress_health_check=ASYNC_CHECKS)
@given(data=PICKLES)
async def test_aload_raises_only_documented_errors(data: bytes, anyio_backend: Any) -> None:
    with anyio.fail_after(HANG_GUARD):
        try:
            loaded = await aload_buffered(data)
        except DOCUMENTED:
            return
    assert loaded == streampickle.loads(data, allow=POLICY, **LIMITS)


@pytest.mark.anyio
@settings(max_examples=25, deadline=None, suppress_health_check=ASYNC_CHECKS)
@given(data=mutated_pickles())
async def test_aload_over_a_socket_raises_only_documented_errors(
    data: bytes, anyio_backend: Any
) -> None:
    async def load(stream: Any) -> Any:
        return await streampickle.aload(stream, allow=POLICY, **LIMITS)

    with contextlib.suppress(*DOCUMENTED):
        await while_sending(data, load)
