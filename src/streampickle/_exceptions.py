"""Errors raised by streampickle's async readers, beyond those of ``pickle``."""

from __future__ import annotations

import pickle

__all__ = ["AuthenticationError", "LimitExceeded"]


class LimitExceeded(pickle.UnpicklingError):
    """A pickle being read claimed or needed more than a read limit allows.

    Raised *before* the bytes are read, a buffer of the claimed size is allocated or the
    unpickler acts on the opcode. ``limit`` is the keyword argument's name (a field of
    `streampickle.Limits`: ``"max_frame_size"``, ``"max_object_size"``, ``"max_opcodes"``...),
    ``size`` the size, count, index or depth the pickle claimed or reached and ``maximum`` the
    limit's value. A subclass of ``pickle.UnpicklingError``, so code that handles bad pickles
    handles it too.
    """

    def __init__(
        self, what: str, size: int, limit: str, maximum: int, *, unit: str = "bytes"
    ) -> None:
        amount = f"{size} {unit}" if unit else str(size)
        super().__init__(f"{what} of {amount} exceeds {limit} ({maximum})")
        self.limit = limit
        self.size = size
        self.maximum = maximum


class AuthenticationError(Exception):
    """The peer failed the shared-key handshake (`streampickle.authenticate`).

    Raised when the peer proves no knowledge of the key (a wrong key, a replayed or reflected
    handshake), sends something that is not a handshake message of our version (pickle data
    before authenticating, an oversized or malformed message), or ends the stream during the
    handshake. Nothing the peer sent has been unpickled.
    """
