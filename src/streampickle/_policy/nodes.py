"""The models the vetting pass makes most, one per container a pickle builds: ``Sized`` and
``Box`` (see `streampickle._policy.model`), compiled where the accelerator is built
(`streampickle._policy._nodes`: C fields that `streampickle._policy._scan` reads and writes
without attribute lookups), the pure-Python classes below where not."""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

__all__ = ["NO_HOLDERS", "Box", "Sized", "add_holder", "compiled", "holders_of"]

# A model's ``holders``: the containers that hold it, for `Accounts.deepen` to walk up.
#
# * None: nothing it holds can deepen, so it never deepens again: holders are not kept;
# * `NO_HOLDERS`: it can deepen, and nothing holds it (yet);
# * the holder itself, where exactly one reference holds it (most containers: data is a tree);
# * a list of its holders, once per reference, from the second.
#
# The one-holder case keeps no list: a list per container was a third of the model's memory
# and of the objects the cyclic garbage collector visits.

#: The ``holders`` of a model that can deepen and that nothing holds.
NO_HOLDERS: tuple[()] = ()


def add_holder(node: Any, holders: Any, holder: Any) -> None:
    """*holder* holds *node* (whose ``holders`` is *holders*, not None) once more."""
    if holders is NO_HOLDERS:
        node.holders = holder
    elif type(holders) is list:
        holders.append(holder)
    else:
        node.holders = [holders, holder]


def holders_of(holders: Any) -> Any:
    """The holders that a model's ``holders`` field (not None) names, as a sequence."""
    return holders if type(holders) is list else () if holders is NO_HOLDERS else (holders,)


def compiled(name: str) -> Any:
    """This package's compiled module *name* (``_nodes``, ``_scan``), or None where it is not
    built or the environment sets ``STREAMPICKLE_PURE_PYTHON`` (to anything but ``0``)."""
    if os.environ.get("STREAMPICKLE_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        return importlib.import_module(f"{__package__}.{name}")
    except ImportError:
        return None


_NODES = compiled("_nodes")

if TYPE_CHECKING or _NODES is None:

    class Sized:
        """The model of an object whose length is known (a str, bytes, tuple, frozenset, range,
        or what a modelled call built); ``size`` is None for a range of unknown length."""

        __slots__ = ("size",)

        def __init__(self, size: int | None) -> None:
            self.size = size

    class Box(Sized):
        """The model of a mutable container (list, dict, set, bytearray, deque...): APPEND(S),
        SETITEM(S) and ADDITEMS add to its size, seen through every reference to it.

        Like every model of an object that holds others (`NESTS`): ``depth`` counts the containers
        nested in it, itself included; ``holders`` names the containers that hold it (see
        `add_holder`; None once nothing it holds can deepen: it never deepens again); ``cost`` is
        what hashing it, or a copy of it, visits. ``built`` is set by a BUILD on it.
        ``listed``: it is a list or deque (SETITEM(S) replace its items); ``loose``: how many of
        the items put in it (APPEND(S), LIST, SETITEM(S) on a list) a sender could make collide
        when a call hashes them (`streampickle._policy.keys.collidable`)."""

        __slots__ = ("built", "cost", "depth", "hashes", "holders", "listed", "loose")

        def __init__(self, size: int | None) -> None:
            self.size = size  # as Sized.__init__, without the call: one of these per container
            self.depth = 1
            self.cost = 1
            self.holders: Any = NO_HOLDERS
            self.built = False
            self.listed = False
            self.loose = 0
            #: What is known of its keys' hashes, and how many have each (`Accounts.hash`).
            self.hashes: dict[Any, Any] | None = None

else:
    Sized, Box = _NODES.Sized, _NODES.Box
