"""Shared-key authentication of a byte stream's peer, before anything is unpickled.

An HMAC-SHA256 challenge/response in both directions, in the spirit of
``multiprocessing.connection``'s ``deliver_challenge``/``answer_challenge``; both ends call
`authenticate`, one with ``server_side=True`` and the other with ``server_side=False``:

1. each side sends HELLO with a fresh 32-byte nonce (``secrets``);
2. each side sends PROOF = HMAC(key, label + its role + the peer's nonce + its own nonce);
3. each side checks the peer's PROOF, made with the other role, with ``hmac.compare_digest``.

A proof answers one challenge: a recorded handshake replayed later meets a new nonce. The role
in the proof stops reflection across connections: without it, an attacker could hand a
server's own challenge to that server on a second connection and pass the proof the server
made there back on the first, since both ends hold the same key. A peer that echoes our own
nonce on the same connection is refused outright. Every message is
``MAGIC (6) | version (1) | kind (1) | length (2, big-endian) | body``; lengths above
`MAX_MESSAGE` are refused before the body is read. The handshake protects nothing after it:
see docs/security.md (use TLS for integrity and confidentiality).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import struct

import anyio
from anyio import EndOfStream
from anyio.abc import AnyByteStream, ByteStream

from ._exceptions import AuthenticationError

__all__ = ["DEFAULT_HANDSHAKE_TIMEOUT", "MAX_MESSAGE", "authenticate"]

MAGIC = b"SPAUTH"
VERSION = 1
HELLO = b"H"
PROOF = b"P"
NONCE_SIZE = 32
PROOF_SIZE = hashlib.sha256().digest_size
#: The largest handshake message body accepted (bigger claims are refused unread).
MAX_MESSAGE = 64
_HEADER = struct.Struct(">6sBcH")
_LABEL = b"streampickle-auth-v1 proof"
_SERVER, _CLIENT = b"S", b"C"  # the prover's role, bound into its proof
_NAMES = {HELLO: "HELLO", PROOF: "PROOF"}


#: Default ``timeout`` of `authenticate`, in seconds: four small messages take a few round
#: trips, so this only ever ends a handshake with a peer that is silent or trickles bytes.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0


async def authenticate(
    stream: AnyByteStream,
    key: bytes,
    *,
    server_side: bool,
    timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,  # noqa: ASYNC109 (a safe default)
) -> None:
    """Prove to the peer of *stream* that we hold *key*, and make it prove the same to us.

    Both ends call this on a fresh byte stream (anyio ``SocketStream``, ``TLSStream``, ...)
    before sending or receiving anything else, the accepting end with ``server_side=True``
    and the connecting end with ``server_side=False`` (as in ``TLSStream.wrap``); it returns
    once the peer has proven it knows *key*. It exchanges four small messages and reads
    exactly those bytes, so what the peer sends afterwards stays in the stream. Use a random
    key of 32 bytes (``secrets.token_bytes(32)``): a peer without the key receives a proof,
    which lets it test guesses of a weak key offline. The whole handshake must end within
    *timeout* seconds (default 10; ``None``: no limit), so a silent peer, or one that sends a
    byte a second, cannot hold a server task: past it, `AuthenticationError` names the
    ``timeout`` keyword.

    Raises `AuthenticationError` if the peer's proof is wrong (another key, a replayed or
    reflected handshake, both ends claiming the same role), if it sends anything but the
    next handshake message of our version (pickle data before authenticating, an oversized or
    malformed message), or if the stream ends during the handshake; the caller should then
    close the stream. ``TypeError`` or ``ValueError`` for a key that is not non-empty bytes,
    ``TypeError`` for a stream that is not an anyio ``ByteStream``. The stream's own errors
    propagate.
    """
    key = _check_key(key)
    if not isinstance(stream, ByteStream):  # an object stream may return more than asked
        raise TypeError(f"authenticate needs an anyio ByteStream, not {type(stream).__name__}")
    with anyio.move_on_after(math.inf if timeout is None else timeout) as scope:
        await _handshake(stream, key, server_side)
    if scope.cancelled_caught:
        raise AuthenticationError(
            f"the peer did not complete the handshake within {timeout} s (timeout={timeout}); "
            "it is silent or too slow"
        )


async def _handshake(stream: ByteStream, key: bytes, server_side: bool) -> None:
    nonce = secrets.token_bytes(NONCE_SIZE)
    await _send(stream, HELLO, nonce)
    peer_nonce = await _receive(stream, HELLO, NONCE_SIZE)
    if hmac.compare_digest(peer_nonce, nonce):
        raise AuthenticationError("the peer sent our own challenge back (a reflected handshake)")
    ours, theirs = (_SERVER, _CLIENT) if server_side else (_CLIENT, _SERVER)
    await _send(stream, PROOF, _proof(key, ours, verifier=peer_nonce, prover=nonce))
    proof = await _receive(stream, PROOF, PROOF_SIZE)
    if not hmac.compare_digest(proof, _proof(key, theirs, verifier=nonce, prover=peer_nonce)):
        raise AuthenticationError(
            "the peer's proof does not match our challenge: it does not hold the same key "
            f"(or replayed an old handshake, or also passed server_side={server_side})"
        )


def _check_key(key: object) -> bytes:
    if not isinstance(key, bytes | bytearray | memoryview):
        raise TypeError(f"the key must be bytes, not {type(key).__name__}")
    if not len(key):
        raise ValueError("the key is empty")
    return bytes(key)


def _proof(key: bytes, role: bytes, *, verifier: bytes, prover: bytes) -> bytes:
    """What *prover*, in *role*, sends to answer *verifier*'s challenge."""
    return hmac.new(key, _LABEL + role + verifier + prover, hashlib.sha256).digest()


async def _send(stream: ByteStream, kind: bytes, body: bytes) -> None:
    await stream.send(_HEADER.pack(MAGIC, VERSION, kind, len(body)) + body)


async def _receive(stream: ByteStream, kind: bytes, size: int) -> bytes:
    """The body of the next message, which must be of *kind* and *size* bytes."""
    header = await _receive_exactly(stream, _HEADER.size)
    magic, version, got, length = _HEADER.unpack(header)
    if magic != MAGIC:
        raise AuthenticationError(
            f"the peer sent {header!r} instead of a streampickle handshake message: it did not "
            "authenticate (is it sending pickle data, or not calling authenticate?)"
        )
    if version != VERSION:
        raise AuthenticationError(
            f"the peer speaks handshake version {version}; this side speaks {VERSION}"
        )
    if length > MAX_MESSAGE:
        raise AuthenticationError(
            f"handshake message of {length} bytes exceeds the maximum ({MAX_MESSAGE})"
        )
    if got != kind or length != size:
        name = _NAMES.get(got, repr(got))
        raise AuthenticationError(
            f"expected a {_NAMES[kind]} message of {size} bytes, got {name} of {length} bytes"
        )
    return await _receive_exactly(stream, length)


async def _receive_exactly(stream: ByteStream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        try:
            data += await stream.receive(size - len(data))
        except EndOfStream:
            raise AuthenticationError(
                f"the stream ended during the handshake, after {len(data)} of {size} bytes of "
                "a message"
            ) from None
    return data
