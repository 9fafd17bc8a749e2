"""Hash collisions: the models of tuples, frozensets and big ints, and what the vetting pass
knows of the hashes of keys and set members.

A dict or set slows down quadratically when many distinct keys share a hash. CPython
randomises the hashes of str and bytes (and so of datetimes), but not of numbers: an int's
hash is its value modulo 2**61 - 1, a tuple's combines its items' hashes by a function a
sender can invert (xxHash's mixing), a frozenset's XORs its members', so colliding keys are
easy to make from numbers. The model sorts each key (`key_of`):

* *plain*: str, bytes, None, bools, ints below 2**61 (each its own hash), and what allowed
  calls made (an instance's hash is its class's business: trusted, like the class);
* *exact*: numbers past that, tuples and frozensets whose items' hashes the model knows: the
  model computes CPython's hash, and a key is charged for the keys of the same container
  with that hash, which the container compares it with;
* *partial*: tuples and frozensets holding strings or bytes (whose hashes the sender cannot
  know) besides numbers: their hash is computed with a secret in place of each unknown
  item's. Two such keys can be made to collide only if their unknown items are the same and
  their known parts hash alike; the model charges a key for the earlier ones with that
  signature whose known parts differ (a keyed digest of them tells), assuming the worst of
  the unknown items. Keys that differ only in their strings are never charged, and those
  holding nothing else (*blind*) are plain;
* *opaque*: tuples and frozensets that calls built (``tuple(...)``, ``frozenset(...)``, what
  protocols 0-3 write for a frozenset), whose items the model does not see: charged for every
  earlier opaque or exact key of the container.
"""

from __future__ import annotations

import math
import secrets
import sys
from typing import Any

from .nodes import Box, Sized

__all__ = [
    "ARGS_KEPT", "BIG", "LOOSE_CAP", "OPAQUE", "PLAIN_KEYS", "SMALL_INT",
    "Frozen", "Long", "Opaque", "Tuple",
    "add_loose", "collidable", "copy_census", "key_of", "members",
]  # fmt: skip

#: A call's arguments are kept in the model of a tuple up to this many (every modelled
#: callable takes fewer; a longer tuple is only a length).
ARGS_KEPT = 8
#: Literal ints are modelled below this magnitude (a longer one is a `Long`: not kept, and a
#: size or range bound that large is refused).
BIG = 1 << 63
_NOT_YET = -1  # a hash not computed yet: CPython maps a hash of -1 to -2

_XXPRIME_1 = 11400714785074694791
_XXPRIME_2 = 14029467366897019727
_XXPRIME_5 = 2870177450012600261
_MASK = (1 << 64) - 1
SMALL_INT = (1 << 61) - 1  # ints below this hash to themselves: distinct, never colliding
#: Keys whose hash a sender cannot make collide (str and bytes hashes are randomised).
PLAIN_KEYS = frozenset({str, Sized, type(None), bool})
_HASHES_KNOWN = sys.hash_info.width == 64
#: The lane of an item whose hash the sender cannot know, in a partial key's signature.
_SECRET = secrets.randbits(64)


class _Unknown:
    """The token of an item whose hash the sender cannot know, in a digest of known parts
    (its repr is no str's)."""

    def __repr__(self) -> str:
        return "<unknown>"


_UNKNOWN = _Unknown()
#: A key whose hash the sender may choose and the model does not know (`key_of`).
OPAQUE = object()
_EXACT, _PARTIAL, _BLIND = 0, 1, 2  # how much of a key's hash the model knows


def _signed(acc: int) -> int:
    return acc - (1 << 64) if acc >> 63 else acc


def _int_token(value: int) -> Any:
    if -BIG < value < BIG:
        return value
    return ("L", hash(value.to_bytes(value.bit_length() // 8 + 1, "little", signed=True)))


def _lane(item: Any) -> tuple[int, int] | None:
    """An item's hash as a lane of a tuple or frozenset, and how much of it is known; None
    if it is opaque."""
    kind = type(item)
    if kind is int or kind is bool:
        return hash(item), _EXACT
    if kind is Sized:  # a str or bytes the model only sizes: the sender cannot choose its hash
        return _SECRET, _BLIND
    if kind is float:
        if math.isnan(item):  # hashed by identity: not the model's object's
            return _SECRET, _BLIND
        return hash(item), _EXACT
    if item is None or kind is str:  # a str the model keeps: its hash here is the real one
        return hash(item), _EXACT
    if kind is Long:
        return item.hashed, _EXACT
    if kind is Tuple or kind is Frozen:
        hashed = item.hash_value()
        if hashed is None:
            return None
        return (_SECRET, _BLIND) if item.known == _BLIND else (hashed, item.known)
    return _SECRET, _BLIND  # what a call made: the sender cannot choose its hash


def _token(item: Any) -> Any:
    """The token of an item's value in a digest: equal values (``1``, ``1.0``, ``True``), one
    token; every unknown item the same. Tuples and frozensets need their digests first."""
    kind = type(item)
    if kind is int or kind is bool:
        return _int_token(int(item))
    if kind is float and not math.isnan(item):
        return _int_token(int(item)) if item.is_integer() else item
    if item is None or kind is str:
        return item
    if kind is Long:
        return item.token
    if (kind is Tuple or kind is Frozen) and item.known != _BLIND:
        return (kind.__name__[0], item._digest)
    return _UNKNOWN


def _digest(model: Tuple | Frozen) -> int:
    """A keyed digest of the known parts of *model* and of what it holds, computed for the
    tuples and frozensets it holds first, without recursion (str hashing is SipHash with the
    process's secret key: the sender cannot make two different parts share one)."""
    pending: list[Any] = [model]
    while pending:
        top = pending[-1]
        if top._digest is not None:
            pending.pop()
            continue
        inner = [
            item
            for item in top._all
            if (type(item) is Tuple or type(item) is Frozen) and item._digest is None
        ]
        if inner:
            pending += inner
            continue
        pending.pop()
        tokens = [_token(item) for item in top._all]
        if type(top) is Frozen:  # members: equal ones once, in any order
            tokens = sorted({repr(token) for token in tokens if token is not _UNKNOWN})
        top._digest = hash(repr(tokens))
    assert model._digest is not None
    return model._digest


def _tuple_key(items: Any) -> tuple[int | None, int]:
    """CPython's hash of a tuple of *items* (3.8+, 64-bit builds), the secret standing for
    each unknown item's, and how much of it is known; (None, _EXACT) if an item is opaque."""
    if not _HASHES_KNOWN:
        return None, _EXACT
    acc = _XXPRIME_5
    known = _EXACT
    blind = bool(items)  # every item unknown: the sender cannot make it collide
    for item in items:
        lane = _lane(item)
        if lane is None:
            return None, _EXACT
        value, part = lane
        if part != _BLIND:
            blind = False
        if part:
            known = _PARTIAL
        acc = (acc + (value & _MASK) * _XXPRIME_2) & _MASK
        acc = ((acc << 31) | (acc >> 33)) & _MASK
        acc = (acc * _XXPRIME_1) & _MASK
    acc = (acc + (len(items) ^ (_XXPRIME_5 ^ 3527539))) & _MASK
    if blind:
        known = _BLIND
    return (1546275796 if acc == _MASK else _signed(acc)), known


def _shuffle(lane: int) -> int:
    return (((lane ^ 89869747) ^ (lane << 16)) * 3644798167) & _MASK


def _frozen_key(items: tuple[Any, ...]) -> tuple[int | None, int]:
    """CPython's hash of a frozenset of *items* (equal ones counted once), the secret standing
    for each unknown member's, and how much of it is known."""
    if not _HASHES_KNOWN:
        return None, _EXACT
    known: list[tuple[int, Any]] = []
    unknown = 0
    for item in items:
        lane = _lane(item)
        if lane is None:
            return None, _EXACT
        if lane[1] == _BLIND:
            unknown += 1  # unknown strings may be equal: assume not (the worst case)
        else:
            known.append((lane[0], item))
    hashes = {value for value, _ in known}
    if len(hashes) < len(known):  # equal members share a hash: keep one of each
        for _, item in known:
            if type(item) is Tuple or type(item) is Frozen:
                _digest(item)
        kept = {repr(_token(item)): value for value, item in known}
        lanes = list(kept.values())
    else:
        lanes = [value for value, _ in known]
    acc = 0
    for value in lanes:
        acc ^= _shuffle(value & _MASK)
    if unknown:
        acc ^= _shuffle(_SECRET ^ unknown)
    acc ^= ((len(lanes) + unknown + 1) * 1927868237) & _MASK
    acc ^= (acc >> 11) ^ (acc >> 25)
    acc = (acc * 69069 + 907133923) & _MASK
    hashed = 590923713 if acc == _MASK else _signed(acc)
    return hashed, (_PARTIAL if lanes else _BLIND) if unknown else _EXACT


class Tuple(Sized):
    """The model of a tuple; ``items`` holds its items' models if it has at most `ARGS_KEPT`.
    ``depth``, ``holders`` and ``cost`` as for `Box`; `Accounts.contain` sets them. CPython does
    not cache a tuple's hash, so its ``cost`` adds up its items' each time."""

    __slots__ = ("_all", "_digest", "cost", "depth", "hashed", "holders", "items", "known")

    def __init__(self, items: list[Any]) -> None:
        super().__init__(len(items))
        self._all = tuple(items)  # for its hash and digest (`items` is for calls)
        self.items = self._all if len(items) <= ARGS_KEPT else None
        self.depth = 1
        self.cost = 1
        self.holders: Any = None
        #: CPython's hash of the tuple (`hash_value`), None if an item is opaque; ``known``
        #: says how much of it the model knows. A flat tuple is hashed when first asked
        #: (`_NOT_YET` until then); one holding tuples or frozensets now, from theirs, so
        #: that a chain is hashed as it is built, not recursively.
        self._digest: int | None = None
        self.known = _EXACT
        self.hashed: int | None = _NOT_YET
        if any(type(item) is Tuple or type(item) is Frozen for item in items):
            self.hashed, self.known = _tuple_key(items)

    def hash_value(self) -> int | None:
        """CPython's hash of the tuple (a secret standing for unknown items'), or None."""
        if self.hashed == _NOT_YET:
            self.hashed, self.known = _tuple_key(self._all)
        return self.hashed

    def digest(self) -> int:
        """A keyed digest of the tuple's known items: the same for equal tuples, whatever
        their unknown items (for a tuple whose `hash_value` is not None)."""
        return _digest(self) if self._digest is None else self._digest

    @classmethod
    def copied(cls, size: int) -> Tuple:
        """The model of a tuple of *size* items that a call copied (its items are not known)."""
        copy = cls([])
        copy.size = size
        copy.items = copy._all = None  # type: ignore[assignment]
        copy.hashed = None
        return copy


class Frozen(Sized):
    """The model of a frozenset, or of a tuple a call built: immutable, so ``holders`` stays
    None unless it holds what can deepen. A frozenset caches its hash, a call's tuple is
    costed as the iterable it copies. Its hash (`hash_value`) is known only for FROZENSET's
    (`of`): a call's are opaque."""

    __slots__ = ("_all", "_digest", "cost", "depth", "hashed", "holders", "known")

    def __init__(self, size: int | None) -> None:
        super().__init__(size)
        self.depth = 1
        self.cost = 1
        self.holders: Any = None
        self.hashed: int | None = None
        self.known = _EXACT
        self._all: tuple[Any, ...] = ()
        self._digest: int | None = None

    @classmethod
    def of(cls, items: list[Any]) -> Frozen:
        """The model of the frozenset FROZENSET makes of *items*."""
        frozen = cls(len(items))
        frozen._all = tuple(items)
        frozen.hashed, frozen.known = _frozen_key(frozen._all)
        return frozen

    def hash_value(self) -> int | None:
        return self.hashed

    def digest(self) -> int:
        """A keyed digest of the known members (for a frozenset whose `hash_value` is not
        None)."""
        return _digest(self) if self._digest is None else self._digest


class Opaque:
    """A value the model knows nothing about; ``what`` describes it for error messages."""

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __repr__(self) -> str:
        return f"<{self.what}>"


class Long(Opaque):
    """An int of 2**63 or more: only its hash, the token of its value and what hashing it costs
    are kept (CPython does not cache an int's hash: each use as a key hashes all its digits
    again)."""

    __slots__ = ("cost", "hashed", "token")
    what = "an int of 2**63 or more, which the vetting pass does not model"

    def __init__(self, value: int) -> None:
        self.cost = value.bit_length() // 30 + 1
        self.hashed = hash(value)
        self.token = _int_token(value)


def key_of(item: Any) -> Any:
    """What the model knows of the hash of *item* as a key: None if it cannot be made to
    collide (plain), its hash (exact), `OPAQUE`, or for a partial key its model."""
    kind = type(item)
    if kind is int:
        return None if -SMALL_INT < item < SMALL_INT else hash(item)
    if kind is float:
        return None if math.isnan(item) else hash(item)
    if kind is Long:
        return item.hashed
    if kind is Tuple or kind is Frozen:
        hashed = item.hash_value()
        if hashed is None:
            return OPAQUE
        known = item.known
        return hashed if known == _EXACT else None if known == _BLIND else item
    return None


# -- what a call hashes ------------------------------------------------------------------------
#
# ``set(items)``, ``frozenset``, ``dict.fromkeys``, ``Counter`` hash the members of what they
# are given, ``dict``, ``OrderedDict`` and ``defaultdict`` the first items of its pairs. A list
# made for such a call (what protocols 0-3 write for a set: ``set([...])``) keeps a census of
# its members' hashes as they are appended, as a set does (`Box.hashes`); every list counts
# the items appended to it that could collide (`Box.loose`), for the worst case of the others.


#: ``Box.loose`` saturates here (a C int in the accelerator's models).
LOOSE_CAP = (1 << 31) - 1


def add_loose(box: Box, count: int) -> None:
    """*count* more items of *box* could collide (`collidable`)."""
    box.loose = min(box.loose + count, LOOSE_CAP)


def collidable(items: Any) -> int:
    """How many of *items* a sender could make collide as keys or set members: all but the
    plain ones (`PLAIN_KEYS`, ints below `SMALL_INT`), without looking inside tuples (the
    accelerator counts the same)."""
    count = 0
    for item in items:
        kind = type(item)
        if kind in PLAIN_KEYS or (kind is int and -SMALL_INT < item < SMALL_INT):
            continue
        count += 1
    return count


def members(source: Tuple | Frozen) -> tuple[Any, ...] | None:
    """The models of what a tuple or frozenset holds, None if a call made it (unknown)."""
    held = source._all
    return held if held is not None and len(held) == source.size else None


def copy_census(copy: Box, source: Any, pairs: bool) -> None:
    """What *copy* (a `Box` a call copied from *source*: ``set(...)``, ``list(...)``,
    ``dict(...)``) knows of the hashes of its members: a list's, set's or dict's census, shared
    (with *pairs*, only a mapping's: the keys of a list of pairs are not what its census
    counted), or how many could collide."""
    kind = type(source)
    if kind is Box:
        copy.loose = source.loose
        if not (pairs and source.loose):
            copy.hashes = source.hashes
    elif kind is Tuple or kind is Frozen:
        held = members(source)
        add_loose(copy, (source.size or 0) if held is None else collidable(held))
