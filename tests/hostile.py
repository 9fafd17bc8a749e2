"""Hostile pickles, built opcode by opcode: the attacks of the untrusted-peers review, as
functions of their size, for the attack tests (tests/test_attacks.py, at full size, with
controls), the property tests (tests/test_fuzz.py, small and mutated) and the fuzz harness's
seeds (fuzz/fuzz_load.py); and `run_plain`, the controls' load by plain ``pickle`` in a child
process."""

from __future__ import annotations

import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ME = __name__


class Node:
    """A user's class, allowed by name."""

    def __init__(self, next: Any = None) -> None:
        self.next = next


def run_plain(data: bytes, timeout: float) -> int | None:
    """Load *data* with plain ``pickle`` in a child process: its return code (negative: killed
    by a signal), or None if it was still running after *timeout* seconds."""
    script = "import pickle, sys; obj = pickle.loads(sys.stdin.buffer.read()); del obj"
    try:
        done = subprocess.run(
            [sys.executable, "-c", script],
            input=data,
            capture_output=True,
            timeout=timeout,
            cwd=Path(__file__).parent,  # the instances' class (`Node`) is importable there
        )
    except subprocess.TimeoutExpired:
        return None
    return done.returncode


# -- a small pickle assembler -----------------------------------------------------------------


def glob(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def put(index: int) -> bytes:
    return b"q" + bytes([index])


def get(index: int) -> bytes:
    return b"h" + bytes([index])


def text(value: str) -> bytes:
    return b"X" + len(value.encode()).to_bytes(4, "little") + value.encode()


def binint(value: int) -> bytes:
    return b"J" + value.to_bytes(4, "little", signed=True)


PROTO = b"\x80\x02"
EMPTY_TUPLE, EMPTY_LIST, EMPTY_DICT = b")", b"]", b"}"
REDUCE, NEWOBJ, BUILD, APPEND, SETITEM, POP, STOP = b"R", b"\x81", b"b", b"a", b"s", b"0", b"."
TUPLE1, TUPLE2, MARK, FROZENSET, NONE = b"\x85", b"\x86", b"(", b"\x91", b"N"


# -- nesting that never grows the stack -------------------------------------------------------
#
# Each builds a chain *levels* deep with a stack a few items deep: bottom-up (each level made
# from the one below) or top-down (a container filled with a new, empty one, which is then
# filled in turn through the memo).


def top_down(make: bytes, add: bytes, levels: int, prefix: bytes = b"") -> bytes:
    """``make`` pushes an empty container; ``add`` adds the top item to the one below it."""
    level = make + put(2) + add + POP + get(2)
    return PROTO + prefix + make + put(1) + level * levels + POP + get(1) + STOP


def shared_top_down(levels: int) -> bytes:
    """`top_down` lists, the first of them held by three references taken before the chain
    grew: twice by a list that is dropped, then once by the one the root holds (the root
    deepens with the chain only through that third reference)."""
    holders = EMPTY_LIST + get(1) + APPEND + get(1) + APPEND + POP  # [S, S], dropped
    holders += EMPTY_LIST + get(1) + APPEND + APPEND  # [S] into the root
    level = EMPTY_LIST + put(2) + APPEND + POP + get(2)
    return (
        PROTO
        + EMPTY_LIST
        + put(1)
        + POP
        + EMPTY_LIST
        + put(0)
        + holders
        + POP
        + get(1)
        + (level * levels)
        + POP
        + get(0)
        + STOP
    )


def bottom_up(start: bytes, wrap: bytes, levels: int, prefix: bytes = b"") -> bytes:
    """``wrap`` pushes a container holding memo 1 (the level below)."""
    return PROTO + prefix + start + (put(1) + POP + wrap) * levels + STOP


def callable_in_memo(module: str, name: str) -> bytes:
    return glob(module, name) + put(0) + POP


def call_of_list(item: bytes) -> bytes:
    """memo 0 called with a list of *item*."""
    return get(0) + EMPTY_LIST + item + APPEND + TUPLE1 + REDUCE


_DEQUES = callable_in_memo("collections", "deque")
_NEW_DEQUE = get(0) + EMPTY_TUPLE + REDUCE
_NODE_LEVEL = get(0) + EMPTY_TUPLE + NEWOBJ + EMPTY_DICT + text("next") + get(1) + SETITEM + BUILD
DEEP: dict[str, Callable[[int], bytes]] = {
    "deques top-down": lambda n: top_down(_NEW_DEQUE, APPEND, n, _DEQUES),
    "deques bottom-up": lambda n: bottom_up(_NEW_DEQUE, call_of_list(get(1)), n, _DEQUES),
    "lists top-down": lambda n: top_down(EMPTY_LIST, APPEND, n),
    "lists top-down, shared": shared_top_down,
    "lists bottom-up": lambda n: bottom_up(EMPTY_LIST, EMPTY_LIST + get(1) + APPEND, n),
    "dicts top-down": lambda n: top_down(b"K\x00" + EMPTY_DICT, SETITEM, n),
    "tuple() calls": lambda n: bottom_up(
        EMPTY_TUPLE, call_of_list(get(1)), n, callable_in_memo("builtins", "tuple")
    ),
    "slices": lambda n: bottom_up(
        NONE, get(0) + get(1) + TUPLE1 + REDUCE, n, callable_in_memo("builtins", "slice")
    ),
    "frozensets": lambda n: bottom_up(MARK + FROZENSET, MARK + get(1) + FROZENSET, n),
    "instances": lambda n: bottom_up(NONE, _NODE_LEVEL, n, callable_in_memo(ME, "Node")),
}


# -- hashing that costs more than the bytes ---------------------------------------------------


def exponential_key(levels: int) -> bytes:
    """A dict key of tuples of tuples sharing their halves: 2**levels tuples to hash."""
    double = get(0) * 2 + TUPLE2 + put(0) + POP
    return (
        PROTO + EMPTY_DICT + EMPTY_TUPLE + put(0) + POP + double * levels + get(0) + NONE
        + SETITEM + STOP
    )  # fmt: skip


def rehashed_int(size: int, uses: int) -> bytes:
    """An int of *size* bytes used as a dict key *uses* times through the memo: CPython
    hashes all its digits each time."""
    value = (1 << (8 * size - 1)) + 12345
    return (
        PROTO + EMPTY_DICT + pickle.dumps(value, 2)[2:-1] + put(0) + POP
        + (get(0) + NONE + SETITEM) * uses + STOP
    )  # fmt: skip


_P1, _P2, _P5 = 11400714785074694791, 14029467366897019727, 2870177450012600261
_M = (1 << 64) - 1


def colliding_pairs(count: int) -> list[tuple[int, int]]:
    """*count* distinct tuples of two small ints with one hash: CPython's tuple hash is
    invertible in its last item, so for many first items there is a second that lands on the
    target (a small int hashes to itself)."""
    final = hash((0, 0)) & _M
    acc2 = (final - (2 ^ (_P5 ^ 3527539))) & _M
    before_rotate = (acc2 * pow(_P1, -1, 1 << 64)) & _M
    mixed = ((before_rotate >> 31) | (before_rotate << 33)) & _M  # rotate right by 31
    inverse = pow(_P2, -1, 1 << 64)
    pairs: list[tuple[int, int]] = []
    first = 1
    while len(pairs) < count:
        lane = (_P5 + first * _P2) & _M
        acc1 = ((((lane << 31) | (lane >> 33)) & _M) * _P1) & _M
        second = ((mixed - acc1) * inverse) & _M
        if second < (1 << 61) - 1:
            pairs.append((first, second))
        first += 1
    return pairs


def colliding_keys(count: int) -> bytes:
    """A dict of *count* colliding pairs as keys, assembled (building the dict would itself
    take time quadratic in *count*), SETITEMS in batches of 1,000 as the pickler writes."""
    pairs = colliding_pairs(count)
    batches = [
        MARK + b"".join(pickle.dumps(pair, 2)[2:-1] + NONE for pair in pairs[start : start + 1000])
        + b"u"
        for start in range(0, count, 1000)
    ]  # fmt: skip
    return PROTO + EMPTY_DICT + b"".join(batches) + STOP


_M61 = (1 << 61) - 1  # an int's hash is its value modulo this prime


def _shuffle(lane: int) -> int:
    """The bit shuffle CPython's frozenset hash XORs its members' hashes through."""
    return (((lane ^ 89869747) ^ (lane << 16)) * 3644798167) & _M


def _unshuffle(value: int) -> int:
    mixed = (value * pow(3644798167, -1, 1 << 64)) & _M
    mixed ^= 89869747
    # h ^ (h << 16) == mixed: undo the shifted XOR 16 bits at a time.
    return (mixed ^ (mixed << 16) ^ (mixed << 32) ^ (mixed << 48)) & _M


def colliding_frozenset_pairs(count: int) -> list[frozenset[int]]:
    """*count* distinct frozensets of two small ints with one hash: a frozenset's hash mixes
    the XOR of its members' shuffled hashes, so for a first member a second one gives any
    XOR wanted (and is a small int, its own hash, a quarter of the time)."""
    target = _shuffle(1) ^ _shuffle(2)
    pairs: list[frozenset[int]] = []
    used: set[int] = set()
    first = 3
    while len(pairs) < count:
        second = _unshuffle(_shuffle(first) ^ target)
        signed = second - (1 << 64) if second >> 63 else second
        if -_M61 < signed < _M61 and signed != -1 and signed not in used and first not in used:
            pairs.append(frozenset((first, signed)))
            used.update((first, signed))
        first += 1
    return pairs


def _int(value: int) -> bytes:
    return pickle.dumps(value, 2)[2:-1]


def _batched_keys(keys: list[bytes]) -> bytes:
    """A dict of *keys* (each a pickled key) to None, SETITEMS in batches of 1,000."""
    batches = [
        MARK + b"".join(key + NONE for key in keys[start : start + 1000]) + b"u"
        for start in range(0, len(keys), 1000)
    ]
    return PROTO + EMPTY_DICT + b"".join(batches) + STOP


def colliding_frozenset_keys(count: int) -> bytes:
    """A dict whose keys are *count* colliding frozensets of two ints (FROZENSET, protocol 4)."""
    pairs = [sorted(pair) for pair in colliding_frozenset_pairs(count)]
    return _batched_keys([MARK + _int(a) + _int(b) + FROZENSET for a, b in pairs])


def colliding_mixed_tuples(count: int) -> bytes:
    """A dict whose keys are ``("x", 5 + k * (2**61 - 1))``: the str's hash is unknown to the
    sender, but the same in every key, and the ints all hash to 5."""
    return _batched_keys([text("x") + _int(5 + k * _M61) + TUPLE2 for k in range(count)])


def colliding_members(count: int) -> bytes:
    """One frozenset of *count* ints that all hash to 5 (FROZENSET hashes every member)."""
    return PROTO + MARK + b"".join(_int(5 + k * _M61) for k in range(count)) + FROZENSET + STOP


def colliding_frozensets_with_text(count: int) -> bytes:
    """A dict whose keys are frozensets of one str and two ints: the same str in each, and
    pairs of ints whose shuffled hashes XOR alike."""
    pairs = [sorted(pair) for pair in colliding_frozenset_pairs(count)]
    return _batched_keys([MARK + text("x") + _int(a) + _int(b) + FROZENSET for a, b in pairs])


def colliding_frozenset_calls(count: int) -> bytes:
    """What protocols 0-3 write for frozensets, ``frozenset([a, b])``, as *count* colliding
    keys: calls whose members the model does not see."""
    make = glob("builtins", "frozenset") + b"q\x00" + POP
    keys = [
        get(0) + EMPTY_LIST + MARK + _int(a) + _int(b) + b"e" + TUPLE1 + REDUCE
        for a, b in map(sorted, colliding_frozenset_pairs(count))
    ]
    return PROTO + make + _batched_keys(keys)[len(PROTO) :]


def _appended(items: list[bytes]) -> bytes:
    """A list of *items* (each pickled), APPENDS in batches of 1,000."""
    batches = [
        MARK + b"".join(items[start : start + 1000]) + b"e" for start in range(0, len(items), 1000)
    ]
    return EMPTY_LIST + b"".join(batches)


def _colliding_ints(count: int) -> list[bytes]:
    return [_int(5 + k * _M61) for k in range(count)]


def colliding_set_call(count: int) -> bytes:
    """What protocols 0-3 write for a set, ``set([...])``, of *count* ints that all hash to 5."""
    return colliding_call("builtins", "set", count, proto=PROTO)


def colliding_call(
    module: str,
    name: str,
    count: int,
    pairs: bool = False,
    factory: bool = False,
    proto: bytes = b"\x80\x04",  # protocol 4 finds dotted names (``dict.fromkeys``)
) -> bytes:
    """``module.name([...])`` of *count* colliding ints (with *pairs*, of ``(int, None)``
    pairs; with *factory*, ``module.name(None, [...])``, as for a defaultdict)."""
    items = _colliding_ints(count)
    listed = _appended([item + NONE + TUPLE2 for item in items] if pairs else items)
    args = NONE + listed + TUPLE2 if factory else listed + TUPLE1
    return proto + glob(module, name) + args + REDUCE + STOP


def colliding_list_reused(count: int) -> bytes:
    """A list of *count* colliding ints, made first, then given to ``set`` from the memo."""
    members = _appended(_colliding_ints(count)) + b"q\x00" + POP
    return PROTO + members + glob("builtins", "set") + get(0) + TUPLE1 + REDUCE + STOP


def colliding_list_rehashed(count: int, copy: bool = False) -> bytes:
    """``set(items)``, then ``frozenset(items)`` *count* // 5 times, of a list ``items`` of up
    to 500 colliding ints: each call compares them again (with *copy*, ``frozenset`` is given
    ``deque(items)``)."""
    items = _appended(_colliding_ints(min(count, 500)))
    made = glob("builtins", "set") + EMPTY_LIST + put(0) + items[1:] + TUPLE1 + REDUCE + POP
    if copy:
        made += glob("collections", "deque") + get(0) + TUPLE1 + REDUCE + put(0) + POP
    again = glob("builtins", "frozenset") + put(1) + POP
    call = get(1) + get(0) + TUPLE1 + REDUCE + POP
    return PROTO + made + again + call * (count // 5) + NONE + STOP


def colliding_copy_rehashed(count: int) -> bytes:
    return colliding_list_rehashed(count, copy=True)


def colliding_list_replaced(count: int) -> bytes:
    """A list of *count* Nones whose items SETITEMS replaces with colliding ints, given to
    ``set``."""
    nones = _appended([NONE] * count) + put(0)
    index = [binint(k) + item for k, item in enumerate(_colliding_ints(count))]
    replaced = b"".join(
        MARK + b"".join(index[at : at + 1000]) + b"u" for at in range(0, count, 1000)
    )
    return (
        PROTO + nones + replaced + POP + glob("builtins", "set") + get(0) + TUPLE1 + REDUCE + STOP
    )


def colliding_tuple_copy(count: int) -> bytes:
    """``set(tuple(items))`` of a list ``items`` of *count* colliding ints."""
    items = _appended(_colliding_ints(count)) + put(0) + POP
    copy = glob("builtins", "tuple") + get(0) + TUPLE1 + REDUCE
    return PROTO + items + glob("builtins", "set") + copy + TUPLE1 + REDUCE + STOP


def colliding_pairs_counted_as_members(count: int) -> bytes:
    """A list of *count* pairs ``(5 + k * (2**61 - 1), k)`` made for ``set`` (so it counts the
    pairs' hashes, which differ), then given to ``dict``, which hashes their first items: all
    hash to 5."""
    ints = _colliding_ints(count)
    pairs = _appended([item + _int(k) + TUPLE2 for k, item in enumerate(ints)])
    made = glob("builtins", "set") + pairs + b"q\x00" + POP + POP
    return PROTO + made + glob("builtins", "dict") + get(0) + TUPLE1 + REDUCE + STOP


#: Every way above of making keys or set members collide, by name (each a function of a count).
COLLIDING: dict[str, Callable[[int], bytes]] = {
    "tuple keys": colliding_keys,
    "frozenset keys": colliding_frozenset_keys,
    "str and int tuples": colliding_mixed_tuples,
    "frozenset members": colliding_members,
    "frozensets with a str": colliding_frozensets_with_text,
    "frozenset calls": colliding_frozenset_calls,
    "set call": colliding_set_call,
    "list reused": colliding_list_reused,
    "list rehashed": colliding_list_rehashed,
    "copy rehashed": colliding_copy_rehashed,
    "tuple copy": colliding_tuple_copy,
    "list replaced": colliding_list_replaced,
}


# -- calls the model does not see -------------------------------------------------------------

_ORDERED_DICT = glob("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE


def shadowed(method: str, fill: int) -> bytes:
    """BUILD gives an OrderedDict the attribute *method* (``bytearray``); a later APPEND
    (``append``) or BUILD (``__setstate__``) calls it with *fill*."""
    state = EMPTY_DICT + text(method) + glob("builtins", "bytearray") + SETITEM
    call = APPEND if method == "append" else BUILD
    return PROTO + _ORDERED_DICT + state + BUILD + binint(fill) + call + STOP


# -- state that outlives a pickle -------------------------------------------------------------


def unknown_encoding(index: int, length: int) -> bytes:
    """``_codecs.encode("", <an unknown encoding name of *length*>)``."""
    name = f"{index:06d}" + "e" * length
    return PROTO + glob("_codecs", "encode") + text("") + text(name) + TUPLE2 + REDUCE + STOP
