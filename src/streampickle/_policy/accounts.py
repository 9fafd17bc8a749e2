"""The accounts a restricted load keeps of what it builds: how deep objects nest and what holds
them, the work hashing their keys costs, and which objects the unpickler may still change.
`Rules` keeps them, opcode by opcode."""

from __future__ import annotations

from typing import Any

from .._exceptions import PolicyViolation
from .._limits import Limits
from .keys import OPAQUE, PLAIN_KEYS, Frozen, Tuple, collidable, key_of, members
from .model import (
    ANY,
    COST_CAP,
    COSTED,
    Box,
    Foreign,
    Long,
    Made,
    ModelledCallable,
    Shared,
)
from .nodes import NO_HOLDERS, add_holder, holders_of

__all__ = ["WORK_PER_BYTE", "Accounts"]

#: The work a pickle may cost per byte received (see `Accounts.charge_work`), beyond max_work.
WORK_PER_BYTE = 16
_WORK_BATCH = 4096  # steps of a nesting walk between checks of the work
# Entries in a container's ``hashes`` beside the counts of exact hashes: how many exact and
# opaque keys it has, its partial keys by signature (the first key with a signature, then
# ``[count, {digest: count}]``; see `streampickle._policy.keys`), and the comparisons its
# collisions cost (charged again to each call that hashes its members: `Accounts.rehash`).
_EXACT_KEYS, _OPAQUE_KEYS, _PARTIAL_KEYS, _COLLIDED = object(), object(), object(), object()


class Accounts:
    """The accounts of one pickle; `Rules` sets the fields."""

    limits: Limits
    origin: int  # stream offset where the pickle starts
    end: int  # stream offset of the end of the opcode being checked
    work: int
    max_nesting: int
    max_work: int

    # -- what objects hold, and what the unpickler does to them ------------------------------

    def mutate(self, name: str, target: Any, start: int) -> bool:
        """Refuse *name* (APPEND(S), SETITEM(S), ADDITEMS, BUILD) on *target* unless the pickle
        built it and no BUILD has set its state yet; ``True`` if the model follows what it
        holds (a `Box` or `Made`; on anything else the unpickler fails by itself)."""
        kind = type(target)
        if kind is Box or isinstance(target, Made):
            if kind is Shared:
                self._refuse(
                    f"{name} at position {start} changes the result of a call that may hand "
                    "back an object that existed before the load (an Enum member, a "
                    "singleton, what an allowed function or a call's result returned): it "
                    "would change that object for the whole process",
                    start,
                )
            if target.built:
                self._refuse(
                    f"{name} at position {start} changes an object after a BUILD set its "
                    "state: the pickler writes BUILD last, and a BUILD can give the object "
                    "attributes that shadow the methods the unpickler calls (append, extend, "
                    "add, __setstate__)",
                    start,
                )
            return True
        if kind is Foreign or kind is ModelledCallable:
            self._refuse(
                f"{name} at position {start} applies to a global (a class, function or "
                "module-level object): it would change it for the whole process",
                start,
            )
        if target is ANY:
            self._refuse(
                f"{name} at position {start} applies to {ANY.what}: a restricted load only "
                "changes objects the pickle built",
                start,
            )
        return False

    def contain(self, target: Any, items: Any, costs: bool = True) -> None:
        """*target* (a `NESTS` model) now holds *items* as well: it is deeper than each, and
        deepens with them. *costs*: hashing (or copying) *target* visits what *items* cost."""
        nested = [item for item in items if type(item) in COSTED]
        cost = len(items) - len(nested)
        deepest = 0
        live = False
        for item in nested:
            cost += item.cost
            if type(item) is not Long:
                if item.depth > deepest:
                    deepest = item.depth
                holders = item.holders
                if holders is not None:
                    add_holder(item, holders, target)
                    live = True
        if costs:
            target.cost = min(target.cost + cost, COST_CAP)
        if live and target.holders is None:
            target.holders = NO_HOLDERS
        if deepest >= target.depth:
            self.deepen(target, deepest + 1)

    def deepen(self, node: Any, depth: int) -> None:
        """*node* is now *depth* containers deep, and what holds it one more a level.

        The walk up its holders relaxes each one whose depth grows (exact where references
        do not form cycles); a holder already on the walk's path is a cycle (a pickle writes
        one as a reference to a container still being filled) and is not walked again.
        `LimitExceeded` past max_nesting; each holder visited is a step of work."""
        self._check_depth(depth)
        node.depth = depth
        if not node.holders:
            return
        path = {id(node)}
        walks = [(node, iter(holders_of(node.holders)))]
        steps = 0
        while walks:
            child, holders = walks[-1]
            need = child.depth + 1
            for holder in holders:
                steps += 1
                if need > holder.depth and id(holder) not in path:
                    self._check_depth(need)
                    holder.depth = need
                    if holder.holders:
                        path.add(id(holder))
                        walks.append((holder, iter(holders_of(holder.holders))))
                        break
            else:
                walks.pop()
                path.discard(id(child))
            if steps >= _WORK_BATCH:
                self.charge_work("tracking how deep objects nest", steps)
                steps = 0
        self.charge_work("tracking how deep objects nest", steps)

    def _check_depth(self, depth: int) -> None:
        if depth > self.max_nesting:
            self.limits.check("container nesting", depth, "max_nesting", unit="levels")

    def hash(self, items: Any, start: int, target: Any = None, charge: bool = True) -> int:
        """The unpickler hashes *items* (dict keys, set members) into *target* (a `Box`, or
        what it builds of them): charge what that visits beyond one object each (CPython
        caches the hash of a str, bytes or frozenset, not a tuple's or an int's), and for each
        key that a sender could make collide (`streampickle._policy.keys`) the keys of the
        same container it may be compared with: those of its hash (exact), of its signature
        and other known parts (partial), or all that are not plain (opaque). Without
        *charge* (the census of a list a call will hash), only count them. Return the
        comparisons of keys that may collide."""
        # str, bytes, None and bools cost one object and never collide: most keys end here.
        others = [item for item in items if type(item) not in PLAIN_KEYS]
        if not others:
            return 0
        box: Any = target if type(target) is Box else None
        seen: dict[Any, Any] | None = None if box is None else box.hashes
        cost = collided = 0
        for item in others:
            costed = type(item) in COSTED
            if costed:
                cost += item.cost - 1
            key = key_of(item)
            if key is None:
                continue
            if seen is None:
                seen = {}  # the keys of one call or opcode, if not a known container's
                if box is not None:
                    box.hashes = seen
            same = _compared(seen, key)
            if same:
                collided += same * (item.cost if costed else 1)
        if collided and box is not None:
            assert seen is not None
            seen[_COLLIDED] = min(seen.get(_COLLIDED, 0) + collided, COST_CAP)
        if charge and cost + collided:
            self.charge_work(
                f"hashing keys or set members, the last at position {start}", cost + collided
            )
        return collided

    def rehash(self, source: Any, pairs: bool, start: int) -> None:
        """A call hashes the members of *source* (with *pairs*, the first items of its pairs,
        as ``dict`` does): charge the comparisons of those that may collide, as the census of
        a list made for the call, or of a set's members or a dict's keys, counted them; or
        the worst case, each compared with all the others, where the model keeps no census
        (`streampickle._policy.keys`)."""
        kind = type(source)
        if kind is Box:
            seen = source.hashes
            work: int = 0 if seen is None else seen.get(_COLLIDED, 0)
            if seen is None or pairs:
                work += _worst(source.loose)
        elif kind is Tuple or kind is Frozen:
            held = members(source)
            if held is None or pairs:
                work = _worst((source.size or 0) if held is None else collidable(held))
            else:
                work = self.hash(held, start, charge=False)
        else:
            return  # str, bytes, range: plain members; what allowed calls made: trusted
        if work:
            self.charge_work(f"hashing the members given to the call at position {start}", work)

    def charge_work(self, what: str, steps: int) -> None:
        """Add *steps* to the work of this pickle; `LimitExceeded` if that exceeds
        `WORK_PER_BYTE` per byte received by more than max_work."""
        self.work = min(self.work + steps, COST_CAP)
        received = self.end - self.origin
        beyond = self.work - WORK_PER_BYTE * received
        if beyond > self.max_work:
            self.limits.check(
                f"work ({what}) beyond {WORK_PER_BYTE} steps a byte of the {received} bytes "
                "received",
                beyond,
                "max_work",
                unit="steps",
            )

    @staticmethod
    def _refuse(message: str, position: int) -> None:
        raise PolicyViolation(message, position)


def _worst(count: int) -> int:
    """The comparisons of *count* members that may all collide."""
    return min(count * (count - 1) // 2, COST_CAP)


def _compared(seen: dict[Any, Any], key: Any) -> int:
    """Count a key (what `key_of` gave) in *seen*; return the earlier keys it may be compared
    with."""
    opaque: int = seen.get(_OPAQUE_KEYS, 0)
    exact: int = seen.get(_EXACT_KEYS, 0)
    if type(key) is int:
        same: int = seen.get(key, 0)
        seen[key] = same + 1
        seen[_EXACT_KEYS] = exact + 1
        return same + opaque
    if key is OPAQUE:
        seen[_OPAQUE_KEYS] = opaque + 1
        return opaque + exact
    partial: dict[int, Any] | None = seen.get(_PARTIAL_KEYS)
    if partial is None:
        seen[_PARTIAL_KEYS] = partial = {}
    signature = key.hash_value()
    bucket = partial.get(signature)
    if bucket is None:  # most keys: their digest is never needed
        partial[signature] = key
        return 0
    if type(bucket) is not list:
        partial[signature] = bucket = [1, {bucket.digest(): 1}]
    counts: dict[int, int] = bucket[1]
    digest = key.digest()
    alike = counts.get(digest, 0)
    earlier: int = bucket[0]
    counts[digest] = alike + 1
    bucket[0] = earlier + 1
    return earlier - alike  # those with the same known parts differ in their strings
