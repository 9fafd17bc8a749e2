"""The compiled accelerator of the vetting pass (`streampickle._policy._scan`): built where the
suite runs, and checking every pickle exactly as the pure-Python rules do: the same object or
the same error, and the same model of the stack and memo afterwards."""

from __future__ import annotations

import io
import os
import pickle
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hostile
import streampickle
from streampickle._policy import model, reader
from streampickle._policy.nodes import holders_of
from streampickle._policy.rules import Rules
from streampickle._unpickler import PeekableBytes
from test_fuzz import HOSTILE_POLICY, LIMITS, hostile_pickles, mutate
from test_policy import BUILTIN_DATA

PURE = os.environ.get("STREAMPICKLE_PURE_PYTHON", "") not in ("", "0")
ACCELERATED = reader.SCAN
needs_accelerator = pytest.mark.skipif(
    ACCELERATED is None, reason="the pure-Python path: nothing to compare it with"
)


def test_the_accelerator_is_built_unless_the_pure_python_path_is_asked_for() -> None:
    """CI builds it (setup.py; gcc is there): a silent build failure would leave it untested."""
    if PURE:
        assert reader.SCAN is None
        assert model.Box.__module__ == "streampickle._policy.nodes"
    else:
        assert reader.SCAN is not None, "streampickle._policy._scan is not built: pip install -e ."
        assert model.Box.__module__ == "streampickle._policy._nodes"
        assert model.Sized.__module__ == "streampickle._policy._nodes"


def framed(data: bytes) -> bytes:
    """*data* (a pickle at any protocol) as protocol 4 with its body in one frame: every
    opcode goes through the frame check, which is what the accelerator speeds up."""
    body = data[2:] if data[:1] == b"\x80" and len(data) > 1 else data
    return b"\x80\x04\x95" + len(body).to_bytes(8, "little") + body


#: What the model objects know (the compiled ones, `_nodes`, have no ``__slots__`` to list).
FIELDS = ("size", "depth", "cost", "built", "hashed", "loose", "what")


def describe(value: Any, depth: int = 0) -> Any:
    """What the model knows of *value* (a model object, or a literal it keeps)."""
    if not any(hasattr(value, name) for name in FIELDS):
        return (type(value).__name__, repr(value))  # a literal, or a ModelledCallable
    fields: list[Any] = [type(value).__name__]
    for name in FIELDS:
        fields.append(getattr(value, name, "-"))
    holders = getattr(value, "holders", "-")
    fields.append(holders if holders in ("-", None) else len(holders_of(holders)))
    hashes = getattr(value, "hashes", None)
    if isinstance(hashes, dict):  # exact hashes' counts, the other entries' counts
        exact = sorted((key, count) for key, count in hashes.items() if type(key) is int)
        others = [count for key, count in hashes.items() if type(key) is not int]
        hashes = (exact, sorted(count if type(count) is int else -1 for count in others))
    fields.append(hashes)
    items = getattr(value, "items", None)
    if isinstance(items, tuple) and depth < 3:
        fields.append([describe(item, depth + 1) for item in items])
    return fields


def state(rules: Rules) -> Any:
    return (
        rules.opcodes,
        rules.work,
        rules.built,
        rules.memo_writes,
        rules.memo.count,
        rules.end,
        rules.fence,
        list(rules.marks),
        [describe(value) for value in rules.stack],
        [describe(value) for value in rules.memo.values],
    )


def outcome(data: bytes, scan: Any, allow: Any, limits: dict[str, Any], file: Any) -> Any:
    """What a restricted load of *data* from *file* (a class: a BytesIO, or one that can
    peek) gives with *scan* as the accelerator (None: none)."""
    with mock.patch.object(reader, "SCAN", scan):
        unpickler = streampickle.Unpickler(file(data), allow=allow, **limits)
        try:
            result: Any = ("object", pickle.dumps(unpickler.load(), 5))
        except Exception as exc:
            result = ("error", type(exc).__name__, str(exc))
    restriction = unpickler._restriction
    assert restriction is not None
    return result, state(restriction.reader._rules)


def assert_same(data: bytes, allow: Any, limits: dict[str, Any]) -> Any:
    """Both ways give the same, reading a file that cannot peek (frames are checked in bulk)
    and one that can (everything is); return what they give on the first."""
    results = []
    for file in (io.BytesIO, PeekableBytes):
        pure = outcome(data, None, allow, limits, file)
        assert outcome(data, ACCELERATED, allow, limits, file) == pure
        results.append(pure)
    return results[0]


#: Limits from lifted to tiny, so that the accelerator meets each limit it leaves to the rules.
LIMIT_CHOICES = st.one_of(
    st.just({}),
    st.just(LIMITS),
    # Not max_memo_size: a mutated LONG_BINPUT may name index 2**32, which the model (as the C
    # unpickler) then sizes its memo for: 32 GB.
    st.just(dict.fromkeys(["max_opcodes", "max_stack_depth"], None)),
    st.fixed_dictionaries(
        {},
        optional={
            "max_opcodes": st.integers(1, 300),
            "max_stack_depth": st.integers(1, 30),
            "max_memo_size": st.integers(0, 20),
            "max_payload_size": st.integers(0, 300),
            "max_nesting": st.integers(1, 12),
            "max_work": st.integers(0, 200),
            "max_expansion": st.integers(0, 200),
        },
    ),
)
POLICY = streampickle.ALLOW_BUILTINS | streampickle.ALLOW_COLLECTIONS


@st.composite
def builtin_pickles(draw: st.DrawFn) -> bytes:
    """A pickle of builtin data at any protocol: as written, in one frame, or mutated."""
    pickled = pickle.dumps(draw(BUILTIN_DATA), draw(st.integers(0, 5)))
    way = draw(st.sampled_from(["as written", "framed", "mutated, framed", "framed, mutated"]))
    if way == "framed":
        return framed(pickled)
    if way == "mutated, framed":
        return framed(mutate(draw, pickled))
    if way == "framed, mutated":
        return mutate(draw, framed(pickled))
    return pickled


@needs_accelerator
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pickled=builtin_pickles(), limits=LIMIT_CHOICES)
def test_builtin_data_is_checked_the_same_with_and_without_it(
    pickled: bytes, limits: dict[str, Any]
) -> None:
    assert_same(pickled, POLICY, limits)


@needs_accelerator
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(attack=hostile_pickles(), limits=LIMIT_CHOICES)
def test_attacks_are_checked_the_same_with_and_without_it(
    attack: bytes, limits: dict[str, Any]
) -> None:
    """The attacks of tests/hostile.py in one frame: deep chains, exponential, rehashed and
    colliding keys, shadowed methods."""
    assert_same(framed(attack), HOSTILE_POLICY, limits)


RECORDS = [{"id": i, "name": f"row {i}", "score": i * 0.5, "tags": ["a", "b"]} for i in range(3000)]


@needs_accelerator
@pytest.mark.parametrize(
    "obj",
    [
        RECORDS,
        list(range(-70000, 70000, 7)),
        [("x" * n, b"y" * n, n / 3, None, True, False, ()) for n in range(0, 400, 13)],
        {i: {j: [j] * 3 for j in range(5)} for i in range(300)},
        [[[[[[i]]]]] for i in range(200)],
        {frozenset([1, 2]), (1, (2, (3,))), 10**30, -(2**63), 2**61, 1.5},
        set(range(2**61, 2**61 + 3000)) | {i / 4 for i in range(3000)} | {5 + 2**61 - 1},
        [
            sign * (1 << shift) + step
            for shift in range(70)
            for sign in (1, -1)
            for step in (-1, 0, 1)
        ],
    ],
    ids=[
        "records",
        "ints",
        "scalars",
        "nested dicts",
        "deep lists",
        "keys the model hashes",
        "a set of numbers",
        "ints of every width",
    ],
)
@pytest.mark.parametrize("protocol", [0, 2, 3, 4, 5])
def test_pickles_are_checked_the_same_and_load_equal(obj: Any, protocol: int) -> None:
    """Pickles as ``pickle`` writes them, many frames long (or none): the same model, the
    right object."""
    pickled = pickle.dumps(obj, protocol)
    lifted = dict.fromkeys(["max_opcodes", "max_stack_depth", "max_memo_size"], None)
    result, _ = assert_same(pickled, POLICY, lifted)
    assert result == ("object", pickle.dumps(pickle.loads(pickled), 5))


@needs_accelerator
@pytest.mark.parametrize(
    ("limit", "value"),
    [("max_stack_depth", 6), ("max_nesting", 5), ("max_opcodes", 400), ("max_memo_size", 40)],
)
def test_each_limit_is_refused_the_same_inside_a_frame(limit: str, value: int) -> None:
    """Deep lists of records reach each limit in the middle of a frame of fast opcodes; the
    refusal names the same limit and position either way."""
    pickled = pickle.dumps([[[[RECORDS[:50]]]]], 5)
    result, _ = assert_same(pickled, POLICY, {limit: value})
    assert result[0] == "error"
    assert limit in result[2]


@needs_accelerator
def test_a_deep_chain_in_one_frame_is_refused_the_same() -> None:
    """A chain that deepens through holders (`Accounts.deepen`, which the accelerator calls)."""
    data = hostile.DEEP[sorted(hostile.DEEP)[0]](600)
    result, _ = assert_same(framed(data), HOSTILE_POLICY, {})
    assert result[0] == "error"
