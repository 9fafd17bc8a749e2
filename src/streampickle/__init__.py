"""streampickle: stream pickles through async byte streams, and a drop-in for ``pickle``.

``import streampickle as pickle`` works: `dump`, `dumps`, `load`, `loads`, `Pickler`,
`Unpickler`, the exceptions and constants are those of the standard library (same signatures,
bytes and errors). On top of them: `iter_dumps` (the incremental pickler, a generator of
protocol-4/5 frames) and `iter_loads` (the sans-IO incremental loader).
"""

from pickle import (
    DEFAULT_PROTOCOL,
    HIGHEST_PROTOCOL,
    PickleBuffer,
    PickleError,
    PicklingError,
    UnpicklingError,
)

from ._adapters import AsyncReader, AsyncWriter
from ._async import adump, aiter_dumps, aiter_load, aload
from ._auth import DEFAULT_HANDSHAKE_TIMEOUT, authenticate
from ._exceptions import AuthenticationError, ForbiddenGlobal, LimitExceeded, PolicyViolation
from ._globals import required_globals
from ._limits import Limits
from ._pickler import Pickler, dump, dumps, iter_dumps
from ._policy import ALLOW_BUILTINS, ALLOW_COLLECTIONS, ALLOW_DATETIME, ALLOW_DECIMAL, Allowlist
from ._sansio import Chunk, Peek, Read, ReadInto, ReadLine, Request
from ._stream import PickleStream
from ._unpickler import Unpickler, drive_load, iter_loads, load, loads

__all__ = [
    "ALLOW_BUILTINS",
    "ALLOW_COLLECTIONS",
    "ALLOW_DATETIME",
    "ALLOW_DECIMAL",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_PROTOCOL",
    "HIGHEST_PROTOCOL",
    "Allowlist",
    "AsyncReader",
    "AsyncWriter",
    "AuthenticationError",
    "Chunk",
    "ForbiddenGlobal",
    "LimitExceeded",
    "Limits",
    "Peek",
    "PickleBuffer",
    "PickleError",
    "PickleStream",
    "Pickler",
    "PicklingError",
    "PolicyViolation",
    "Read",
    "ReadInto",
    "ReadLine",
    "Request",
    "Unpickler",
    "UnpicklingError",
    "adump",
    "aiter_dumps",
    "aiter_load",
    "aload",
    "authenticate",
    "drive_load",
    "dump",
    "dumps",
    "iter_dumps",
    "iter_loads",
    "load",
    "loads",
    "required_globals",
]
