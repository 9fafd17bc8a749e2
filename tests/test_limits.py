"""Resource limits for untrusted input: each limit, sync and async, and memory under a cap.

Every hostile pickle here is a few bytes to a few megabytes that would make the C unpickler
allocate far more (a memo table up to a 4-billion index, a buffer for a 1 TiB claim) or build
far more than the bytes it received. The restricted loader must refuse each with
`LimitExceeded` naming the limit, before the unpickler acts on it.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import pickletools
import re
import struct
import subprocess
import sys
import textwrap
import tracemalloc
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import pytest
from anyio.abc import SocketStream

import hostile
import streampickle
from netutil import HANG_GUARD, tcp_pair, while_sending
from streampickle import (
    ALLOW_BUILTINS,
    ALLOW_COLLECTIONS,
    ALLOW_DECIMAL,
    LimitExceeded,
    Limits,
    PolicyViolation,
)


def framed(body: bytes) -> bytes:
    """PROTO 4, then *body* in one frame."""
    return b"\x80\x04\x95" + struct.pack("<Q", len(body)) + body


def unframed(body: bytes) -> bytes:
    return b"\x80\x04" + body


def stack_global(module: str, qualname: str) -> bytes:
    """STACK_GLOBAL of two SHORT_BINUNICODE pushes."""
    return b"".join(b"\x8c" + bytes([len(part)]) + part.encode() for part in (module, qualname)) + (
        b"\x93"
    )


def long(n: int) -> bytes:
    """LONG1 n: any int in a few bytes."""
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def call(func: bytes, *args: bytes) -> bytes:
    """``func(*args)``: MARK args TUPLE REDUCE."""
    return func + b"(" + b"".join(args) + b"tR"


def range_of(n: int) -> bytes:
    return call(stack_global("builtins", "range"), long(n))


#: What the amplifiers may use, and the lists these tests load hostile pickles under.
POLICY = (
    ALLOW_BUILTINS
    | ALLOW_COLLECTIONS
    | ALLOW_DECIMAL
    | [("builtins", qualname) for qualname in ("list", "tuple", "dict", "dict.fromkeys")]
    | [("collections", "Counter"), ("copyreg", "_reconstructor")]
)


TIB = 1 << 40
MIB100 = 100 << 20  # over max_payload_size, under max_object_size
#: name -> (pickle, the limit it must hit under the default limits)
HOSTILE: dict[str, tuple[bytes, str]] = {
    "memo-index": (unframed(b"Nr" + struct.pack("<I", 0xFFFFFFFF) + b"."), "max_memo_size"),
    "memo-index-framed": (framed(b"Nr" + struct.pack("<I", 0xFFFFFFFF) + b"."), "max_memo_size"),
    "memo-index-text": (b"Np99999999999\n.", "max_memo_size"),
    "bytes-claim": (unframed(b"\x8e" + struct.pack("<Q", TIB) + b"x."), "max_object_size"),
    "str-claim": (unframed(b"\x8d" + struct.pack("<Q", MIB100) + b"x."), "max_payload_size"),
    "bytearray-claim": (unframed(b"\x96" + struct.pack("<Q", MIB100) + b"x."), "max_payload_size"),
    "long-claim": (b"\x80\x02\x8b" + struct.pack("<i", MIB100) + b"x.", "max_payload_size"),
    "frame-claim": (unframed(b"\x95" + struct.pack("<Q", TIB) + b"N."), "max_frame_size"),
    "nested-lists": (unframed(b"](" * 120_000), "max_stack_depth"),
    "nested-lists-framed": (framed(b"](" * 120_000 + b"."), "max_stack_depth"),
    "marks": (b"(" * 120_000, "max_stack_depth"),
    "tuple-items": (b"(" + b"N" * 120_000, "max_stack_depth"),
    # [x] * N through memo GETs, in batches as a pickler writes them: the stack stays small,
    # the opcode count does not.
    "memo-reuse": (unframed(b"N\x94]" + (b"(" + b"h\x00" * 1000 + b"e") * 1100), "max_opcodes"),
    "memo-reuse-framed": (framed(b"N\x94]" + (b"(" + b"h\x00" * 1000 + b"e") * 1100),
                          "max_opcodes"),
    "long-line": (b"S'" + b"a" * (2 << 20), "max_line_length"),
    # Allowed callables asked to build terabytes, in a few bytes.
    "bytes-of-size": (unframed(call(stack_global("builtins", "bytes"), long(TIB)) + b"."),
                      "max_expansion"),
    "set-of-range": (framed(call(stack_global("builtins", "set"), range_of(TIB)) + b"."),
                     "max_expansion"),
}  # fmt: skip
#: What aload is fed over sockets: a plain socket is read exactly (it cannot take bytes
#: back), one receive per field outside frames, so the big unframed ones only cost time there.
ASYNC_HOSTILE = [
    name for name, (data, _) in HOSTILE.items() if b"\x95" in data[:3] or len(data) < 99
]


@pytest.mark.parametrize(
    "name",
    # memo-reuse vets a million opcodes one by one (5 s); the address-space test runs it too.
    [pytest.param(name, marks=[pytest.mark.slow] * (name == "memo-reuse")) for name in HOSTILE],
)
def test_hostile_pickles_hit_their_limit(name: str) -> None:
    data, limit = HOSTILE[name]
    with pytest.raises(LimitExceeded) as refused:
        streampickle.loads(data, allow=POLICY)
    assert refused.value.limit == limit
    assert limit in str(refused.value)
    assert refused.value.size > refused.value.maximum


def test_limits_refuse_before_the_unpickler_acts() -> None:
    """A frame is vetted whole first: the memo index is refused before the unpickler runs the
    opcodes before it, which would call an allowed global."""
    calls: list[str] = []

    class Spy(streampickle.Unpickler):
        def find_class(self, module_name: str, global_name: str, /) -> Any:
            calls.append(global_name)
            return super().find_class(module_name, global_name)

    body = b"\x8c\x08builtins\x8c\x03set\x93)R" + b"r" + struct.pack("<I", 0xFFFFFFFF) + b"."
    unpickler = Spy(None, allow=streampickle.ALLOW_BUILTINS)
    with pytest.raises(LimitExceeded, match="max_memo_size"):
        streampickle.drive_load(unpickler.iter_load(), __import__("io").BytesIO(framed(body)))
    assert calls == []


# --------------------------------------------------------------------------------------------
# Each limit at its boundary, on real pickles


def usage(data: bytes) -> dict[str, int]:
    """The oracle: what *data* needs of each limit, from pickletools."""
    ops: list[tuple[Any, Any, Any]] = list(pickletools.genops(data))
    payloads = [
        len(arg.encode() if isinstance(arg, str) else arg)
        for op, arg, _ in ops
        if op.name in ("BINBYTES", "SHORT_BINBYTES", "BINUNICODE", "SHORT_BINUNICODE")
    ]
    frames = [arg for op, arg, _ in ops if op.name == "FRAME"]
    return {
        "max_opcodes": len(ops),
        "max_payload_size": max(payloads),
        "max_frame_size": max(frames),
        "max_object_size": len(data),
        "max_memo_size": sum(op.name == "MEMOIZE" for op, _, _ in ops),
    }  # fmt: skip


SAMPLE = {"rows": [{"id": i, "name": f"row {i}" * (i % 7)} for i in range(3000)], "b": b"x" * 999}


@pytest.mark.parametrize(
    "limit",
    ["max_opcodes", "max_payload_size", "max_frame_size", "max_object_size", "max_memo_size"],
)
def test_each_limit_holds_at_its_boundary(limit: str) -> None:
    data = pickle.dumps(SAMPLE, 5)
    needed = usage(data)[limit]
    options: Any = {limit: needed}
    assert streampickle.loads(data, allow=[], **options) == SAMPLE
    options[limit] = needed - 1
    with pytest.raises(LimitExceeded) as refused:
        streampickle.loads(data, allow=[], **options)
    assert refused.value.limit == limit
    assert refused.value.maximum == needed - 1


def test_stack_depth_counts_items_and_marks() -> None:
    nested: Any = []
    for _ in range(30):
        nested = [nested, 1]
    data = pickle.dumps((tuple(range(50)), nested), 4)
    # The 50-tuple needs a mark and its 50 items (51). Then, on top of the finished tuple (1),
    # each level of the nested lists keeps its list and a mark (60), and the innermost level
    # pushes its empty list and the 1 that follows it (2): 63.
    assert streampickle.loads(data, allow=[], max_stack_depth=63) == pickle.loads(data)
    with pytest.raises(LimitExceeded, match="max_stack_depth") as refused:
        streampickle.loads(data, allow=[], max_stack_depth=62)
    assert refused.value.size == 63


def test_limits_disabled_with_none() -> None:
    data, _ = HOSTILE["marks"]
    with pytest.raises(pickle.UnpicklingError) as failed:  # the C unpickler's own error
        streampickle.loads(data + b".", allow=[], max_stack_depth=None)
    assert not isinstance(failed.value, LimitExceeded)


def test_restricted_limits_need_allow() -> None:
    with pytest.raises(TypeError, match="max_opcodes applies only to restricted loads"):
        streampickle.loads(pickle.dumps(1), max_opcodes=10)
    with pytest.raises(TypeError, match="allow="):
        streampickle.Unpickler(None, max_frame_size=10, max_memo_size=10)
    with pytest.raises(TypeError, match="allow="):
        streampickle.iter_loads(max_stack_depth=10)
    assert Limits().max_opcodes == streampickle._limits.DEFAULT_MAX_OPCODES


def test_a_stream_is_refused_for_good_after_a_limit() -> None:
    good = pickle.dumps([1, 2], 5)
    data, _ = HOSTILE["memo-index"]
    unpickler = streampickle.Unpickler(__import__("io").BytesIO(data + good), allow=[])
    for _ in range(2):
        with pytest.raises(LimitExceeded):
            unpickler.load()


# --------------------------------------------------------------------------------------------
# Allowed callables build no more than the pickle sent (twice over), plus max_expansion


def get(index: int) -> bytes:
    return b"h" + bytes([index])  # BINGET


def copies(make: bytes, copy: bytes, size: int, total: int) -> bytes:
    """*make* (an object of *size* items or bytes, memo 0) copied by *copy* (memo 1) through
    the memo until *total* was copied: a list of the copies."""
    return make + b"\x94" + copy + b"\x94(" + call(get(1), get(0)) * (total // size) + b"l"


def big_bytes(size: int) -> bytes:
    return b"\x8e" + struct.pack("<Q", size) + b"x" * size  # BINBYTES8


def big_text(size: int) -> bytes:
    return b"\x8d" + struct.pack("<Q", size) + b"7" * size  # BINUNICODE8


def builtin(qualname: str) -> bytes:
    return stack_global("builtins", qualname)


#: name -> the body of a pickle whose calls build about n items or bytes.
AMPLIFIERS: dict[str, Callable[[int], bytes]] = {
    "bytes(n)": lambda n: call(builtin("bytes"), long(n)),
    "bytearray(n)": lambda n: call(builtin("bytearray"), long(n)),
    "set(range(n))": lambda n: call(builtin("set"), range_of(n)),
    "frozenset(range(n))": lambda n: call(builtin("frozenset"), range_of(n)),
    "list(range(n))": lambda n: call(builtin("list"), range_of(n)),
    "tuple(range(n))": lambda n: call(builtin("tuple"), range_of(n)),
    "dict.fromkeys(range(n))": lambda n: call(builtin("dict.fromkeys"), range_of(n)),
    "bytes(range(n))": lambda n: call(builtin("bytes"), range_of(n)),  # allocates, then fails
    "deque(range(n))": lambda n: call(stack_global("collections", "deque"), range_of(n)),
    "Counter(range(n))": lambda n: call(stack_global("collections", "Counter"), range_of(n)),
    "OrderedDict(dict.fromkeys(range(n)))": lambda n: call(
        stack_global("collections", "OrderedDict"), call(builtin("dict.fromkeys"), range_of(n))
    ),
    "_reconstructor(set, set, range(n))": lambda n: call(
        stack_global("copyreg", "_reconstructor"), builtin("set"), builtin("set"), range_of(n)
    ),
    "NEWOBJ frozenset(range(n))": lambda n: builtin("frozenset") + range_of(n) + b"\x85\x81",
    "INST bytes(n)": lambda n: b"(" + b"I%d\n" % n + b"ibuiltins\nbytes\n",
    "OBJ bytearray(n)": lambda n: b"(cbuiltins\nbytearray\n" + long(n) + b"o",
    "bytearray copies of one payload": lambda n: copies(big_bytes(4096), builtin("bytearray"),
                                                        4096, n),
    "Decimal copies of one string": lambda n: copies(big_text(4096),
                                                     stack_global("decimal", "Decimal"), 4096, n),
    "frozenset copies of a set": lambda n: copies(call(builtin("set"), range_of(1000)),
                                                  builtin("frozenset"), 1000, n),
    "_codecs.encode copies": lambda n: copies(
        call(stack_global("_codecs", "encode"), big_text(100), b"\x8c\x05utf-8"),
        builtin("bytearray"), 100, n),
}  # fmt: skip


def peak_memory(load: Callable[[], Any]) -> int:
    """tracemalloc's peak while *load* runs (what it raises is ignored)."""
    tracemalloc.start()
    try:
        with contextlib.suppress(Exception):
            load()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("name", AMPLIFIERS)
def test_allowed_calls_are_bounded_by_what_was_received(name: str) -> None:
    """Each amplifier makes plain pickle allocate what it claims (n = 200,000), and is
    refused at n = 10**8 before anything is built: tracemalloc's peak stays at a few MB."""
    control = unframed(AMPLIFIERS[name](200_000) + b".")
    assert peak_memory(lambda: pickle.loads(control)) > max(50_000, 20 * len(control))
    data = unframed(AMPLIFIERS[name](10**8) + b".")
    with pytest.raises(LimitExceeded) as refused:
        streampickle.loads(data, allow=POLICY)
    peak = peak_memory(lambda: streampickle.loads(data, allow=POLICY))
    assert refused.value.limit == "max_expansion"
    assert "max_expansion (65536)" in str(refused.value)
    assert refused.value.size > refused.value.maximum == streampickle._limits.DEFAULT_MAX_EXPANSION
    assert peak < (2 << 20) + 3 * len(data)


def bytes_call(size: int) -> bytes:
    return unframed(call(builtin("bytes"), struct.pack("<cI", b"J", size)) + b".")  # BININT


def test_expansion_holds_at_its_boundary() -> None:
    """``bytes(n)`` may build twice the bytes received before its REDUCE, plus max_expansion."""
    received = len(bytes_call(0)) - 1  # all but STOP
    size = 1000 + 2 * received
    assert streampickle.loads(bytes_call(size), allow=POLICY, max_expansion=1000) == bytes(size)
    with pytest.raises(LimitExceeded) as refused:
        streampickle.loads(bytes_call(size + 1), allow=POLICY, max_expansion=1000)
    assert (refused.value.size, refused.value.maximum) == (1001, 1000)
    assert "builtins.bytes at position" in str(refused.value)
    assert streampickle.loads(bytes_call(10**6), allow=POLICY, max_expansion=None) == bytes(10**6)
    assert Limits().max_expansion == 1 << 16


def test_expansion_is_counted_across_the_calls_of_a_pickle() -> None:
    """Two bytes(30000) fit in max_expansion, three do not: what calls build adds up."""
    two = unframed(b"(" + call(builtin("bytes"), long(30_000)) * 2 + b"l.")
    assert streampickle.loads(two, allow=POLICY) == [bytes(30_000)] * 2
    with pytest.raises(LimitExceeded, match="max_expansion"):
        streampickle.loads(unframed(b"(" + call(builtin("bytes"), long(30_000)) * 3 + b"l."),
                           allow=POLICY)  # fmt: skip


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (call(builtin("set"), range_of(10**30)), "a range whose bounds are not literal ints"),
        (call(builtin("bytes"), long(10**30)), "does not model"),
        (call(builtin("set"), builtin("bytes")), "a global"),
        (call(builtin("list"), call(builtin("complex"), long(1))), "does not model"),
        # bytes.__new__(bytes, source=n), through NEWOBJ_EX's keyword arguments
        (builtin("bytes") + b")}\x8c\x06source" + long(5) + b"s\x92", "keyword arguments"),
    ],
    ids=["huge-range", "huge-int", "global", "unmodelled-result", "keywords"],
)
def test_calls_the_model_cannot_size_are_refused(body: bytes, message: str) -> None:
    """A modelled callable given what the model cannot size is refused: it could be anything."""
    with pytest.raises(PolicyViolation, match=message):
        streampickle.loads(unframed(body + b"."), allow=POLICY | [("builtins", "complex")])


def test_the_memo_model_outlives_a_pickle() -> None:
    """The unpickler's memo lives across load() calls: a second pickle can call a callable
    and use an int that the first one memoized. The model follows it."""
    first = unframed(builtin("bytes") + b"\x940" + long(10**9) + b"\x94.")
    second = unframed(call(get(0), get(1)) + b".")
    small = first.replace(long(10**9), long(7))
    control = pickle.Unpickler(__import__("io").BytesIO(small + second))
    assert (control.load(), control.load()) == (7, bytes(7))
    unpickler = streampickle.Unpickler(__import__("io").BytesIO(first + second), allow=POLICY)
    assert unpickler.load() == 10**9
    with pytest.raises(LimitExceeded, match="max_expansion"):
        unpickler.load()


#: Big legitimate objects of the types the amplifiers use: whatever the protocol, what their
#: calls build is at most twice what they take on the wire (protocols 0-2 pickle a bytearray as
#: bytearray(_codecs.encode(text, "latin1"))), so they load even with max_expansion=0.
LEGITIMATE: list[Any] = [
    bytearray(b"x" * 5000),
    bytearray(range(256)) * 20,
    [bytearray(b"a") for _ in range(500)],  # share the one-character str "a" through the memo
    bytes(range(256)) * 20,
    set(range(3000)),
    frozenset(range(-1500, 1500)),
    [range(-(10**30), 10**30, 7), range(5), range(0)] * 50,
    __import__("collections").deque(range(3000)),
    __import__("collections").deque("ab" * 1000, maxlen=1500),
    __import__("collections").Counter(range(2000)),
    __import__("collections").OrderedDict.fromkeys(range(2000)),
    __import__("collections").defaultdict(list, {i: [i] for i in range(2000)}),
    __import__("decimal").Decimal("9" * 5000),
    [__import__("decimal").Decimal(i % 10) for i in range(2000)],  # "1"... through the memo
]


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("index", range(len(LEGITIMATE)))
def test_legitimate_calls_need_no_expansion(protocol: int, index: int) -> None:
    data = pickle.dumps(LEGITIMATE[index], protocol)
    loaded = streampickle.loads(data, allow=POLICY, max_expansion=0)
    assert loaded == pickle.loads(data)


@pytest.mark.parametrize("protocol", [2, 5])
def test_big_legitimate_objects_load_within_the_default_limits(protocol: int) -> None:
    obj = [bytearray(b"x" * 300_000), set(range(100_000)), bytes(200_000)]
    data = pickle.dumps(obj, protocol)
    assert streampickle.loads(data, allow=POLICY) == obj


# --------------------------------------------------------------------------------------------
# The async API over real sockets


@pytest.mark.anyio
@pytest.mark.parametrize("name", ASYNC_HOSTILE)
async def test_aload_hits_the_limits(name: str, anyio_backend: Any) -> None:
    data, limit = HOSTILE[name]
    with pytest.raises(LimitExceeded) as refused:
        await while_sending(data, lambda stream: streampickle.aload(stream, allow=POLICY))
    assert refused.value.limit == limit


@pytest.mark.anyio
async def test_aload_limits_at_the_boundary_over_a_socket(anyio_backend: Any) -> None:
    data = pickle.dumps(SAMPLE, 5)
    needed = usage(data)["max_opcodes"]

    async def load(stream: SocketStream, maximum: int) -> Any:
        return await streampickle.aload(stream, allow=[], max_opcodes=maximum)

    assert await while_sending(data, lambda stream: load(stream, needed)) == SAMPLE
    with pytest.raises(LimitExceeded, match="max_opcodes"):
        await while_sending(data, lambda stream: load(stream, needed - 1))


@pytest.mark.anyio
async def test_pickle_stream_limits(anyio_backend: Any) -> None:
    async with tcp_pair() as (client, server):
        sender = streampickle.PickleStream(client)
        receiver = streampickle.PickleStream(server, allow=[], max_opcodes=50)
        with anyio.fail_after(HANG_GUARD):
            await sender.send(list(range(10)))
            assert await receiver.receive() == list(range(10))
            await sender.send(list(range(100)))
            with pytest.raises(LimitExceeded, match="max_opcodes"):
                await receiver.receive()
            with pytest.raises(anyio.BrokenResourceError):  # the rest of it is still unread
                await receiver.receive()


@pytest.mark.anyio
async def test_aload_restricted_limits_need_allow(anyio_backend: Any) -> None:
    async with tcp_pair() as (_, server):
        with pytest.raises(TypeError, match="max_opcodes"):
            await streampickle.aload(server, max_opcodes=5)


# --------------------------------------------------------------------------------------------
# Memory stays proportional to the bytes received, under an address-space cap


RLIMIT_SCRIPT = textwrap.dedent(
    """
    import pickle, resource, sys
    import anyio
    import streampickle
    from netutil import while_sending
    from test_limits import ASYNC_HOSTILE, HOSTILE, POLICY

    def vm_size():
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmSize")

    def outcome(load):
        try:
            load()
        except streampickle.LimitExceeded as exc:
            return exc.limit
        except MemoryError:
            return "MemoryError"
        return "loaded"

    def aload(data, backend):
        async def main():
            await while_sending(data, lambda stream: streampickle.aload(stream, allow=POLICY))
        anyio.run(main, backend=backend)

    for backend in ("asyncio", "trio"):  # import and start both before the cap
        aload(pickle.dumps(1), backend)
    cap = vm_size() + (int(sys.argv[1]) << 20)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    for name, (data, limit) in HOSTILE.items():
        print(name, outcome(lambda: streampickle.loads(data, allow=POLICY)), flush=True)
    for name in ASYNC_HOSTILE:
        for backend in ("asyncio", "trio"):
            data = HOSTILE[name][0]
            print(f"{name}-{backend}", outcome(lambda: aload(data, backend)), flush=True)
    print("control", outcome(lambda: pickle.loads(HOSTILE["memo-index"][0])), flush=True)
    print("control-call", outcome(lambda: pickle.loads(HOSTILE["bytes-of-size"][0])), flush=True)
    """
)


def run_capped(script: str, megabytes: int, *args: str) -> dict[str, str]:
    """Run *script* in a subprocess whose address space is capped at its size at start plus
    *megabytes*; return what it printed, as ``{name: outcome}``."""
    tests = str(__import__("pathlib").Path(__file__).parent)
    result = subprocess.run(
        [sys.executable, "-c", script, str(megabytes), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tests,
        env={**__import__("os").environ, "PYTHONPATH": tests},
    )
    assert result.returncode == 0, result.stderr
    return dict(line.split(" ", 1) for line in result.stdout.splitlines())


def test_memory_stays_bounded_under_an_address_space_cap() -> None:
    """With 200 MB of address space to spare, every hostile pickle is refused with the limit it
    hits, on the sync path and through aload on both backends; the control shows the cap bites:
    plain pickle dies of the memo-index pickle and of bytes(1 TiB)."""
    if sys.platform != "linux":
        pytest.skip("RLIMIT_AS and /proc/self/status are Linux features")
    outcomes = run_capped(RLIMIT_SCRIPT, 200)
    expected = {name: limit for name, (_, limit) in HOSTILE.items()}
    for backend in ("asyncio", "trio"):
        expected |= {f"{name}-{backend}": HOSTILE[name][1] for name in ASYNC_HOSTILE}
    assert outcomes == expected | {"control": "MemoryError", "control-call": "MemoryError"}


# --------------------------------------------------------------------------------------------
# The byte limits without allow=: every driver, sync and async, checks them the same way.


class _MemoryStream(anyio.abc.ByteReceiveStream):
    """The bytes given, in receives of at most 1,000 bytes."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if not self.data:
            raise anyio.EndOfStream
        piece, self.data = self.data[: min(max_bytes, 1000)], self.data[min(max_bytes, 1000) :]
        return piece

    async def aclose(self) -> None:
        pass


def _aload(data: bytes, **limits: Any) -> Any:
    async def main() -> Any:
        return await streampickle.aload(_MemoryStream(data), **limits)

    return anyio.run(main)


def _unpickler_iter_load(data: bytes, **limits: Any) -> Any:
    unpickler = streampickle.Unpickler(None, **limits)
    return streampickle.drive_load(unpickler.iter_load(), io.BytesIO(data))


BYTE_LIMIT_DRIVERS: dict[str, Callable[..., Any]] = {
    "load": lambda data, **limits: streampickle.load(io.BytesIO(data), **limits),
    "load-buffered": lambda data, **limits: streampickle.load(
        io.BufferedReader(io.BytesIO(data)), **limits
    ),
    "loads": streampickle.loads,
    "Unpickler.load": lambda data, **limits: streampickle.Unpickler(
        io.BytesIO(data), **limits
    ).load(),
    "Unpickler.iter_load": _unpickler_iter_load,
    "iter_loads": lambda data, **limits: streampickle.drive_load(
        streampickle.iter_loads(**limits), io.BytesIO(data)
    ),
    "aload": _aload,
}
_FRAMED = pickle.dumps([b"x" * 5000, "y" * 3000], 5)
CLAIM = 100 << 20  # what the claims below make plain pickle allocate


def in_frame(framed: bytes, after: bytes = b"") -> bytes:
    """PROTO 5, a FRAME holding *framed*, then *after*."""
    return b"\x80\x05\x95" + struct.pack("<Q", len(framed)) + framed + after


_TEXT = pickle.dumps("z" * 3000, 0)
#: (pickle, limits, the LimitExceeded message); the last two are hostile length claims.
BYTE_LIMIT_CASES: dict[str, tuple[bytes, dict[str, int], str]] = {
    "frame": (_FRAMED, {"max_frame_size": 1000}, "frame of 8017 bytes exceeds max_frame_size"),
    "object": (_FRAMED, {"max_object_size": 4000}, "frame of 8017 bytes exceeds max_object_size"),
    "line": (
        _TEXT,
        {"max_line_length": 100},
        "line of at least 101 bytes exceeds max_line_length (100)",
    ),
    "claimed frame": (
        b"\x80\x05\x95" + struct.pack("<Q", 1 << 40),
        {"max_frame_size": 1 << 20},
        "frame of 1099511627776 bytes exceeds max_frame_size (1048576)",
    ),
    "claimed payload": (
        b"\x80\x05\x8e" + struct.pack("<Q", 1 << 40),
        {"max_object_size": 1 << 20},
        "BINBYTES8 payload of 1099511627776 bytes exceeds max_object_size (1048576)",
    ),
    # Claims the unpickler reads from a frame it holds (issue 13, class 8): it allocates them
    # before it asks for the payload, so the guard checks each when the frame arrives.
    "claim in a frame": (
        in_frame(b"\x8e" + struct.pack("<Q", CLAIM), b"xx"),
        {"max_object_size": 1 << 20},
        f"BINBYTES8 payload of {CLAIM} bytes exceeds max_object_size (1048576)",
    ),
    "4-byte claim in a frame": (
        in_frame(b"X" + struct.pack("<I", CLAIM), b"xx"),
        {"max_object_size": 1 << 20},
        f"BINUNICODE payload of {CLAIM} bytes exceeds max_object_size (1048576)",
    ),
    "bytearray claim after framed data": (
        in_frame(b"\x8c\x01a\x94" + b"\x96" + struct.pack("<Q", CLAIM), b"xx"),
        {"max_object_size": 1 << 20},
        f"BYTEARRAY8 payload of {CLAIM} bytes exceeds max_object_size (1048576)",
    ),
    "claim cut by its frame": (
        in_frame(b"\x8e", struct.pack("<Q", CLAIM) + b"xx"),
        {"max_object_size": 1 << 20},
        f"BINBYTES8 payload of {CLAIM} bytes exceeds max_object_size (1048576)",
    ),
    "claim at protocol 3": (
        b"\x80\x03B" + struct.pack("<I", CLAIM) + b"xx",
        {"max_object_size": 1 << 20},
        f"BINBYTES payload of {CLAIM} bytes exceeds max_object_size (1048576)",
    ),
}


@pytest.mark.parametrize("case", list(BYTE_LIMIT_CASES))
@pytest.mark.parametrize("driver", list(BYTE_LIMIT_DRIVERS))
def test_byte_limits_hold_without_allow_in_every_driver(driver: str, case: str) -> None:
    data, limits, message = BYTE_LIMIT_CASES[case]
    tracemalloc.start()
    try:
        with pytest.raises(LimitExceeded, match=re.escape(message)) as refused:
            BYTE_LIMIT_DRIVERS[driver](data, **limits)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert refused.value.limit == next(iter(limits))
    assert peak < 1 << 20  # refused before anything of the claimed size was allocated


@pytest.mark.parametrize(
    "case", ["claim in a frame", "bytearray claim after framed data", "claim at protocol 3"]
)
def test_claims_make_plain_pickle_allocate(case: str) -> None:
    # The control of the claims the unpickler reads from its own buffer.
    tracemalloc.start()
    try:
        with pytest.raises(pickle.UnpicklingError):
            pickle.loads(BYTE_LIMIT_CASES[case][0])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak >= CLAIM


@pytest.mark.parametrize("driver", list(BYTE_LIMIT_DRIVERS))
def test_byte_limits_let_what_fits_through(driver: str) -> None:
    for data, limits, _ in list(BYTE_LIMIT_CASES.values())[:3]:
        roomy = {name: value * 100 for name, value in limits.items()}
        assert BYTE_LIMIT_DRIVERS[driver](data, **roomy) == pickle.loads(data)


def test_sync_api_without_limits_is_pickle() -> None:
    """No limit given: nothing is checked, as in pickle (a frame of any size loads)."""
    data = pickle.dumps([b"x" * 5000], 5)
    assert streampickle.loads(data) == streampickle.load(io.BytesIO(data)) == [b"x" * 5000]


# ---------------------------------------------------------------------------------------------
# limits=Limits(...): a bundle of limits, accepted wherever the keywords are.

_BUNDLED = pickle.dumps(b"x" * 5000, 5)


def test_a_limits_bundle_is_accepted_by_the_sync_api() -> None:
    small = streampickle.Limits(max_object_size=1000)
    allows: list[Any] = [None, []]
    for allow in allows:
        with pytest.raises(LimitExceeded, match="max_object_size \\(1000\\)"):
            streampickle.loads(_BUNDLED, allow=allow, limits=small)
        with pytest.raises(LimitExceeded, match="max_object_size \\(1000\\)"):
            streampickle.Unpickler(io.BytesIO(_BUNDLED), allow=allow, limits=small).load()
        with pytest.raises(LimitExceeded, match="max_object_size \\(1000\\)"):
            streampickle.drive_load(
                streampickle.iter_loads(allow=allow, limits=small), io.BytesIO(_BUNDLED)
            )
        # A keyword beside the bundle wins over its field.
        lifted = streampickle.loads(_BUNDLED, allow=allow, limits=small, max_object_size=None)
        assert lifted == b"x" * 5000


def test_a_limits_bundle_needs_allow_for_the_restricted_limits() -> None:
    with pytest.raises(TypeError, match="max_opcodes applies only to restricted loads"):
        streampickle.loads(_BUNDLED, limits=streampickle.Limits(max_opcodes=5))
    with pytest.raises(TypeError, match=r"limits= takes a streampickle\.Limits, not dict"):
        streampickle.loads(_BUNDLED, limits={"max_opcodes": 5})  # type: ignore[arg-type]
    with pytest.raises(LimitExceeded, match="max_opcodes"):
        streampickle.loads(
            pickle.dumps(list(range(100)), 2), allow=[], limits=streampickle.Limits(max_opcodes=5)
        )


@pytest.mark.anyio
async def test_a_limits_bundle_is_accepted_by_the_async_api(anyio_backend: Any) -> None:
    small = streampickle.Limits(max_object_size=1000)
    async with tcp_pair() as (client, server):
        await client.send(_BUNDLED * 3)
        with pytest.raises(LimitExceeded, match="max_object_size \\(1000\\)"):
            await streampickle.aload(server, limits=small)
    async with tcp_pair() as (client, server):
        await client.send(_BUNDLED)
        await client.send_eof()
        with pytest.raises(LimitExceeded, match="max_object_size \\(1000\\)"):
            async for _ in streampickle.aiter_load(server, allow=[], limits=small):
                pass
    async with tcp_pair() as (client, server):
        sender = streampickle.PickleStream(client)
        receiver = streampickle.PickleStream(server, limits=small)
        assert receiver.limits == streampickle.Limits(
            max_frame_size=small.max_frame_size,
            max_object_size=1000,
            max_line_length=small.max_line_length,
            max_payload_size=None,
            max_memo_size=None,
            max_opcodes=None,
            max_stack_depth=None,
            max_expansion=None,
            max_nesting=None,
            max_work=None,
        )
        with anyio.fail_after(HANG_GUARD):
            await sender.send(b"x" * 5000)
            with pytest.raises(LimitExceeded):
                await receiver.receive()


# ---------------------------------------------------------------------------------------------
# Nesting that never grows the stack: each level a tuple of the one below (issue 13, class 1).

#: A dict whose key is a million nested tuples: EMPTY_TUPLE, then TUPLE1 on it a million times
#: (the stack stays one item deep), then SETITEM, which hashes the key by C recursion.
DEEP_KEY = b"\x80\x02}" + b")" + b"\x85" * 1_000_000 + b"Ns."


def test_nested_tuples_cannot_crash_a_restricted_load() -> None:
    # The control: plain pickle dies of it (SIGSEGV), in a child process.
    assert (hostile.run_plain(DEEP_KEY, timeout=120) or 0) < 0  # killed by a signal
    with pytest.raises(LimitExceeded) as info:
        streampickle.loads(DEEP_KEY, allow=[])
    assert info.value.limit == "max_nesting"
    assert str(info.value).startswith("container nesting of 501 levels exceeds max_nesting (500)")
    # Within the limit (and with it lifted, for a peer you trust that far) it loads: the empty
    # tuple, 498 around it and the dict are 500 containers.
    nested: Any = ()
    for _ in range(498):
        nested = (nested,)
    assert streampickle.loads(pickle.dumps({nested: 1}, 2), allow=[]) == {nested: 1}
    shallow = b"\x80\x02}" + b")" + b"\x85" * 2000 + b"Ns."
    assert len(streampickle.loads(shallow, allow=[], max_nesting=None)) == 1


@pytest.mark.anyio
async def test_nested_tuples_cannot_crash_a_restricted_aload(anyio_backend: Any) -> None:
    with pytest.raises(LimitExceeded, match="max_nesting"):
        await while_sending(DEEP_KEY, lambda server: streampickle.aload(server, allow=[]))


# --------------------------------------------------------------------------------------------
# A large payload under allow=: read straight into its object


PAYLOADS = {
    "bytes": b"p" * 30_000_000,
    "bytearray": bytearray(b"q" * 30_000_000),
    "str": "r" * 30_000_000,
}


@pytest.mark.parametrize("kind", list(PAYLOADS))
def test_a_large_payload_is_read_once_into_its_object(kind: str) -> None:
    """A payload after its frame (BINBYTES8, BYTEARRAY8, BINUNICODE8) is data: the vetting
    reader checks its header and hands the payload on as the unpickler reads it, into the
    object's own buffer for bytes and bytearray, a piece at a time for str. It used to hold
    the whole payload until the unpickler had copied it (twice the memory)."""
    obj = PAYLOADS[kind]
    data = pickle.dumps([obj, "after"], 5)
    tracemalloc.start()
    try:
        loaded = streampickle.Unpickler(io.BytesIO(data), allow=[]).load()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert loaded == [obj, "after"] and type(loaded[0]) is type(obj)
    # The object and a piece; a str is decoded from the bytes read, as pickle.load from a
    # file does (a str of ASCII: a byte a character).
    assert peak < len(obj) * (2 if kind == "str" else 1) + (3 << 20)


@pytest.mark.parametrize("cut", [1, 20_000_000, 29_999_999])
def test_a_large_payload_cut_short_is_an_error_and_final(cut: int) -> None:
    data = pickle.dumps([b"p" * 30_000_000, "after"], 5)
    start = data.index(b"p" * 64)
    unpickler = streampickle.Unpickler(io.BytesIO(data[: start + cut]), allow=[])
    with pytest.raises((pickle.UnpicklingError, EOFError)) as first:
        unpickler.load()
    with pytest.raises(type(first.value)):
        unpickler.load()  # final: the rest of the pickle is not read as a new one


@pytest.mark.anyio
async def test_a_large_payload_arrives_whole_over_a_socket(anyio_backend: Any) -> None:
    obj = [bytearray(b"s" * 5_000_000), b"t" * 5_000_000, "u" * 3_000_000]
    data = pickle.dumps(obj, 5)
    got = await while_sending(data, lambda stream: streampickle.aload(stream, allow=[]))
    assert got == obj
