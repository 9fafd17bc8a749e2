"""CPython's own pickle test suite (``test.pickletester``) run against streampickle's API.

Each mixin runs twice where it makes sense: once through the file-based drop-in API (``dump`` /
``load`` with a file, as ``pickle``), and once through the streaming engine (``iter_dump`` joined,
``iter_load`` driven sans-IO from a buffered file, so the ``Peek`` prefetch path is exercised).
The mixins are imported from the running interpreter's ``test`` package, so each Python version
checks itself against its own ``pickle``.

Skips: none of ours. The suite skips its 32-bit-only tests on 64-bit builds, and on 3.13 one
test "only verified in the Python implementation"; both reasons come from pickletester itself.
"""

from __future__ import annotations

import collections
import io
import pickle
import unittest
from collections.abc import Callable
from typing import Any

from test import pickletester as pt

import streampickle


def iter_dumps_via(pickler_class: Callable[..., streampickle.Pickler]) -> Callable[..., bytes]:
    def dumps(arg: Any, proto: int | None = None, **kwargs: Any) -> bytes:
        return b"".join(pickler_class(None, proto, **kwargs).iter_dump(arg))

    return dumps


def file_dumps_via(pickler_class: Callable[..., pickle.Pickler]) -> Callable[..., bytes]:
    def dumps(arg: Any, proto: int | None = None, **kwargs: Any) -> bytes:
        f = io.BytesIO()
        pickler_class(f, proto, **kwargs).dump(arg)
        return f.getvalue()

    return dumps


def iter_loads_via(unpickler_class: Callable[..., streampickle.Unpickler]) -> Callable[..., Any]:
    def loads(buf: bytes, **kwds: Any) -> Any:
        # BufferedReader has peek(): the unpickler prefetches and reads back what it used.
        reader = io.BufferedReader(io.BytesIO(buf))
        return streampickle.drive_load(unpickler_class(None, **kwds).iter_load(), reader)

    return loads


def file_loads_via(unpickler_class: Callable[..., pickle.Unpickler]) -> Callable[..., Any]:
    def loads(buf: bytes, **kwds: Any) -> Any:
        return unpickler_class(io.BytesIO(buf), **kwds).load()

    return loads


class ModuleTests(pt.AbstractPickleModuleTests, unittest.TestCase):
    dump = staticmethod(streampickle.dump)
    dumps = staticmethod(streampickle.dumps)
    load = staticmethod(streampickle.load)
    loads = staticmethod(streampickle.loads)
    Pickler = streampickle.Pickler
    Unpickler = streampickle.Unpickler


class UnpicklerFileTests(pt.AbstractUnpickleTests, unittest.TestCase):
    unpickler = streampickle.Unpickler
    bad_stack_errors = (pickle.UnpicklingError,)
    truncated_errors = (pickle.UnpicklingError,)

    def loads(self, buf: bytes, **kwds: Any) -> Any:
        return file_loads_via(self.unpickler)(buf, **kwds)


class UnpicklerIncrementalTests(UnpicklerFileTests):
    def loads(self, buf: bytes, **kwds: Any) -> Any:
        return iter_loads_via(self.unpickler)(buf, **kwds)


class PicklerFileTests(pt.AbstractPickleTests, unittest.TestCase):
    pickler = streampickle.Pickler
    unpickler = streampickle.Unpickler

    def dumps(self, arg: Any, proto: int | None = None, **kwargs: Any) -> bytes:
        return file_dumps_via(self.pickler)(arg, proto, **kwargs)

    def loads(self, buf: bytes, **kwds: Any) -> Any:
        return file_loads_via(self.unpickler)(buf, **kwds)


class PicklerIncrementalTests(PicklerFileTests):
    def dumps(self, arg: Any, proto: int | None = None, **kwargs: Any) -> bytes:
        return iter_dumps_via(self.pickler)(arg, proto, **kwargs)

    def loads(self, buf: bytes, **kwds: Any) -> Any:
        return iter_loads_via(self.unpickler)(buf, **kwds)


class _PersistentMixin:
    """As ``test.test_pickle.PersistentPicklerUnpicklerMixin``, over streampickle's classes."""

    incremental = False
    base: type[streampickle.Pickler] = streampickle.Pickler
    # Provided by the pickletester mixin; declared (not defined) so the MRO finds those.
    persistent_id: Callable[[Any], Any]
    persistent_load: Callable[[Any], Any]

    def dumps(self, arg: Any, proto: int | None = None) -> bytes:
        test = self

        class PersPickler(self.base):  # type: ignore[name-defined]
            def persistent_id(self, obj: Any) -> Any:
                return test.persistent_id(obj)

        via = iter_dumps_via if self.incremental else file_dumps_via
        return via(PersPickler)(arg, proto)

    def loads(self, buf: bytes, **kwds: Any) -> Any:
        test = self

        class PersUnpickler(streampickle.Unpickler):
            def persistent_load(self, pid: Any) -> Any:
                return test.persistent_load(pid)

        via = iter_loads_via if self.incremental else file_loads_via
        return via(PersUnpickler)(buf, **kwds)


class PersistentFileTests(_PersistentMixin, pt.AbstractPersistentPicklerTests, unittest.TestCase):
    pass


class PersistentIncrementalTests(PersistentFileTests):
    incremental = True


class IdentityPersistentFileTests(
    _PersistentMixin, pt.AbstractIdentityPersistentPicklerTests, unittest.TestCase
):
    pass


class IdentityPersistentIncrementalTests(IdentityPersistentFileTests):
    incremental = True


class PicklerUnpicklerObjectTests(pt.AbstractPicklerUnpicklerObjectTests, unittest.TestCase):
    pickler_class = streampickle.Pickler
    unpickler_class = streampickle.Unpickler


class DispatchTableTests(pt.AbstractDispatchTableTests, unittest.TestCase):
    pickler_class = streampickle.Pickler

    def get_dispatch_table(self) -> Any:
        return pickle.dispatch_table.copy()  # type: ignore[attr-defined]


class ChainDispatchTableTests(pt.AbstractDispatchTableTests, unittest.TestCase):
    pickler_class = streampickle.Pickler

    def get_dispatch_table(self) -> Any:
        return collections.ChainMap({}, pickle.dispatch_table)  # type: ignore[attr-defined]


class HookTests(pt.AbstractHookTests, unittest.TestCase):
    class CustomPickler(streampickle.Pickler, pt.AbstractCustomPicklerClass):
        pass

    pickler_class = CustomPickler


if hasattr(pt, "AbstractPicklingErrorTests"):  # Python 3.13+

    class PicklingErrorTests(pt.AbstractPicklingErrorTests, unittest.TestCase):
        pickler = streampickle.Pickler

        def dumps(self, arg: Any, proto: int | None = None, **kwargs: Any) -> bytes:
            return file_dumps_via(self.pickler)(arg, proto, **kwargs)

    class PicklingErrorIncrementalTests(PicklingErrorTests):
        def dumps(self, arg: Any, proto: int | None = None, **kwargs: Any) -> bytes:
            return iter_dumps_via(self.pickler)(arg, proto, **kwargs)


# The python engine (engine="python"): the same suites through a Pickler that runs on it.


class PythonPickler(streampickle.Pickler):
    def __init__(self, file: Any, protocol: int | None = None, **kwargs: Any) -> None:
        super().__init__(file, protocol, engine="python", **kwargs)


class PythonPicklerFileTests(PicklerFileTests):
    pickler = PythonPickler


class PythonPicklerIncrementalTests(PicklerIncrementalTests):
    pickler = PythonPickler


class PythonPersistentFileTests(PersistentFileTests):
    base = PythonPickler


class PythonPersistentIncrementalTests(PersistentIncrementalTests):
    base = PythonPickler


class PythonIdentityPersistentFileTests(IdentityPersistentFileTests):
    base = PythonPickler


class PythonPicklerUnpicklerObjectTests(PicklerUnpicklerObjectTests):
    pickler_class = PythonPickler


class PythonDispatchTableTests(DispatchTableTests):
    pickler_class = PythonPickler


class PythonChainDispatchTableTests(ChainDispatchTableTests):
    pickler_class = PythonPickler


class PythonHookTests(HookTests):
    class CustomPickler(PythonPickler, pt.AbstractCustomPicklerClass):
        pass

    pickler_class = CustomPickler


if hasattr(pt, "AbstractPicklingErrorTests"):  # Python 3.13+

    class PythonPicklingErrorTests(PicklingErrorTests):
        pickler = PythonPickler
