"""Every error type streampickle raises beyond those of ``pickle``."""

from __future__ import annotations

import pickle

__all__ = ["AuthenticationError", "ForbiddenGlobal", "LimitExceeded", "PolicyViolation"]


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
        self,
        what: str,
        size: int,
        limit: str,
        maximum: int,
        *,
        unit: str = "bytes",
        at_least: bool = False,
    ) -> None:
        amount = f"{size} {unit}" if unit else str(size)
        of = "of at least" if at_least else "of"
        super().__init__(
            f"{what} {of} {amount} exceeds {limit} ({maximum}); "
            f"pass a larger {limit}= (None: no limit) to accept it"
        )
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


class PolicyViolation(pickle.UnpicklingError):
    """A restricted load refused the pickle: an opcode or framing the policy does not allow.

    ``position`` is the byte offset of the offending opcode in the stream, when known.
    """

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.position = position


class ForbiddenGlobal(PolicyViolation):
    """The pickle references a global that the allowlist does not permit.

    Raised before the global's module is imported (except when the pair is listed but resolves
    to a module object or to a known-dangerous object under another name, which can only be
    found out by resolving it). ``module`` and ``name`` are the names as judged, that is after
    the ``fix_imports`` mapping of Python 2 names.
    """

    def __init__(self, module: str, name: str, reason: str = "is not in the allowlist") -> None:
        super().__init__(f"global {module}.{name} {reason}")
        self.module = module
        self.name = name
