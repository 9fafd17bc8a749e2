"""Attacks on restricted loads, one class of the untrusted-peers review at a time (nesting that
crashes CPython, hashing that takes hours, calls the model does not see), each with a control:
the same bytes through plain ``pickle`` (restricted to the same allowlist where it matters),
showing that the attack is live.

The payloads are built opcode by opcode; the controls that crash or hang run in a child
process."""

from __future__ import annotations

import collections
import pickle
import subprocess
import sys
import tracemalloc
from typing import Any

import pytest

import streampickle
from streampickle import (
    ALLOW_BUILTINS,
    ALLOW_COLLECTIONS,
    LimitExceeded,
    PolicyViolation,
)

ME = __name__


class Node:
    """A user's class, allowed by name."""

    def __init__(self, next: Any = None) -> None:
        self.next = next


ALLOW = ALLOW_BUILTINS | ALLOW_COLLECTIONS | [(ME, "Node"), ("builtins", "tuple")]
#: What instances need at protocols 0 and 1.
ALLOW_OLD = ALLOW | [("copyreg", "_reconstructor"), ("builtins", "object")]


# -- a small pickle assembler -----------------------------------------------------------------


def glob(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def put(index: int) -> bytes:
    return b"q" + bytes([index])


def get(index: int) -> bytes:
    return b"h" + bytes([index])


def text(value: str) -> bytes:
    return b"X" + len(value).to_bytes(4, "little") + value.encode()


PROTO = b"\x80\x02"
EMPTY_TUPLE, EMPTY_LIST, EMPTY_DICT = b")", b"]", b"}"
REDUCE, NEWOBJ, BUILD, APPEND, SETITEM, POP, STOP = b"R", b"\x81", b"b", b"a", b"s", b"0", b"."
TUPLE1, TUPLE2, MARK, FROZENSET, NONE = b"\x85", b"\x86", b"(", b"\x91", b"N"


def run_plain(data: bytes, timeout: float, allow_collections: bool = False) -> int | None:
    """Load *data* with plain ``pickle`` in a child process: its return code (negative: killed
    by a signal), or None if it was still running after *timeout* seconds."""
    script = "import pickle, sys; obj = pickle.loads(sys.stdin.buffer.read()); del obj"
    try:
        done = subprocess.run(
            [sys.executable, "-c", script], input=data, capture_output=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return None
    return done.returncode


# -- class 1: nesting that never grows the stack ----------------------------------------------
#
# Each payload below builds a chain LEVELS deep with a stack a few items deep: bottom-up (each
# level made from the one below) or top-down (a container filled with a new, empty one, which
# is then filled in turn through the memo). CPython frees a chain of deques (and of
# defaultdicts) and hashes a chain of tuples (and, from 3.12, of slices) by C recursion without
# a recursion check: ~100,000 levels crash it with SIGSEGV.

LEVELS = 150_000


def top_down(make: bytes, add: bytes, prefix: bytes = b"") -> bytes:
    """``make`` pushes an empty container; ``add`` adds the top item to the one below it."""
    level = make + put(2) + add + POP + get(2)
    return PROTO + prefix + make + put(1) + level * LEVELS + POP + get(1) + STOP


def bottom_up(start: bytes, wrap: bytes, prefix: bytes = b"", levels: int = LEVELS) -> bytes:
    """``wrap`` pushes a container holding memo 1 (the level below)."""
    return PROTO + prefix + start + (put(1) + POP + wrap) * levels + STOP


def callable_in_memo(module: str, name: str) -> bytes:
    return glob(module, name) + put(0) + POP


def call_of_list(item: bytes) -> bytes:
    """memo 0 called with a list of *item*."""
    return get(0) + EMPTY_LIST + item + APPEND + TUPLE1 + REDUCE


DEQUES = callable_in_memo("collections", "deque")
NEW_DEQUE = get(0) + EMPTY_TUPLE + REDUCE
DEEP = {
    "deques top-down": top_down(NEW_DEQUE, APPEND, DEQUES),
    "deques bottom-up": bottom_up(NEW_DEQUE, call_of_list(get(1)), DEQUES),
    "lists top-down": top_down(EMPTY_LIST, APPEND),
    "dicts top-down": top_down(b"K\x00" + EMPTY_DICT, SETITEM),
    "tuple() calls": bottom_up(
        EMPTY_TUPLE, call_of_list(get(1)), callable_in_memo("builtins", "tuple")
    ),
    "slices": bottom_up(
        NONE, get(0) + get(1) + TUPLE1 + REDUCE, callable_in_memo("builtins", "slice")
    ),
    "frozensets": bottom_up(MARK + FROZENSET, MARK + get(1) + FROZENSET),
    "instances": bottom_up(
        NONE,
        get(0) + EMPTY_TUPLE + NEWOBJ + EMPTY_DICT + text("next") + get(1) + SETITEM + BUILD,
        callable_in_memo(ME, "Node"),
    ),
}


@pytest.mark.parametrize("shape", DEEP)
def test_deep_chains_are_refused(shape: str) -> None:
    with pytest.raises(LimitExceeded) as info:
        streampickle.loads(DEEP[shape], allow=ALLOW)
    assert info.value.limit == "max_nesting"
    assert "container nesting of 501 levels exceeds max_nesting (500)" in str(info.value)


@pytest.mark.parametrize("shape", ["deques top-down", "deques bottom-up"])
def test_deep_chains_crash_plain_pickle(shape: str) -> None:
    # The control: plain pickle builds the chain and dies freeing it.
    assert (run_plain(DEEP[shape], timeout=120) or 0) < 0


@pytest.mark.parametrize("shape", ["lists top-down", "instances", "frozensets"])
def test_plain_pickle_builds_the_deep_chains(shape: str) -> None:
    # The control of the shapes CPython survives: the chain really is LEVELS deep.
    obj = pickle.loads(DEEP[shape])
    depth = 0
    while obj:
        obj = obj.next if isinstance(obj, Node) else next(iter(obj))
        depth += 1
    assert depth >= LEVELS


def test_data_within_the_nesting_limit_loads() -> None:
    chain: Any = None
    for _ in range(240):  # a Node and its __dict__ per level: 480 containers
        chain = Node(chain)
    loaded = streampickle.loads(pickle.dumps(chain, 5), allow=ALLOW)
    depth = 0
    while loaded is not None:
        loaded, depth = loaded.next, depth + 1
    assert depth == 240
    # 500 lists (the C pickler cannot write them: it recurses).
    lists = bottom_up(EMPTY_LIST, EMPTY_LIST + get(1) + APPEND, levels=499)
    loaded = streampickle.loads(lists, allow=[])
    for _ in range(499):
        loaded = loaded[0]
    assert loaded == []
    one_more = bottom_up(EMPTY_LIST, EMPTY_LIST + get(1) + APPEND, levels=500)
    with pytest.raises(LimitExceeded, match="max_nesting"):
        streampickle.loads(one_more, allow=[])
    assert streampickle.loads(one_more, allow=[], max_nesting=501) == pickle.loads(one_more)


def test_cycles_load_at_their_real_depth() -> None:
    # References back to a container still being filled are how pickles write cycles; the
    # nesting check walks each cycle once, so cyclic data is not refused for being cyclic.
    ring: list[Any] = []
    node = ring
    for _ in range(100):
        node.append([])
        node = node[0]
    node.append(ring)
    loaded = streampickle.loads(pickle.dumps(ring, 5), allow=[])
    walk = loaded
    for _ in range(101):
        walk = walk[0]
    assert walk is loaded
    # A tree whose nodes point back to their parents: depth 3 levels, 3 containers each way.
    root = Node()
    root.children = [Node() for _ in range(50)]  # type: ignore[attr-defined]
    for child in root.children:  # type: ignore[attr-defined]
        child.next = root
        child.children = [Node(child) for _ in range(20)]
    loaded = streampickle.loads(pickle.dumps(root, 5), allow=ALLOW)
    assert loaded.children[7].children[3].next.next is loaded


# -- class 2: hashing that costs more than the bytes ------------------------------------------

#: A dict key of tuples of tuples sharing their halves: 61 levels, 2**61 tuples to hash.
EXPONENTIAL_KEY = (
    PROTO + EMPTY_DICT + EMPTY_TUPLE + put(0) + POP + (get(0) * 2 + TUPLE2 + put(0) + POP) * 60
    + get(0) + NONE + SETITEM + STOP
)  # fmt: skip
#: A 1 MB int, used as a dict key 100,000 times through the memo: CPython hashes all its
#: digits each time.
BIG_INT = (1 << (8 * 1_000_000 - 1)) + 12345
REHASHED_INT = (
    PROTO + EMPTY_DICT + pickle.dumps(BIG_INT, 2)[2:-1] + put(0) + POP
    + (get(0) + NONE + SETITEM) * 100_000 + STOP
)  # fmt: skip


@pytest.mark.parametrize("payload", [EXPONENTIAL_KEY, REHASHED_INT], ids=["exponential", "rehash"])
def test_hashing_work_is_bounded(payload: bytes) -> None:
    assert run_plain(payload, timeout=5) is None  # the control: plain pickle is still hashing
    with pytest.raises(LimitExceeded) as info:
        streampickle.loads(payload, allow=[])
    assert info.value.limit == "max_work"
    assert "hashing keys or set members" in str(info.value)


def test_shared_keys_of_real_data_stay_within_the_work_limit() -> None:
    key = tuple(range(50))
    records = [{key: i, (i, "x"): frozenset(range(20))} for i in range(20_000)]
    assert streampickle.loads(pickle.dumps(records, 5), allow=ALLOW) == records


# -- class 3: calls the model does not see ----------------------------------------------------

ZERO_FILL = 100_000_000
ORDERED_DICT = glob("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE
SHADOW = {
    # BUILD gives an OrderedDict an attribute "append"; APPEND then calls it.
    "append": PROTO + ORDERED_DICT + EMPTY_DICT + text("append") + glob("builtins", "bytearray")
    + SETITEM + BUILD + b"J" + ZERO_FILL.to_bytes(4, "little") + APPEND + STOP,
    # A first BUILD gives it __setstate__; a second BUILD calls it.
    "__setstate__": PROTO + ORDERED_DICT + EMPTY_DICT + text("__setstate__")
    + glob("builtins", "bytearray") + SETITEM + BUILD + b"J" + ZERO_FILL.to_bytes(4, "little")
    + BUILD + STOP,
}  # fmt: skip


class PresetsOnly(pickle.Unpickler):
    """The control: plain pickle restricted to the same presets, as the pickle docs advise."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOW.pairs:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is forbidden")


def peak(load: Any) -> int:
    tracemalloc.start()
    try:
        load()
    except Exception:
        pass
    finally:
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return top


@pytest.mark.parametrize("method", SHADOW)
def test_attributes_set_by_build_are_never_called(method: str) -> None:
    import io

    payload = SHADOW[method]
    assert peak(lambda: PresetsOnly(io.BytesIO(payload)).load()) > ZERO_FILL  # the control
    with pytest.raises(PolicyViolation, match="after a BUILD set its state"):
        streampickle.loads(payload, allow=ALLOW)
    assert peak(lambda: streampickle.loads(payload, allow=ALLOW)) < 2_000_000


class Target:
    """A user's allowed class that a pickle tries to change for the whole process."""

    flag = "original"


def test_build_on_a_global_is_refused() -> None:
    import io

    payload = (
        PROTO + glob(ME, "Target") + NONE + EMPTY_DICT + text("flag") + text("changed") + SETITEM
        + TUPLE2 + BUILD + STOP
    )  # fmt: skip
    allow = [(ME, "Target")]

    class Control(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            assert (module, name) in allow
            return super().find_class(module, name)

    try:
        Control(io.BytesIO(payload)).load()
        assert Target.flag == "changed"  # the control: plain pickle changed the class
    finally:
        Target.flag = "original"
    with pytest.raises(PolicyViolation, match="for the whole process"):
        streampickle.loads(payload, allow=allow)
    assert Target.flag == "original"


def test_persistent_objects_are_not_changed() -> None:
    import io

    shared: list[Any] = []
    payload = PROTO + b"Pshared\n" + b"K\x07" + APPEND + STOP

    def load(unpickler_class: type[Any], **options: Any) -> Any:
        class Loader(unpickler_class):  # type: ignore[misc]
            def persistent_load(self, pid: Any) -> Any:
                return shared

        return Loader(io.BytesIO(payload), **options).load()

    load(pickle.Unpickler)
    assert shared == [7]  # the control
    with pytest.raises(PolicyViolation, match="did not build"):
        load(streampickle.Unpickler, allow=[])
    assert shared == [7]


def test_what_the_standard_pickler_writes_still_loads() -> None:
    od: Any = collections.OrderedDict(a=1)
    od.note = "an attribute"
    node = Node(Node())
    node.extra = {"k": [1, 2]}  # type: ignore[attr-defined]
    for protocol in range(6):
        loaded = streampickle.loads(pickle.dumps([od, node], protocol), allow=ALLOW_OLD)
        assert loaded[0] == od and loaded[0].note == "an attribute"
        assert loaded[1].next.next is None and loaded[1].extra == {"k": [1, 2]}


# -- class 5: memory that outlives refused pickles --------------------------------------------


def unknown_encoding(index: int) -> bytes:
    """``_codecs.encode("", <100 kB name>)``, a LookupError (under ALLOW_BUILTINS)."""
    return (
        PROTO + glob("_codecs", "encode") + text("") + text(f"{index:06d}" + "e" * 100_000)
        + TUPLE2 + REDUCE + STOP
    )  # fmt: skip


def test_refused_calls_leave_no_process_wide_state() -> None:
    import encodings

    cache: dict[str, Any] = encodings._cache
    before = len(cache)
    with pytest.raises(LookupError):  # the control: each unknown name is cached for good
        pickle.loads(unknown_encoding(0))
    assert len(cache) == before + 1
    cache.popitem()
    for index in range(1, 20):
        with pytest.raises(PolicyViolation, match="encoding other than latin-1"):
            streampickle.loads(unknown_encoding(index), allow=ALLOW_BUILTINS)
    assert len(cache) == before
    # What protocols 0-2 write for bytes and bytearrays still loads.
    for protocol in range(3):
        data = pickle.dumps([b"\x00\xffabc", bytearray(b"\x80xyz")], protocol)
        assert streampickle.loads(data, allow=ALLOW_BUILTINS) == [b"\x00\xffabc", b"\x80xyz"]
