"""Authenticated peers: the shared-key handshake over real TCP and TLS, on asyncio and trio.

A peer that fails the handshake (wrong key, replayed or reflected handshake, oversized or
foreign messages, pickle data sent right away) gets `AuthenticationError` and nothing it sent
is unpickled.
"""

from __future__ import annotations

import contextlib
import inspect
import pickle
import ssl
import struct
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import ByteStream, SocketStream
from anyio.streams.tls import TLSAttribute, TLSStream

import streampickle
from netutil import HANG_GUARD, tcp_pair, while_sending
from streampickle import ALLOW_BUILTINS, AuthenticationError, PickleStream, authenticate

pytestmark = pytest.mark.anyio

KEY = b"k" * 32
OTHER_KEY = b"o" * 32


@dataclass(eq=False)
class Recording(ByteStream):
    """A byte stream that keeps a copy of everything it receives."""

    inner: ByteStream
    received: bytearray = field(default_factory=bytearray)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        data = await self.inner.receive(max_bytes)
        self.received += data
        return data

    async def send(self, item: bytes) -> None:
        await self.inner.send(item)

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def handshake_both(
    client_key: bytes, server_key: bytes, *, roles: tuple[bool, bool] = (False, True)
) -> list[BaseException | None]:
    """Run `authenticate` on both ends of a TCP connection (with the given *server_side*
    values); return each side's error."""
    outcomes: list[BaseException | None] = [None, None]

    async def side(index: int, stream: SocketStream, key: bytes) -> None:
        try:
            await authenticate(stream, key, server_side=roles[index])
        except AuthenticationError as exc:
            outcomes[index] = exc
            await stream.aclose()  # as a caller should: the peer then sees the end

    async with tcp_pair() as (client, server):
        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as group:
                group.start_soon(side, 0, client, client_key)
                group.start_soon(side, 1, server, server_key)
    return outcomes


async def test_same_key_authenticates_and_objects_flow(anyio_backend: Any) -> None:
    async with tcp_pair() as (client, server), anyio.create_task_group() as group:
        streams: dict[str, PickleStream] = {}

        async def open_server() -> None:
            streams["server"] = await PickleStream.authenticated(
                server, key=KEY, server_side=True, allow=ALLOW_BUILTINS
            )

        with anyio.fail_after(HANG_GUARD):
            group.start_soon(open_server)
            left = await PickleStream.authenticated(client, key=KEY, server_side=False)
        await left.send({"a": {1, 2}})
        assert await streams["server"].receive() == {"a": {1, 2}}
        await streams["server"].send(b"reply")
        assert await left.receive() == b"reply"


async def test_wrong_key_fails_on_both_sides(anyio_backend: Any) -> None:
    client_error, server_error = await handshake_both(KEY, OTHER_KEY)
    assert isinstance(client_error, AuthenticationError)
    assert isinstance(server_error, AuthenticationError)
    assert "does not hold the same key" in str(server_error)


async def test_same_key_succeeds_on_both_sides(anyio_backend: Any) -> None:
    assert await handshake_both(KEY, KEY) == [None, None]


def marker_pickle(marker: Path) -> bytes:
    """A pickle that creates *marker* when loaded unrestricted."""
    return b"cposix\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."


async def test_pickle_data_before_authenticating_is_not_unpickled(
    tmp_path: Path, anyio_backend: Any
) -> None:
    marker = tmp_path / "pwned"

    async def serve(stream: SocketStream) -> Any:
        # allow= omitted on purpose: nothing may be unpickled before the handshake
        return await PickleStream.authenticated(stream, key=KEY, server_side=True)

    with pytest.raises(AuthenticationError, match="instead of a streampickle handshake"):
        await while_sending(marker_pickle(marker), serve)
    assert not marker.exists()


async def serve(stream: ByteStream) -> None:
    """The accepting end of a handshake."""
    await authenticate(stream, KEY, server_side=True)


async def test_replayed_handshake_is_refused(anyio_backend: Any) -> None:
    """Record what an honest client sends to a server, then replay it to a new server."""
    transcript = bytearray()
    async with tcp_pair() as (client, server):
        recording = Recording(server)
        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as group:
                group.start_soon(partial(authenticate, client, KEY, server_side=False))
                await authenticate(recording, KEY, server_side=True)
        transcript += recording.received
    assert len(transcript) == 2 * 10 + 32 + 32  # two headers, a nonce and a proof
    with pytest.raises(AuthenticationError, match="does not match"):
        await while_sending(bytes(transcript), serve)


async def test_reflected_handshake_is_refused(anyio_backend: Any) -> None:
    """A peer without the key echoes our messages back: our own proof would match."""
    async with tcp_pair() as (client, server), anyio.create_task_group() as group:

        async def echo() -> None:
            async for data in server:
                await server.send(data)

        group.start_soon(echo)
        with anyio.fail_after(HANG_GUARD), pytest.raises(AuthenticationError, match="reflected"):
            await authenticate(client, KEY, server_side=False)
        group.cancel_scope.cancel()


def header(kind: bytes, length: int, *, magic: bytes = b"SPAUTH", version: int = 1) -> bytes:
    return struct.pack(">6sBcH", magic, version, kind, length)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        # Only the header is sent: reading a body would hang (the hang guard would fire).
        (header(b"H", 65535), "65535 bytes exceeds the maximum"),
        (header(b"H", 32, version=2) + b"n" * 32, "version 2"),
        (header(b"P", 32) + b"p" * 32, "expected a HELLO message of 32 bytes, got PROOF"),
        (header(b"H", 16) + b"n" * 16, "HELLO message of 32 bytes, got HELLO of 16"),
        (header(b"H", 32)[:7], "ended during the handshake"),
    ],
    ids=["oversized", "version", "out-of-order", "short-nonce", "truncated"],
)
async def test_bad_handshake_messages(data: bytes, message: str, anyio_backend: Any) -> None:
    with pytest.raises(AuthenticationError, match=message):
        await while_sending(data, serve)


async def test_oversized_proof_is_refused_after_a_good_hello(anyio_backend: Any) -> None:
    data = header(b"H", 32) + b"n" * 32 + header(b"P", 60000)
    with pytest.raises(AuthenticationError, match="60000 bytes exceeds"):
        await while_sending(data, serve)


async def test_failed_authentication_closes_the_transport(anyio_backend: Any) -> None:
    async with tcp_pair() as (client, server):
        await client.send(pickle.dumps("no handshake"))
        with pytest.raises(AuthenticationError):
            await PickleStream.authenticated(server, key=KEY, server_side=True)
        with anyio.fail_after(HANG_GUARD):
            hello = await client.receive()  # the server's HELLO went out before it read ours
            assert hello.startswith(b"SPAUTH")
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await client.receive()  # then it hung up


async def test_a_silent_or_trickling_peer_cannot_hold_the_handshake(anyio_backend: Any) -> None:
    async with tcp_pair() as (client, server):
        # Silent: the peer connects and sends nothing.
        with anyio.fail_after(HANG_GUARD), pytest.raises(AuthenticationError) as info:
            await authenticate(server, KEY, server_side=True, timeout=0.3)
        assert "within 0.3 s (timeout=0.3)" in str(info.value)

    async def trickle(stream: SocketStream) -> None:  # a valid HELLO, a byte at a time
        hello = b"SPAUTH\x01H\x00\x20" + b"n" * 32
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            for byte in hello:
                await stream.send(bytes([byte]))
                await anyio.sleep(0.05)

    async with tcp_pair() as (client, server), anyio.create_task_group() as group:
        group.start_soon(trickle, client)
        with anyio.fail_after(HANG_GUARD), pytest.raises(AuthenticationError):
            await PickleStream.authenticated(server, key=KEY, server_side=True, timeout=0.5)
        group.cancel_scope.cancel()


def test_the_handshake_has_a_default_timeout() -> None:
    for function in (authenticate, PickleStream.authenticated):
        default = inspect.signature(function).parameters["timeout"].default
        assert default == streampickle.DEFAULT_HANDSHAKE_TIMEOUT == 10


async def test_keys_must_be_bytes(anyio_backend: Any) -> None:
    async with tcp_pair() as (client, _):
        with pytest.raises(TypeError, match="bytes"):
            await authenticate(client, "secret", server_side=False)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="empty"):
            await authenticate(client, b"", server_side=False)


async def test_authenticated_stream_over_tls(
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
    anyio_backend: Any,
) -> None:
    server_context, client_context = tls_contexts

    async def exchange(server_key: bytes) -> tuple[Any, Any]:
        """(what the client's authenticated() gave or raised, what the server received or
        raised) over a TLS connection."""
        outcomes: list[Any] = [None, None]

        async def serve(raw: SocketStream) -> None:
            tls = await TLSStream.wrap(raw, server_side=True, ssl_context=server_context)
            try:
                stream = await PickleStream.authenticated(
                    tls, key=server_key, server_side=True, allow=[]
                )
                outcomes[1] = await stream.receive()
            except AuthenticationError as exc:
                outcomes[1] = exc

        async with tcp_pair() as (client_raw, server_raw):
            with anyio.fail_after(HANG_GUARD):
                async with anyio.create_task_group() as group:
                    group.start_soon(serve, server_raw)
                    tls = await TLSStream.wrap(
                        client_raw, hostname="localhost", ssl_context=client_context
                    )
                    try:
                        stream = await PickleStream.authenticated(tls, key=KEY, server_side=False)
                    except AuthenticationError as exc:
                        outcomes[0] = exc
                    else:
                        await stream.send([1, b"two"])
                        outcomes[0] = stream.extra(TLSAttribute.tls_version)
        return outcomes[0], outcomes[1]

    version, received = await exchange(KEY)
    assert version.startswith("TLS") and received == [1, b"two"]
    refused_client, refused_server = await exchange(OTHER_KEY)
    assert isinstance(refused_client, AuthenticationError)
    assert isinstance(refused_server, AuthenticationError)


async def test_authenticate_a_pickle_streams_transport(anyio_backend: Any) -> None:
    """The documented route for streams made by from_asyncio/from_trio: authenticate the
    transport the PickleStream wraps, before its first send or receive."""
    async with tcp_pair() as (client, server):
        left, right = PickleStream(client), PickleStream(server, allow=[])
        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as group:
                group.start_soon(
                    partial(authenticate, right.transport_stream, KEY, server_side=True)
                )
                await authenticate(left.transport_stream, KEY, server_side=False)
            await left.send([1, "two"])
            assert await right.receive() == [1, "two"]


async def test_both_ends_claiming_the_same_role_fail(anyio_backend: Any) -> None:
    errors = await handshake_both(KEY, KEY, roles=(True, True))
    assert all(isinstance(error, AuthenticationError) for error in errors)
    assert any("also passed server_side=True" in str(error) for error in errors)


class Relay:
    """An attacker without the key between a server's two connections: it plays the client
    on both, handing each connection what the server said on the other."""

    def __init__(self, first: SocketStream, second: SocketStream) -> None:
        self.first, self.second = first, second

    async def read_message(self, stream: SocketStream) -> bytes:
        data = b""
        while len(data) < 10 + 32:
            data += await stream.receive(10 + 32 - len(data))
        return data

    async def attack(self) -> None:
        challenge = await self.read_message(self.first)  # the server's HELLO, nonce n1
        await self.second.send(challenge)  # offer n1 as our nonce on the second connection
        hello_2 = await self.read_message(self.second)  # HELLO n2
        proof_2 = await self.read_message(self.second)  # the server's proof for (n1, n2)
        await self.first.send(hello_2)  # n2 as our nonce on the first connection
        await self.read_message(self.first)  # the server's proof there
        await self.first.send(proof_2)  # the server's own proof for (n1, n2), replayed


async def test_proof_relayed_from_a_second_connection_is_refused(anyio_backend: Any) -> None:
    """Without the role in the proof, a symmetric handshake passes this relay."""
    outcomes: list[BaseException | None] = []

    async def server_side(stream: SocketStream) -> None:
        try:
            await authenticate(stream, KEY, server_side=True)
            outcomes.append(None)
        except AuthenticationError as exc:
            outcomes.append(exc)

    async with tcp_pair() as (attacker_1, server_1), tcp_pair() as (attacker_2, server_2):
        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as group:
                group.start_soon(server_side, server_1)
                group.start_soon(server_side, server_2)
                with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                    await Relay(attacker_1, attacker_2).attack()
                await attacker_2.aclose()  # the second handshake never completes
    assert len(outcomes) == 2
    assert all(isinstance(outcome, AuthenticationError) for outcome in outcomes)
    assert any("does not match" in str(outcome) for outcome in outcomes)
