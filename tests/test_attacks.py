"""Attacks on restricted loads, one class of the untrusted-peers review at a time (nesting that
crashes CPython, hashing that takes hours, calls the model does not see), each with a control:
the same bytes through plain ``pickle`` (restricted to the same allowlist where it matters),
showing that the attack is live.

The payloads are built opcode by opcode (tests/hostile.py); the controls that crash or hang
run in a child process."""

from __future__ import annotations

import collections
import io
import pickle
import tracemalloc
from typing import Any
from unittest import mock

import pytest

import hostile
import hostile_numpy
import streampickle
from hostile import PROTO, glob, text
from streampickle import (
    ALLOW_BUILTINS,
    ALLOW_COLLECTIONS,
    ALLOW_NUMPY,
    LimitExceeded,
    PolicyViolation,
)
from streampickle._policy import reader

ALLOW = ALLOW_BUILTINS | ALLOW_COLLECTIONS | [(hostile.ME, "Node"), ("builtins", "tuple")]
#: What instances need at protocols 0 and 1.
ALLOW_OLD = ALLOW | [("copyreg", "_reconstructor"), ("builtins", "object")]


# -- class 1: nesting that never grows the stack ----------------------------------------------
#
# CPython frees a chain of deques (and of defaultdicts) and hashes a chain of tuples (and, from
# 3.12, of slices) by C recursion without a recursion check: ~100,000 levels crash it with
# SIGSEGV. Each payload builds a chain LEVELS deep with a stack a few items deep.

LEVELS = 150_000
DEEP = {shape: build(LEVELS) for shape, build in hostile.DEEP.items()}


@pytest.mark.parametrize("shape", DEEP)
def test_deep_chains_are_refused(shape: str) -> None:
    with pytest.raises(LimitExceeded) as info:
        streampickle.loads(DEEP[shape], allow=ALLOW)
    assert info.value.limit == "max_nesting"
    assert "container nesting of 501 levels exceeds max_nesting (500)" in str(info.value)


@pytest.mark.parametrize("shape", ["deques top-down", "deques bottom-up"])
def test_deep_chains_crash_plain_pickle(shape: str) -> None:
    # The control: plain pickle builds the chain and dies freeing it.
    assert (hostile.run_plain(DEEP[shape], timeout=120) or 0) < 0


@pytest.mark.parametrize("shape", ["lists top-down", "instances", "frozensets"])
def test_plain_pickle_builds_the_deep_chains(shape: str) -> None:
    # The control of the shapes CPython survives: the chain really is LEVELS deep.
    obj = pickle.loads(DEEP[shape])
    depth = 0
    while obj:
        obj = obj.next if isinstance(obj, hostile.Node) else next(iter(obj))
        depth += 1
    assert depth >= LEVELS


@pytest.mark.parametrize("pure", [False, True], ids=["as built", "pure Python"])
def test_a_chain_deepens_every_reference_that_holds_it(pure: bool) -> None:
    # The root holds the chain only through the third of the references to its first list,
    # all taken before the chain grew (`nodes.add_holder`: one holder, then a list): the
    # limit is met at exactly the depth plain pickle builds.
    assert pickle.loads(hostile.shared_top_down(3)) == [[[[[[]]]]]]
    with mock.patch.object(reader, "SCAN", None if pure else reader.SCAN):
        assert streampickle.loads(hostile.shared_top_down(497), allow=[])  # 500 levels
        with pytest.raises(LimitExceeded, match="nesting of 501 levels exceeds max_nesting"):
            streampickle.loads(hostile.shared_top_down(498), allow=[])


def test_data_within_the_nesting_limit_loads() -> None:
    chain: Any = None
    for _ in range(240):  # a Node and its __dict__ per level: 480 containers
        chain = hostile.Node(chain)
    loaded = streampickle.loads(pickle.dumps(chain, 5), allow=ALLOW)
    depth = 0
    while loaded is not None:
        loaded, depth = loaded.next, depth + 1
    assert depth == 240
    # 500 lists (the C pickler cannot write them: it recurses).
    lists = hostile.DEEP["lists bottom-up"](499)
    loaded = streampickle.loads(lists, allow=[])
    for _ in range(499):
        loaded = loaded[0]
    assert loaded == []
    one_more = hostile.DEEP["lists bottom-up"](500)
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
    root = hostile.Node()
    root.children = [hostile.Node() for _ in range(50)]  # type: ignore[attr-defined]
    for child in root.children:  # type: ignore[attr-defined]
        child.next = root
        child.children = [hostile.Node(child) for _ in range(20)]
    loaded = streampickle.loads(pickle.dumps(root, 5), allow=ALLOW)
    assert loaded.children[7].children[3].next.next is loaded


# -- class 2: hashing that costs more than the bytes ------------------------------------------

#: A 492-byte key of 2**61 tuples; a 1 MB int used as a key 100,000 times.
EXPONENTIAL_KEY = hostile.exponential_key(60)
REHASHED_INT = hostile.rehashed_int(1_000_000, 100_000)


@pytest.mark.parametrize("payload", [EXPONENTIAL_KEY, REHASHED_INT], ids=["exponential", "rehash"])
def test_hashing_work_is_bounded(payload: bytes) -> None:
    assert (
        hostile.run_plain(payload, timeout=2) is None
    )  # the control: plain pickle is still hashing
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
SHADOW = {method: hostile.shadowed(method, ZERO_FILL) for method in ("append", "__setstate__")}


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


class Recursive:
    """A class whose ``__reduce__`` arguments hold the object itself. For it, pickle's
    pure-Python pickler (``pickle._Pickler``) writes the state twice, the second BUILD on a
    memo copy, which a restricted load refuses; the C pickler writes it once."""

    def __init__(self, peers: list[Any] | None = None) -> None:
        self.peers = [] if peers is None else peers

    def __reduce__(self) -> Any:
        return Recursive, (self.peers,), {"note": "state"}


def test_a_second_build_written_by_the_python_pickler_is_refused() -> None:
    import pickletools

    obj = Recursive()
    obj.peers.append(obj)
    allow = [(__name__, "Recursive")]
    by_c = pickle.dumps(obj, 4)
    loaded = streampickle.loads(by_c, allow=allow)
    assert loaded.peers[0] is loaded and loaded.note == "state"
    file = io.BytesIO()
    pickle._Pickler(file, 4).dump(obj)
    by_python = file.getvalue()
    assert sum(op.name == "BUILD" for op, _, _ in pickletools.genops(by_python)) == 2
    loaded = pickle.loads(by_python)  # plain pickle loads it
    assert loaded.peers[0] is loaded and loaded.note == "state"
    with pytest.raises(PolicyViolation, match="after a BUILD set its state"):
        streampickle.loads(by_python, allow=allow)


class Target:
    """A user's allowed class that a pickle tries to change for the whole process."""

    flag = "original"


def test_build_on_a_global_is_refused() -> None:
    import io

    state = hostile.EMPTY_DICT + text("flag") + text("changed") + hostile.SETITEM
    payload = PROTO + glob(__name__, "Target") + b"N" + state + b"\x86b."  # TUPLE2 BUILD STOP
    allow = [(__name__, "Target")]

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
    payload = PROTO + b"Pshared\n" + b"K\x07a."  # PERSID, BININT1 7, APPEND, STOP

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
    node = hostile.Node(hostile.Node())
    node.extra = {"k": [1, 2]}  # type: ignore[attr-defined]
    for protocol in range(6):
        loaded = streampickle.loads(pickle.dumps([od, node], protocol), allow=ALLOW_OLD)
        assert loaded[0] == od and loaded[0].note == "an attribute"
        assert loaded[1].next.next is None and loaded[1].extra == {"k": [1, 2]}


# -- class 5: memory that outlives refused pickles --------------------------------------------


def test_refused_calls_leave_no_process_wide_state() -> None:
    import encodings

    cache: dict[str, Any] = encodings._cache
    before = len(cache)
    with pytest.raises(LookupError):  # the control: each unknown name is cached for good
        pickle.loads(hostile.unknown_encoding(0, 100_000))
    assert len(cache) == before + 1
    cache.popitem()
    for index in range(1, 20):
        with pytest.raises(PolicyViolation, match="encoding other than latin-1"):
            streampickle.loads(hostile.unknown_encoding(index, 100_000), allow=ALLOW_BUILTINS)
    assert len(cache) == before
    # What protocols 0-2 write for bytes and bytearrays still loads.
    for protocol in range(3):
        data = pickle.dumps([b"\x00\xffabc", bytearray(b"\x80xyz")], protocol)
        assert streampickle.loads(data, allow=ALLOW_BUILTINS) == [b"\x00\xffabc", b"\x80xyz"]


# -- class 2, continued: keys whose hashes collide --------------------------------------------


def test_colliding_pairs_collide() -> None:
    pairs = hostile.colliding_pairs(50)
    assert len(set(pairs)) == 50 and len({hash(pair) for pair in pairs}) == 1


def test_colliding_keys_are_refused() -> None:
    payload = hostile.colliding_keys(40_000)  # ~27 s for plain pickle here: far past 2 s
    assert hostile.run_plain(payload, timeout=2) is None  # the control: quadratic, still inserting
    with pytest.raises(LimitExceeded) as info:
        streampickle.loads(payload, allow=[])
    assert info.value.limit == "max_work"
    # Ordinary tuple, float and big-int keys load.
    keys: list[Any] = [(index, index * 7919 % 10007) for index in range(5_000)]
    keys += [index / 3 for index in range(5_000)] + [2**64 + index for index in range(5_000)]
    ordinary = dict.fromkeys(keys)
    assert streampickle.loads(pickle.dumps(ordinary, 2), allow=[]) == ordinary
    assert streampickle.loads(pickle.dumps(set(keys), 5), allow=[]) == set(keys)


def test_colliding_frozensets_collide() -> None:
    pairs = hostile.colliding_frozenset_pairs(50)
    assert len(set(pairs)) == 50 and len({hash(pair) for pair in pairs}) == 1


# Keys whose hashes the model computed only in part, or not at all, before: frozensets (their
# members' hashes XORed), tuples holding strings beside colliding ints, the members of one
# FROZENSET, frozensets built by calls (protocols 0-3), whose members the model does not see,
# and the members of sets that protocols 0-3 write as ``set([...])``: the list made for the
# call, one made before it, one given to calls again and again (or a copy of it), a tuple copy,
# a list whose items SETITEMS replaced.
COLLIDING = [name for name in hostile.COLLIDING if name != "tuple keys"]  # that one: above
CALLS = {"frozenset calls", "set call", "list reused", "list rehashed", "copy rehashed"}
CALLS |= {"tuple copy", "list replaced"}


@pytest.mark.parametrize("case", COLLIDING)
def test_colliding_keys_of_every_kind_are_refused(case: str) -> None:
    make = hostile.COLLIDING[case]
    allow: Any = ALLOW if case in CALLS else []
    assert hostile.run_plain(make(40_000), timeout=2) is None  # the control: quadratic
    with pytest.raises(LimitExceeded) as info:
        streampickle.loads(make(40_000), allow=allow)
    assert info.value.limit == "max_work"
    assert streampickle.loads(make(100), allow=allow) == pickle.loads(make(100))


def test_keys_with_strings_and_numbers_load() -> None:
    """Keys that differ in their strings are never charged as colliding, however many share
    their numbers; frozensets and nested tuples are hashed as CPython does."""
    names = [f"name {index}" for index in range(6_000)]
    keys: list[Any] = [(name, 5) for name in names] + [(name, "x") for name in names]
    keys += [(name, index % 7, (index % 3, name)) for index, name in enumerate(names)]
    keys += [frozenset({index, index + 1}) for index in range(6_000)]
    keys += [frozenset({name, 2**70}) for name in names] + [(name, 2**70) for name in names]
    keys += [(index, index / 2, (index,), frozenset({index})) for index in range(6_000)]
    keys += [tuple(range(index, index + 12)) for index in range(3_000)]
    ordinary = dict.fromkeys(keys, 1)
    for protocol in (4, 5):
        data = pickle.dumps(ordinary, protocol)
        assert streampickle.loads(data, allow=[]) == ordinary
        assert streampickle.loads(pickle.dumps(set(keys), protocol), allow=[]) == set(keys)


#: The calls that hash the members of their argument (or the first items of its pairs):
#: (module, name, pairs, whether the list is the second argument).
HASHING_CALLS = [
    ("builtins", "set", False, False),
    ("builtins", "frozenset", False, False),
    ("builtins", "dict.fromkeys", False, False),
    ("collections", "Counter", False, False),
    ("collections", "OrderedDict.fromkeys", False, False),
    ("builtins", "dict", True, False),
    ("collections", "OrderedDict", True, False),
    ("collections", "defaultdict", True, True),
]


@pytest.mark.parametrize("call", HASHING_CALLS, ids=[call[1] for call in HASHING_CALLS])
def test_every_call_that_hashes_a_list_is_charged_for_its_collisions(call: Any) -> None:
    module, name, pairs, factory = call
    allow = [(module, name), (module, name.partition(".")[0])]  # a method: its class too
    with pytest.raises(LimitExceeded) as info:
        streampickle.loads(
            hostile.colliding_call(module, name, 20_000, pairs, factory), allow=allow
        )
    assert info.value.limit == "max_work"
    small = hostile.colliding_call(module, name, 100, pairs, factory)
    assert streampickle.loads(small, allow=allow) == pickle.loads(small)


def test_a_list_counted_for_one_call_is_charged_the_worst_case_by_another() -> None:
    """A list made for ``set`` counts its members' hashes, not their first items': given to
    ``dict``, it is charged as if all its pairs' keys collided."""
    allow = [("builtins", "set"), ("builtins", "dict")]
    attack = hostile.colliding_pairs_counted_as_members(40_000)
    assert hostile.run_plain(attack, timeout=2) is None  # the control: quadratic
    with pytest.raises(LimitExceeded, match="max_work"):
        streampickle.loads(attack, allow=allow)
    small = hostile.colliding_pairs_counted_as_members(100)
    assert streampickle.loads(small, allow=allow) == pickle.loads(small)


def test_sets_written_as_calls_load_however_many_numbers_they_hold() -> None:
    """What protocols 0-3 write for a set, ``set([...])``: the list keeps a census of its
    members' hashes, so sets of distinct numbers and tuples load, at any size (frozensets,
    which protocols 0-3 write as calls too, are opaque: see the test below)."""
    members: set[Any] = set(range(2**62, 2**62 + 30_000)) | {index / 7 for index in range(30_000)}
    members |= {(index, -index) for index in range(20_000)}
    members |= {frozenset({index, 2**70}) for index in range(20)}
    for protocol in range(4):
        for obj in (members, frozenset(members), [members, frozenset(members)]):
            data = pickle.dumps(obj, protocol)
            assert streampickle.loads(data, allow=ALLOW_BUILTINS) == obj


def test_many_frozenset_keys_built_by_calls_need_max_work() -> None:
    """Protocols 0-3 write a frozenset as a call, whose members the model does not see: each
    such key is charged for the earlier ones (the worst case), so a dict with thousands of
    them needs ``max_work`` lifted."""
    ordinary = {frozenset({index, -index}): index for index in range(5_000)}
    data = pickle.dumps(ordinary, 2)
    with pytest.raises(LimitExceeded, match="max_work"):
        streampickle.loads(data, allow=ALLOW_BUILTINS)
    assert streampickle.loads(data, allow=ALLOW_BUILTINS, max_work=None) == ordinary
    few = {frozenset({index, -index}): index for index in range(500)}
    assert streampickle.loads(pickle.dumps(few, 2), allow=ALLOW_BUILTINS) == few


# -- class 4: numpy, the vetted way -----------------------------------------------------------

np = pytest.importorskip("numpy")


def numpy_samples() -> list[Any]:
    return [
        np.arange(10.0), np.arange(6, dtype="i4").reshape(2, 3), np.zeros(3, bool),
        np.asfortranarray(np.ones((3, 4))), np.array(5.0), np.arange(10)[::2],
        np.arange(4, dtype=">f8"), np.zeros(0), np.ones(3, "c16"), np.ones(2, "f2"),
        np.arange(24).reshape(2, 3, 4).transpose(2, 0, 1), np.float64(1.5), np.int64(3),
        np.uint8(7), np.bool_(True),
    ]  # fmt: skip


@pytest.mark.parametrize("protocol", range(2, 6))
def test_numpy_data_loads_under_the_numpy_preset(protocol: int) -> None:
    for sample in numpy_samples():
        data = pickle.dumps(sample, protocol)
        expected, loaded = pickle.loads(data), streampickle.loads(data, allow=ALLOW_NUMPY)
        assert type(loaded) is type(expected) and loaded.dtype == expected.dtype
        assert np.array_equal(loaded, expected)
        if isinstance(expected, np.ndarray):
            assert loaded.flags == expected.flags
    # What required_globals finds for numpy data is what the preset allows, and inspect
    # prints the preset as the allowlist it needs.
    data = pickle.dumps(numpy_samples(), protocol)
    assert set(streampickle.required_globals(data)) <= ALLOW_NUMPY.pairs
    from streampickle._inspect import inspect_stream

    assert next(inspect_stream(io.BytesIO(data))).allowlist_source() == "ALLOW_NUMPY"


@pytest.mark.parametrize("name", hostile_numpy.CRASH)
def test_crafted_numpy_states_are_refused(name: str) -> None:
    with pytest.raises(PolicyViolation):
        streampickle.loads(hostile_numpy.CRASH[name], allow=ALLOW_NUMPY)


@pytest.mark.parametrize("name", hostile_numpy.CRASH_ON_LOAD)
def test_crafted_numpy_states_crash_plain_pickle(name: str) -> None:
    assert (hostile.run_plain(hostile_numpy.CRASH[name], timeout=60) or 0) < 0  # the control


def test_numpy_refusals_name_the_preset() -> None:
    data = pickle.dumps(np.arange(3), 5)
    with pytest.raises(streampickle.ForbiddenGlobal, match=r"use streampickle\.ALLOW_NUMPY"):
        streampickle.loads(data, allow=[])
    for dtype in (object, "M8[D]", [("a", "f8")], "U3"):
        with pytest.raises(PolicyViolation, match="a dtype other than a number or boolean"):
            streampickle.loads(pickle.dumps(np.zeros(2, dtype), 4), allow=ALLOW_NUMPY)
