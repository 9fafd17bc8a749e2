"""Allowlists: the exact ``(module, qualified name)`` pairs a restricted load may resolve,
the presets, and the guard rail of known-dangerous names."""

from __future__ import annotations

import sys
import types
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from collections.abc import Iterable, Iterator
from typing import Any

from .._exceptions import ForbiddenGlobal

__all__ = [
    "ALLOW_BUILTINS",
    "ALLOW_COLLECTIONS",
    "ALLOW_DATETIME",
    "ALLOW_DECIMAL",
    "AllowSpec",
    "Allowlist",
    "Pair",
    "as_allowlist",
    "is_dangerous",
    "map_python2",
    "may_share",
]

Pair = tuple[str, str]


#: Modules from which nothing may be allowed without ``allow_dangerous=True``: they run
#: commands or code, start threads, touch files or the network, import or resolve arbitrary
#: names, inspect the interpreter, or load nested pickles. C modules are listed with the
#: Python modules they implement, and well-known gadget modules (a call runs code: timeit,
#: pdb, doctest, profile...) beside them.
_DANGEROUS_MODULES = frozenset(
    {
        "_asyncio", "_ctypes", "_frozen_importlib", "_frozen_importlib_external", "_imp",
        "_pickle", "_posixsubprocess", "_signal", "_socket", "_thread", "_winapi", "asyncio",
        "bdb", "cProfile", "cloudpickle", "code", "codeop", "ctypes", "dill", "distutils",
        "doctest", "ensurepip", "fileinput", "ftplib", "gc", "http", "imp", "importlib",
        "inspect", "joblib", "linecache", "marshal", "msvcrt", "multiprocessing", "nt", "os",
        "pdb", "pickle", "pip", "pkgutil", "posix", "profile", "pty", "pydoc", "runpy",
        "setuptools", "shelve", "shutil", "signal", "smtplib", "socket", "socketserver",
        "streampickle", "subprocess", "sys", "telnetlib", "tempfile", "threading", "timeit",
        "trace", "urllib", "venv", "webbrowser", "xmlrpc", "zipimport",
    }
)  # fmt: skip
#: Single names that are dangerous in otherwise harmless modules.
_DANGEROUS_NAMES = frozenset(
    [("builtins", name) for name in (
        "__import__", "breakpoint", "compile", "delattr", "eval", "exec", "exit", "getattr",
        "globals", "help", "input", "locals", "open", "quit", "setattr", "type", "vars",
    )]
    + [(module, name) for module in ("operator", "_operator")
       for name in ("attrgetter", "methodcaller")]
    + [(module, name) for module in ("io", "_io") for name in ("open", "open_code", "FileIO")]
    + [(module, "call") for module in ("operator", "_operator")]
    + [(module, name) for module in ("functools", "_functools")
       for name in ("partial", "partialmethod", "reduce")]
    + [("codecs", "open"), ("builtins", "__build_class__")]
    + [("types", name) for name in (
        "CodeType", "FunctionType", "LambdaType", "MethodType", "new_class", "prepare_class",
    )]
)  # fmt: skip


def is_dangerous(module: str, name: str) -> bool:
    root = module.partition(".")[0]
    return root in _DANGEROUS_MODULES or (module, name) in _DANGEROUS_NAMES


def map_python2(module: str, name: str, fix_imports: bool) -> Pair:
    """Map a Python 2 name to its Python 3 one, as ``pickle`` does when *fix_imports* is true.

    ``pickle`` maps only at protocols 0-2; we map at every protocol, so that the pair judged by
    the allowlist is always the one resolved, whatever PROTO opcodes the pickle contains.
    """
    if not fix_imports:
        return module, name
    if (module, name) in NAME_MAPPING:
        mapped: Pair = NAME_MAPPING[(module, name)]
        return mapped
    return IMPORT_MAPPING.get(module, module), name


class Allowlist:
    """An immutable set of exact ``(module, qualified name)`` pairs a restricted load may resolve.

    Pass one as ``allow=`` to `load`, `loads` or `Unpickler`. Everything not listed is refused
    with `ForbiddenGlobal`. A dotted name (``"OrderedDict.fromkeys"``) is allowed only if that
    exact dotted pair is listed: allowing a module or a class never allows what can be reached
    from it by attribute access. Allowlists combine with ``|``; the presets `ALLOW_BUILTINS`,
    `ALLOW_COLLECTIONS`, `ALLOW_DATETIME` and `ALLOW_DECIMAL` are allowlists.

    Listing a known-dangerous name (``os.*``, ``subprocess.*``, ``builtins.eval``,
    ``builtins.getattr``, ``operator.attrgetter``, ``pickle.loads``, ...) raises ``ValueError``
    unless ``allow_dangerous=True``; the same check is applied to what a listed pair resolves
    to, so an alias (``mymodule.run = os.system``) is refused at load time. This is a guard
    rail, not a complete list: only list what your data needs. ``TypeError`` is raised for a
    pair that is not two non-empty strings.
    """

    __slots__ = ("_dangerous_ok", "_pairs", "_shares")

    def __init__(self, pairs: Iterable[Pair] = (), *, allow_dangerous: bool = False) -> None:
        checked = frozenset(_check_pair(pair) for pair in pairs)
        if not allow_dangerous:
            for module, name in sorted(checked):
                if is_dangerous(module, name):
                    raise ValueError(
                        f"{module}.{name} is known to be unsafe to allow (it can run code, "
                        "touch files or reach other globals); pass allow_dangerous=True to "
                        "list it anyway"
                    )
        self._pairs = checked
        self._dangerous_ok = allow_dangerous
        self._shares: dict[Pair, bool] = {}  # `shares`' answers, per pair judged

    @property
    def allow_dangerous(self) -> bool:
        """Whether known-dangerous names may be listed and resolved."""
        return self._dangerous_ok

    @property
    def pairs(self) -> frozenset[Pair]:
        """The allowed ``(module, qualified name)`` pairs."""
        return self._pairs

    def __contains__(self, pair: object) -> bool:
        return pair in self._pairs

    def __iter__(self) -> Iterator[Pair]:
        return iter(sorted(self._pairs))

    def __len__(self) -> int:
        return len(self._pairs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Allowlist):
            return NotImplemented
        return (self._pairs, self.allow_dangerous) == (other._pairs, other.allow_dangerous)

    def __hash__(self) -> int:
        return hash((self._pairs, self.allow_dangerous))

    def __or__(self, other: Allowlist | Iterable[Pair]) -> Allowlist:
        other = as_allowlist(other)
        dangerous = self.allow_dangerous or other.allow_dangerous
        return Allowlist(self._pairs | other._pairs, allow_dangerous=dangerous)

    __ror__ = __or__

    def __repr__(self) -> str:
        flag = ", allow_dangerous=True" if self.allow_dangerous else ""
        return f"Allowlist({sorted(self._pairs)!r}{flag})"

    def find_class(self, module: str, name: str, *, fix_imports: bool = True) -> Any:
        """Resolve the global ``module.name`` if the allowlist permits it.

        The pair is judged after the ``fix_imports`` mapping (so ``__builtin__.eval`` is judged
        as ``builtins.eval``) and before anything is imported; then the module is imported and
        the (possibly dotted) name looked up, as ``pickle.Unpickler.find_class`` does. Raises
        `ForbiddenGlobal` if the pair is not listed, or if it resolves to a module or to a
        known-dangerous object; ``ImportError``/``AttributeError`` if it does not exist.
        """
        module, name = map_python2(module, name, fix_imports)
        if (module, name) not in self._pairs:
            raise ForbiddenGlobal(
                module,
                name,
                f"is not in the allowlist; to allow it, add ({module!r}, {name!r}) to allow= "
                "(streampickle.required_globals(data) lists every pair a pickle needs, "
                "streampickle inspect FILE prints the allowlist"
                + (
                    "; for numpy data, use streampickle.ALLOW_NUMPY)"
                    if module == "numpy" or module.startswith("numpy.")
                    else ")"
                ),
            )
        sys.audit("pickle.find_class", module, name)
        return self._resolve(module, name)

    def _resolve(self, module: str, name: str) -> Any:
        """Import *module* and look up *name* in it, refusing a module or a dangerous alias
        (`find_class`, for a listed pair)."""
        __import__(module, level=0)
        obj: Any = sys.modules[module]
        for part in name.split("."):
            obj = getattr(obj, part)
        if isinstance(obj, types.ModuleType):
            raise ForbiddenGlobal(module, name, "is a module; list the names you need in it")
        canonical = (getattr(obj, "__module__", None), getattr(obj, "__qualname__", None))
        if (
            not self.allow_dangerous
            and isinstance(canonical[0], str)
            and isinstance(canonical[1], str)
            and is_dangerous(canonical[0], canonical[1])
        ):
            raise ForbiddenGlobal(
                module, name, f"is an alias of {canonical[0]}.{canonical[1]}, a dangerous name"
            )
        return obj

    def shares(self, module: str, name: str, *, fix_imports: bool = True) -> bool:
        """Whether a call of the allowed global ``module.name`` (as REDUCE, NEWOBJ, INST or
        OBJ make it) may return an object that existed before the call, which a BUILD,
        APPEND or SETITEM on the result would change for the whole process (see
        `may_share`). False for a pair the allowlist refuses (`find_class` then refuses it
        when the unpickler meets it) or that does not resolve. The answer is kept per pair.
        """
        pair = map_python2(module, name, fix_imports)
        known = self._shares.get(pair)
        if known is None:
            try:
                known = pair in self._pairs and may_share(self._resolve(*pair))
            except Exception:  # ImportError, AttributeError, ForbiddenGlobal: find_class's
                known = False
            self._shares[pair] = known
        return known


def may_share(obj: Any) -> bool:
    """Whether calling *obj* may return an object that existed before the call.

    A class makes a new object when it is called, and when the unpickler calls its
    ``__new__``, if its metaclass does not override ``__call__`` and its ``__new__`` is a C
    type's (``object.__new__``, a builtin type's): an ``Enum`` (its metaclass hands back
    members), a singleton made by a metaclass or by a ``__new__`` written in Python, may hand
    back one it made before. Any other callable (a function, a method) returns what it likes.
    C types whose ``__new__`` hands back a cached object (``tuple()``, small ints,
    ``timezone(timedelta(0))``) make objects that a BUILD, APPEND or SETITEM cannot change.
    """
    if not isinstance(obj, type):
        return True
    if type(obj).__call__ is not type.__call__:
        return True
    return not isinstance(obj.__new__, types.BuiltinFunctionType)


def _check_pair(pair: Any) -> Pair:
    if (
        not isinstance(pair, tuple)
        or len(pair) != 2
        or not all(isinstance(part, str) and part for part in pair)
    ):
        raise TypeError(f"an allowlist entry must be a (module, qualname) tuple, got {pair!r}")
    return pair


#: What ``allow=`` accepts: an `Allowlist`, any iterable of pairs, or ``None`` (unrestricted).
AllowSpec = Allowlist | Iterable[Pair] | None


def as_allowlist(allow: Allowlist | Iterable[Pair]) -> Allowlist:
    """Return *allow* as an `Allowlist` (an iterable of pairs is checked as `Allowlist` does);
    ``TypeError`` for a string, a bool or anything else that is not pairs, saying what is."""
    if isinstance(allow, Allowlist):
        return allow
    if isinstance(allow, (str, bytes, bool)) or not isinstance(allow, Iterable):
        hint = (
            f" (to allow a module's names, list them: [({allow!r}, 'name'), ...], or use a "
            "preset such as ALLOW_BUILTINS)"
            if isinstance(allow, str)
            else " (allow=[] permits no global at all; for a trusted peer leave allow= out)"
        )
        raise TypeError(
            f"allow= takes an Allowlist or an iterable of (module, name) pairs, not "
            f"{type(allow).__name__} {allow!r}{hint}"
        )
    return Allowlist(allow)


#: Builtin data types that need a global: set, frozenset, bytearray, complex, slice, range, the
#: two singletons, and ``_codecs.encode`` and ``bytes``, which protocols 0-2 use for ``bytes``.
#: Plain ints, floats, strings, bytes (protocol 3+), lists, tuples, dicts, bools and None need
#: no global at all and load under any allowlist, even an empty one.
ALLOW_BUILTINS = Allowlist(
    [("builtins", name) for name in (
        "bytearray", "bytes", "complex", "Ellipsis", "frozenset", "NotImplemented", "range",
        "set", "slice",
    )]
    + [("_codecs", "encode")]
)  # fmt: skip
#: ``collections`` types implemented in C (``Counter`` is a Python class: see docs/security.md).
#: A ``defaultdict``'s factory is a global of its own and must be allowed separately.
ALLOW_COLLECTIONS = Allowlist(
    ("collections", name) for name in ("OrderedDict", "defaultdict", "deque")
)
#: ``datetime`` types; protocols 0-2 also need ``_codecs.encode`` for their state.
ALLOW_DATETIME = Allowlist(
    [("datetime", name) for name in ("date", "datetime", "time", "timedelta", "timezone")]
    + [("_codecs", "encode")]
)
#: ``decimal.Decimal``.
ALLOW_DECIMAL = Allowlist([("decimal", "Decimal")])
#: numpy arrays and scalars of number and boolean types, as numpy 1.x and 2.x pickle them at
#: every protocol (``_reconstruct`` then BUILD; ``_frombuffer`` at protocol 5; ``scalar``).
#: The vetting pass checks each dtype and array state (see docs/security.md); object,
#: structured, string and datetime arrays are refused.
ALLOW_NUMPY = Allowlist(
    [("numpy", "dtype"), ("numpy", "ndarray"), ("_codecs", "encode"), ("builtins", "bytes")]
    + [(f"numpy.{core}.multiarray", name) for core in ("core", "_core")
       for name in ("_reconstruct", "scalar")]
    + [(f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")]
)  # fmt: skip
