"""Objects to pickle: a broad corpus shared by the byte-identity and round-trip tests."""

from __future__ import annotations

import collections
import datetime
import decimal
import fractions
import pickle
from typing import Any


class Plain:
    def __init__(self, a: Any, b: Any) -> None:
        self.a, self.b = a, b

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(other) == vars(self)


class Slotted:
    __slots__ = ("x", "y")

    def __init__(self, x: Any, y: Any) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return type(other) is Slotted and (other.x, other.y) == (self.x, self.y)


class WithState:
    def __init__(self, value: Any) -> None:
        self.value = value
        self.cache = object()  # not pickled: __getstate__ drops it

    def __getstate__(self) -> dict[str, Any]:
        return {"value": self.value}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.value = state["value"]
        self.cache = None

    def __eq__(self, other: object) -> bool:
        return type(other) is WithState and other.value == self.value


class Reduced:
    def __init__(self, *args: Any) -> None:
        self.args = args

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return (Reduced, self.args)

    def __eq__(self, other: object) -> bool:
        return type(other) is Reduced and other.args == self.args


class ZeroCopy(bytearray):
    """A buffer type that pickles out-of-band at protocol 5 (as in CPython's tests)."""

    def __reduce_ex__(self, protocol: Any) -> Any:
        if protocol >= 5:
            return type(self)._reconstruct, (pickle.PickleBuffer(self),), None
        return type(self)._reconstruct, (bytearray(self),)

    @classmethod
    def _reconstruct(cls, obj: Any) -> ZeroCopy:
        with memoryview(obj) as m:
            return cls(m.tobytes())


def recursive_list() -> list[Any]:
    lst: list[Any] = [1, 2]
    lst.append(lst)
    return lst


def recursive_dict() -> dict[str, Any]:
    d: dict[str, Any] = {"k": 1}
    d["self"] = d
    return d


def corpus() -> dict[str, Any]:
    """Named objects covering what the pickler can meet."""
    shared = ["shared", 1.5]
    big = b"\x00\x01" * 70_000
    return {
        "none": None,
        "scalars": [True, False, 0, -1, 2**31, -(2**63), 2**200, 1.25, -0.0, 1j, 3 + 4j],
        "strings": ["", "a", "é" * 10, "\U0001f600", "lone \udcff surrogate", "x" * 300],
        "bytes_small": [b"", b"\x00", bytes(range(256))],
        "bytearray": bytearray(b"mutable"),
        "containers": (
            [1, [2, [3]]],
            (),
            (1,),
            {"a": 1, 2: "b"},
            {1, 2, 3},
            frozenset({"x"}),
            range(3, 30, 3),
            slice(1, None, 2),
        ),
        "shared_refs": [shared, shared, {"again": shared}],
        "recursive_list": recursive_list(),
        "recursive_dict": recursive_dict(),
        "classes": [Plain(1, [2]), Slotted("x", None), WithState(7), Reduced(1, "two")],
        "stdlib": [
            collections.OrderedDict(a=1),
            collections.Counter("hello"),
            collections.deque([1, 2]),
            datetime.datetime(2026, 11, 22, 8, 30, tzinfo=datetime.timezone.utc),
            decimal.Decimal("1.10"),
            fractions.Fraction(3, 7),
        ],
        "globals": [len, Plain, pickle.PickleBuffer, Ellipsis, NotImplemented],
        "large_bytes": big,
        "large_str": "é" * 70_000,
        "large_bytearray": bytearray(big),
        "many_small": [{"id": i, "name": f"n{i}", "tags": (i % 3, i % 5)} for i in range(20_000)],
        "mixed_large": [b"a" * 100_000, list(range(50_000)), "b" * 200_000, bytearray(90_000)],
        "picklebuffer": pickle.PickleBuffer(bytearray(b"inband" * 20_000)),
        "zerocopy": ZeroCopy(b"zc" * 50_000),
    }
