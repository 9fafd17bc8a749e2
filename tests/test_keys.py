"""The model's hashes of keys (`streampickle._policy.keys`) against CPython's own."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from streampickle._policy.keys import BIG, OPAQUE, Frozen, Long, Tuple, key_of
from streampickle._policy.nodes import Sized

numbers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.integers(-1000, 1000),
    st.floats(allow_nan=False),
    st.sampled_from([True, False, None, -1, -2, 0.0, -0.0, 1.0, 2**61 - 1, 2**63]),
)
keys = st.recursive(
    numbers,
    lambda inner: st.one_of(
        st.lists(inner, max_size=12).map(tuple), st.frozensets(inner, max_size=6)
    ),
    max_leaves=40,
)


def model(value: Any, repeat: bool = False) -> Any:
    """The model of *value*, as the vetting pass builds it (FROZENSET's items may repeat
    equal members: *repeat* gives each frozenset its members twice)."""
    if isinstance(value, tuple):
        return Tuple([model(item, repeat) for item in value])
    if isinstance(value, frozenset):
        members = [model(item, repeat) for item in value]
        return Frozen.of(members + [model(item, repeat) for item in value] if repeat else members)
    if type(value) is int and not -BIG < value < BIG:
        return Long(value)
    return value


@settings(max_examples=400, deadline=None)
@given(value=keys, repeat=st.booleans())
def test_hashes_are_cpythons(value: Any, repeat: bool) -> None:
    modelled = model(value, repeat)
    if isinstance(value, (tuple, frozenset)):
        assert modelled.hash_value() == hash(value)
        assert modelled.digest() == model(value).digest()  # equal values, one digest
    elif isinstance(modelled, Long):
        assert modelled.hashed == hash(value)


def test_partial_keys_share_a_signature_only_with_equal_known_parts() -> None:
    text = Sized(4)  # a str the model only sizes
    five, colliding, other = Tuple([text, 5]), Tuple([text, 5 + (2**61 - 1)]), Tuple([text, 6])
    assert key_of(five) is five and key_of(colliding) is colliding
    assert five.hash_value() == colliding.hash_value() != other.hash_value()
    assert five.digest() != colliding.digest()
    assert five.digest() == Tuple([Sized(9), 5.0]).digest()  # equal numbers, equal parts
    assert key_of(Tuple([text, Sized(2)])) is None  # only strings: they cannot collide
    assert key_of(Frozen(3)) is OPAQUE and key_of(Tuple.copied(3)) is OPAQUE
    assert key_of(Tuple([Tuple.copied(2), 1])) is OPAQUE
    assert key_of(7) is None and key_of(2**62) == hash(2**62) and key_of(float("nan")) is None


def test_deep_chains_are_digested_without_recursion() -> None:
    chain: Any = Tuple([Sized(4), 5])
    twin: Any = Tuple([Sized(4), 5.0])
    for _ in range(100_000):  # far past the recursion limit (max_nesting lifted)
        chain, twin = Tuple([chain, 1]), Tuple([twin, True])
    assert key_of(chain) is chain and chain.hash_value() == twin.hash_value()
    assert chain.digest() == twin.digest()
    members = Frozen.of([chain, twin, 3])  # equal members: one of them counts
    assert members.hash_value() == Frozen.of([twin, 3]).hash_value()
