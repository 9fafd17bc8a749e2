"""Restricted loading: allowlists of globals, a vetting reader, and the model behind it.

A pickle can name any importable callable and call it, so a receiver that unpickles untrusted
bytes runs whatever the sender wrote. Under an `Allowlist`, the unpickler only resolves the
exact ``(module, qualified name)`` pairs listed, and `CheckedReader` vets the opcode stream
before the C unpickler sees it: it refuses the opcodes that reach objects without going through
``find_class`` (EXT1/EXT2/EXT4) and frames that an opcode straddles (which CPython's C unpickler
reads through instead of refusing), and it sizes the calls of the callables it models.

The modules, bottom up: `allowlist` (names and presets), `model` (the value model and the
sized-callables table), `accounts` (how deep objects nest, what hashing costs, what may
still be changed), `rules` (the stack rules, opcode by opcode), `reader` (the vetting
reader and the restriction a restricted `Unpickler` holds). Nothing here does I/O of its own:
`CheckedReader` reads from the file-like object it wraps, which may be a C-engine `Source`
whose reads are sans-IO requests.
"""

from .allowlist import (
    ALLOW_BUILTINS,
    ALLOW_COLLECTIONS,
    ALLOW_DATETIME,
    ALLOW_DECIMAL,
    ALLOW_NUMPY,
    Allowlist,
    AllowSpec,
    Pair,
    as_allowlist,
    is_dangerous,
)
from .reader import CheckedReader, Restriction

__all__ = [
    "ALLOW_BUILTINS",
    "ALLOW_COLLECTIONS",
    "ALLOW_DATETIME",
    "ALLOW_DECIMAL",
    "ALLOW_NUMPY",
    "AllowSpec",
    "Allowlist",
    "CheckedReader",
    "Pair",
    "Restriction",
    "as_allowlist",
    "is_dangerous",
]
