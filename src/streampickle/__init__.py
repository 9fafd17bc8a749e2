"""streampickle: stream pickles through async byte streams, and a drop-in for ``pickle``.

Async API (asyncio, uvloop and trio, through anyio):

* ``await adump(obj, writer, protocol=None)`` pickles *obj* into a stream frame by frame, with
  backpressure, the event loop kept responsive and memory bounded by a frame, not the object;
  the bytes are exactly ``pickle.dumps(obj, protocol)``. ``aiter_dumps(obj)`` gives the same
  bytes as an async iterator of chunks (HTTP bodies: Starlette, httpx, aiohttp).
* ``obj = await aload(reader)`` reads one pickle as it arrives; ``async for obj in
  aiter_load(reader)`` reads pickles back to back until the end of the stream. Readers and
  writers: asyncio streams, anyio and trio streams, async files, aiohttp/httpx/Starlette bodies,
  websockets (see `AsyncReader`, `AsyncWriter`).
* `PickleStream` sends and receives many objects over one connection (an anyio object
  stream), protocol 5 by default.

Untrusted peers: pass ``allow=`` (an `Allowlist`, e.g. `ALLOW_BUILTINS`, or pairs that
`required_globals` lists) to any load: only those globals resolve, the opcodes are vetted and
the `Limits` apply; `authenticate` / `PickleStream.authenticated` make the peer prove a key.

Sync API, as ``pickle``: ``import streampickle as pickle`` works: `dump`, `dumps`, `load`,
`loads`, `Pickler`, `Unpickler`, the exceptions and constants are the standard library's (same
signatures, bytes and errors). And `iter_dumps` (a generator of protocol-4/5 frames) and
`iter_loads` (a sans-IO loader). The command line: ``python -m streampickle --help``.

Loads of large object graphs pause the cyclic garbage collector while the unpickler builds
(never across an await), so it does not walk the growing graph again and again;
`set_gc_pause` turns that off.
"""

from importlib import metadata as _metadata
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
from ._collector import set_gc_pause
from ._exceptions import AuthenticationError, ForbiddenGlobal, LimitExceeded, PolicyViolation
from ._globals import required_globals
from ._limits import Limits
from ._pickler import Pickler, dump, dumps, iter_dumps
from ._policy import (
    ALLOW_BUILTINS,
    ALLOW_COLLECTIONS,
    ALLOW_DATETIME,
    ALLOW_DECIMAL,
    ALLOW_NUMPY,
    Allowlist,
)
from ._sansio import Chunk, Peek, Read, ReadInto, ReadLine, Request
from ._stream import PickleStream
from ._unpickler import Unpickler, drive_load, iter_loads, load, loads

try:
    #: The installed distribution's version.
    __version__ = _metadata.version("streampickle")
except _metadata.PackageNotFoundError:  # imported from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "ALLOW_BUILTINS",
    "ALLOW_COLLECTIONS",
    "ALLOW_DATETIME",
    "ALLOW_DECIMAL",
    "ALLOW_NUMPY",
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
    "set_gc_pause",
]
