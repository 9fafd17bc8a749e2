"""Byte identity with ``pickle.dumps`` (the oracle) and round trips, for every protocol, on
both engines (the C pickler, and the python engine, ``engine="python"``)."""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streampickle
from corpus import ZeroCopy, corpus

PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)
CORPUS = corpus()


def outcome(dumps: Any, *args: Any, **kwargs: Any) -> tuple[str, Any]:
    """The bytes *dumps* returns, or the type and message of what it raises."""
    try:
        return ("ok", dumps(*args, **kwargs))
    except Exception as exc:
        return ("error", (type(exc), str(exc)))


def joined(obj: Any, protocol: int, **kwargs: Any) -> bytes:
    return b"".join(streampickle.iter_dumps(obj, protocol, **kwargs))


def via_file(obj: Any, protocol: int, **kwargs: Any) -> bytes:
    f = io.BytesIO()
    streampickle.dump(obj, f, protocol, **kwargs)
    return f.getvalue()


def python_joined(obj: Any, protocol: int, **kwargs: Any) -> bytes:
    return b"".join(streampickle.iter_dumps(obj, protocol, engine="python", **kwargs))


def python_pickler(obj: Any, protocol: int, **kwargs: Any) -> bytes:
    f = io.BytesIO()
    streampickle.Pickler(f, protocol, engine="python", **kwargs).dump(obj)
    return f.getvalue()


def python_dumps(obj: Any, protocol: int, **kwargs: Any) -> bytes:
    return streampickle.dumps(obj, protocol, engine="python", **kwargs)


def python_small_frames(obj: Any, protocol: int, **kwargs: Any) -> bytes:
    """Chunks of 10 bytes at protocols 0-3 (frames change the bytes at 4-5: not compared)."""
    if protocol >= 4:
        return python_joined(obj, protocol, **kwargs)
    chunks = streampickle.iter_dumps(obj, protocol, engine="python", frame_size=10, **kwargs)
    return b"".join(chunks)


DUMPS: list[Callable[..., bytes]] = [
    joined,
    via_file,
    streampickle.dumps,
    python_joined,
    python_pickler,
    python_dumps,
]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", sorted(CORPUS))
@pytest.mark.parametrize("dumps", [*DUMPS, python_small_frames])
def test_bytes_identical_to_pickle(dumps: Any, name: str, protocol: int) -> None:
    obj = CORPUS[name]
    expected = outcome(pickle.dumps, obj, protocol)
    assert outcome(dumps, obj, protocol) == expected


# Recursive structures cannot be compared with ==; PickleBuffer has no __eq__.
INCOMPARABLE = {"recursive_list", "recursive_dict", "picklebuffer"}


ROUND_TRIPS = [
    (name, protocol)
    for name in sorted(set(CORPUS) - INCOMPARABLE)
    for protocol in PROTOCOLS
    if outcome(pickle.dumps, CORPUS[name], protocol)[0] == "ok"
]


@pytest.mark.parametrize(("name", "protocol"), ROUND_TRIPS)
def test_round_trip_through_incremental_loader(name: str, protocol: int) -> None:
    data = pickle.dumps(CORPUS[name], protocol)
    for reader in (io.BytesIO(data), io.BufferedReader(io.BytesIO(data))):
        assert streampickle.drive_load(streampickle.iter_loads(), reader) == CORPUS[name]
        assert reader.read() == b""


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_fix_imports_false_identical(protocol: int) -> None:
    obj = [CORPUS["stdlib"], CORPUS["containers"], CORPUS["globals"]]
    expected = pickle.dumps(obj, protocol, fix_imports=False)
    for dumps in DUMPS:
        assert dumps(obj, protocol, fix_imports=False) == expected, dumps.__name__


@pytest.mark.parametrize("dumps", DUMPS)
def test_buffer_callback_out_of_band_identical(dumps: Any) -> None:
    obj = [ZeroCopy(b"a" * 100_000), ZeroCopy(b"small"), pickle.PickleBuffer(b"ro" * 50_000)]
    ours: list[pickle.PickleBuffer] = []
    theirs: list[pickle.PickleBuffer] = []
    data = dumps(obj, 5, buffer_callback=ours.append)
    assert data == pickle.dumps(obj, 5, buffer_callback=theirs.append)
    assert [bytes(b) for b in ours] == [bytes(b) for b in theirs]
    assert streampickle.loads(data, buffers=ours)[0] == obj[0]


@pytest.mark.parametrize("dumps", DUMPS)
def test_buffer_callback_returning_true_keeps_in_band(dumps: Any) -> None:
    obj = [ZeroCopy(b"a" * 100_000)]
    data = dumps(obj, 5, buffer_callback=lambda buf: True)
    assert data == pickle.dumps(obj, 5, buffer_callback=lambda buf: True)
    assert streampickle.loads(data) == obj


# Hypothesis: arbitrary nested builtin data, identical bytes and equal round trips.
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
    | st.complex_numbers(allow_nan=False)
)
data = st.recursive(
    scalars,
    lambda children: (
        st.lists(children)
        | st.tuples(children, children)
        | st.dictionaries(st.text() | st.integers(), children)
        | st.frozensets(st.integers() | st.text())
        | st.builds(bytearray, st.binary())
    ),
    max_leaves=40,
)


@settings(max_examples=150, deadline=None)
@given(obj=data, protocol=st.sampled_from(list(PROTOCOLS)))
def test_hypothesis_identity_and_round_trip(obj: Any, protocol: int) -> None:
    expected = pickle.dumps(obj, protocol)
    assert joined(obj, protocol) == expected
    assert python_joined(obj, protocol) == expected
    reader = io.BufferedReader(io.BytesIO(expected + b"trailing"))
    assert streampickle.drive_load(streampickle.iter_loads(), reader) == obj
    assert reader.read() == b"trailing"
