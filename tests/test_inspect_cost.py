"""The opcode walk of `required_globals` and `inspect_stream` does linear work ("untrusted
peers round 2", item 6): hostile 1-2 MB pickles that ``pickle.loads`` handles in milliseconds
once cost minutes, because each pop through a mark reversed and scanned the whole symbolic
stack.

No timing: the model's stack is replaced by a list that counts the items its slices, scans
and copies touch, which must stay within the number of opcodes (each item is pushed once and
popped at most once), so quadratic work would fail the bound at these sizes."""

from __future__ import annotations

import io
import pickle
import struct
from collections.abc import Callable
from typing import Any

import pytest

from streampickle import _globals, required_globals
from streampickle._inspect import inspect_stream
from streampickle._opcodes import genops


class _CountingList(list[Any]):
    touched = 0

    def __getitem__(self, index: Any) -> Any:
        result = super().__getitem__(index)
        if isinstance(index, slice):
            _CountingList.touched += len(result)
        return result

    def __delitem__(self, index: Any) -> None:
        if isinstance(index, slice):
            _CountingList.touched += len(range(*index.indices(len(self))))
        super().__delitem__(index)

    def __contains__(self, item: object) -> bool:
        _CountingList.touched += len(self)
        return super().__contains__(item)

    def __iter__(self) -> Any:
        _CountingList.touched += len(self)
        return super().__iter__()

    def __reversed__(self) -> Any:
        _CountingList.touched += len(self)
        return super().__reversed__()

    def index(self, *args: Any) -> int:
        _CountingList.touched += len(self)
        return super().index(*args)

    def count(self, item: object) -> int:
        _CountingList.touched += len(self)
        return super().count(item)

    def copy(self) -> list[Any]:
        _CountingList.touched += len(self)
        return super().copy()


def _padded(size: int, body: bytes) -> bytes:
    """A pickle of *size* bytes: a BINBYTES payload (pushed and popped) fills up to *size*
    around the opcode-dense hostile *body* (a 1/100 of *size*, to keep the test fast)."""
    filler = size - len(body) - 10
    return b"\x80\x04B" + struct.pack("<I", filler) + b"\0" * filler + b"0" + body + b"N."


def _stack_then_marks(size: int) -> bytes:
    """A deep stack, then MARK POP_MARK pairs over it."""
    k = size // 300
    return _padded(size, b"N" * k + b"(1" * k)


def _open_marks(size: int) -> bytes:
    """Many marks left open, then closed one by one."""
    k = size // 200
    return _padded(size, b"(" * k + b"1" * k)


def _appends_over_deep_stack(size: int) -> bytes:
    """A deep stack under a list that APPENDS extends one item at a time."""
    k = size // 400
    return _padded(size, b"N" * k + b"]" + b"(Ne" * k + b"0")


HOSTILE: list[Callable[[int], bytes]] = [
    _stack_then_marks,
    _open_marks,
    _appends_over_deep_stack,
]


def _work(data: bytes, run: Callable[[bytes], object]) -> tuple[int, int]:
    """The items the model's stack operations touched, and the opcodes of *data*."""
    _CountingList.touched = 0
    run(data)
    opcodes = sum(1 for _ in genops(io.BytesIO(data)))
    return _CountingList.touched, opcodes


def _inspect(data: bytes) -> object:
    return list(inspect_stream(io.BytesIO(data)))


@pytest.mark.parametrize("make", HOSTILE, ids=lambda make: make.__name__)
@pytest.mark.parametrize("run", [required_globals, _inspect], ids=["required_globals", "inspect"])
def test_linear_work(
    make: Callable[[int], bytes], run: Callable[[bytes], object], monkeypatch: Any
) -> None:
    monkeypatch.setattr(_globals, "_Stack", _CountingList)
    small, large = make(1 << 20), make(2 << 20)
    assert len(small) == 1 << 20 and len(large) == 2 << 20
    pickle.loads(small)  # the control: pickle handles them
    pickle.loads(large)
    small_work, small_ops = _work(small, run)
    large_work, large_ops = _work(large, run)
    assert small_work <= small_ops
    assert large_work <= large_ops
    assert large_work <= 2 * small_work + 16


@pytest.mark.parametrize(
    "data",
    [
        b"\x80\x04N" + b"\x94" * 200_000 + b".",  # MEMOIZE
        b"\x80\x04N" + b"".join(b"r" + struct.pack("<I", i) for i in range(40_000)) + b".",
        b"\x80\x04" + b"(" * 200_000 + b".",  # MARK
        b"\x80\x04" + b"N" * 200_000 + b".",
    ],
    ids=["memoize", "long-binput", "marks", "nones"],
)
def test_the_walk_holds_a_few_bytes_per_byte_of_pickle(data: bytes) -> None:
    import tracemalloc

    tracemalloc.start()
    try:
        required_globals(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * len(data) + 100_000  # a dict entry per memo write was ~66 bytes
