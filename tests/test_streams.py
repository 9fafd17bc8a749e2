"""The stream conformance kit (tests/streams.py) on every stream kind of its registry.

Each kind runs on the backends its entry names (the others are not generated); a kit item a
kind fails because of a known limitation is a strict xfail, with the entry's reason.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest

import streams
from leaks import GreenletLedger
from streams import BYTE_KINDS, OBJECT_KINDS, ByteKind, Env, ObjectKind

pytestmark = pytest.mark.anyio

PROTOCOLS = list(streams.PROTOCOLS)
TRICKLE_PROTOCOLS = [0, 2, 5]  # text lines, read-ahead (on readers that can unread), frames
TRUNCATE_PROTOCOLS = [0, 2, 5]


def kinds(registry: list[ByteKind] | list[ObjectKind], item: str) -> list[Any]:
    """The kinds as parameters for kit *item*: each on its backends, xfail where known."""
    assert item in (streams.BYTE_ITEMS if registry is BYTE_KINDS else streams.OBJECT_ITEMS)
    params = []
    for kind in registry:
        marks: list[Any] = [pytest.mark.backends(*kind.backends)]
        if (known := kind.known.get(item)) is not None:
            marks.append(pytest.mark.xfail(strict=True, reason=known.reason, raises=known.raises))
        params.append(pytest.param(kind, id=kind.name, marks=marks))
    return params


def test_registry() -> None:
    """Kind names are unique and a known limitation names a kit item (a typo would silently
    run the item as if nothing were known)."""
    for registry, items in ((BYTE_KINDS, streams.BYTE_ITEMS), (OBJECT_KINDS, streams.OBJECT_ITEMS)):
        names = [kind.name for kind in registry]
        assert len(set(names)) == len(names)
        for kind in registry:
            assert set(kind.known) <= set(items), kind.name
            assert kind.backends and set(kind.backends) <= {"asyncio", "uvloop", "trio"}


@pytest.fixture
def env(tmp_path: Path, tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> Env:
    return Env(tmp_path, tls_contexts)


# Byte kinds: adump writes them, aload and aiter_load read them.


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("kind", kinds(BYTE_KINDS, "round_trip"))
async def test_round_trip(kind: ByteKind, protocol: int, env: Env) -> None:
    await streams.check_round_trip(kind, env, protocol)


@pytest.mark.parametrize("kind", kinds(BYTE_KINDS, "back_to_back"))
async def test_back_to_back(kind: ByteKind, env: Env) -> None:
    await streams.check_back_to_back(kind, env)


@pytest.mark.parametrize("protocol", TRICKLE_PROTOCOLS)
@pytest.mark.parametrize("kind", kinds(BYTE_KINDS, "trickle"))
async def test_trickle_one_byte_at_a_time(kind: ByteKind, protocol: int, env: Env) -> None:
    await streams.check_trickle(kind, env, protocol)


@pytest.mark.parametrize("kind", kinds(BYTE_KINDS, "trickle_pieces"))
async def test_trickle_in_random_pieces(kind: ByteKind, env: Env) -> None:
    await streams.check_trickle_pieces(kind, env)


@pytest.mark.parametrize("protocol", TRUNCATE_PROTOCOLS)
@pytest.mark.parametrize("kind", kinds(BYTE_KINDS, "truncation"))
async def test_truncation_at_every_byte(kind: ByteKind, protocol: int, env: Env) -> None:
    await streams.check_truncation(kind, env, protocol)


@pytest.mark.parametrize("kind", kinds(BYTE_KINDS, "cancel_aload"))
async def test_cancel_aload_half_way(
    kind: ByteKind, env: Env, no_leaked_greenlets: GreenletLedger
) -> None:
    await streams.check_cancel_aload(kind, env, no_leaked_greenlets)


@pytest.mark.parametrize("kind", kinds(BYTE_KINDS, "cancel_adump"))
async def test_cancel_adump_half_way(
    kind: ByteKind, env: Env, no_leaked_greenlets: GreenletLedger
) -> None:
    await streams.check_cancel_adump(kind, env, no_leaked_greenlets)


@pytest.mark.parametrize("kind", kinds(BYTE_KINDS, "leftovers"))
async def test_leftovers_are_there_for_the_next_aload(kind: ByteKind, env: Env) -> None:
    await streams.check_leftovers(kind, env)


# Object kinds: PickleStream over a transport.


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("kind", kinds(OBJECT_KINDS, "round_trip"))
async def test_object_round_trip(kind: ObjectKind, protocol: int, env: Env) -> None:
    await streams.check_object_round_trip(kind, env, protocol)


@pytest.mark.parametrize("kind", kinds(OBJECT_KINDS, "back_to_back"))
async def test_object_back_to_back(kind: ObjectKind, env: Env) -> None:
    await streams.check_object_back_to_back(kind, env)


@pytest.mark.parametrize("protocol", TRICKLE_PROTOCOLS)
@pytest.mark.parametrize("kind", kinds(OBJECT_KINDS, "trickle"))
async def test_object_trickle_one_byte_at_a_time(kind: ObjectKind, protocol: int, env: Env) -> None:
    await streams.check_object_trickle(kind, env, protocol)


@pytest.mark.parametrize("kind", kinds(OBJECT_KINDS, "trickle_pieces"))
async def test_object_trickle_in_random_pieces(kind: ObjectKind, env: Env) -> None:
    await streams.check_object_trickle_pieces(kind, env)


@pytest.mark.parametrize("protocol", TRUNCATE_PROTOCOLS)
@pytest.mark.parametrize("kind", kinds(OBJECT_KINDS, "truncation"))
async def test_object_truncation_at_every_byte(kind: ObjectKind, protocol: int, env: Env) -> None:
    await streams.check_object_truncation(kind, env, protocol)


@pytest.mark.parametrize("kind", kinds(OBJECT_KINDS, "cancel_receive"))
async def test_object_cancel_receive_half_way(
    kind: ObjectKind, env: Env, no_leaked_greenlets: GreenletLedger
) -> None:
    await streams.check_object_cancel_receive(kind, env, no_leaked_greenlets)


@pytest.mark.parametrize("kind", kinds(OBJECT_KINDS, "cancel_send"))
async def test_object_cancel_send_half_way(
    kind: ObjectKind, env: Env, no_leaked_greenlets: GreenletLedger
) -> None:
    await streams.check_object_cancel_send(kind, env, no_leaked_greenlets)


@pytest.mark.parametrize("kind", kinds(OBJECT_KINDS, "leftovers"))
async def test_object_leftovers(kind: ObjectKind, env: Env) -> None:
    await streams.check_object_leftovers(kind, env)


@pytest.mark.parametrize("kind", kinds(OBJECT_KINDS, "handover"))
async def test_object_handover(kind: ObjectKind, env: Env) -> None:
    await streams.check_object_handover(kind, env)
