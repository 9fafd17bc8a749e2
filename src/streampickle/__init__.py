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

from ._engine import Chunk, Peek, Read, ReadInto, ReadLine, Request
from ._pickler import (
    Pickler,
    Unpickler,
    drive_load,
    dump,
    dumps,
    iter_dumps,
    iter_loads,
    load,
    loads,
)

__all__ = [
    "DEFAULT_PROTOCOL",
    "HIGHEST_PROTOCOL",
    "Chunk",
    "Peek",
    "PickleBuffer",
    "PickleError",
    "Pickler",
    "PicklingError",
    "Read",
    "ReadInto",
    "ReadLine",
    "Request",
    "Unpickler",
    "UnpicklingError",
    "drive_load",
    "dump",
    "dumps",
    "iter_dumps",
    "iter_loads",
    "load",
    "loads",
]
