"""The python engine's reductions: ``save_reduce`` (the REDUCE, NEWOBJ and NEWOBJ_EX shapes,
with list items, dict items, state and state setters), globals, types and persistent IDs, as
the C pickler writes them. Errors are the C pickler's own (`Saver.c_error`)."""

from __future__ import annotations

import _compat_pickle
import copyreg
import pickle
import sys
from functools import partial
from typing import Any

from .base import SaverBase as Saver
from .base import Steps
from .batches import appends, setitems

__all__ = ["save_global", "save_pers", "save_reduce", "save_type"]

#: 3.13 writes a dotted name at protocols 0-3 as getattr calls from the top-level name;
#: 3.10-3.12 as ``getattr(parent, last name)``.
_DOTTED_PATHS = sys.version_info >= (3, 13)
_ABSENT: Any = object()
_SINGLETON_TYPES = {type(None): None, type(NotImplemented): NotImplemented, type(...): ...}


def _steps(s: Saver, *items: Any) -> Steps:
    """Save *items* in order (each may need steps of its own)."""
    save, ready = s.save, s.framer.ready
    for item in items:
        step = save(item)
        if step is not None or ready:
            yield step


def save_pers(s: Saver, pid: Any) -> Steps | None:
    if s.bin:
        return _pers(s, pid)
    text = str(pid)
    if not text.isascii():
        raise pickle.PicklingError("persistent IDs in protocol 0 must be ASCII strings")
    s.write(b"P" + text.encode("ascii") + b"\n")
    return None


def _pers(s: Saver, pid: Any) -> Steps:
    step = s.save(pid, False)
    if step is not None:
        yield step
    s.write(b"Q")


def save_reduce(
    s: Saver,
    func: Any,
    args: Any,
    state: Any = None,
    listitems: Any = None,
    dictitems: Any = None,
    state_setter: Any = None,
    *,
    obj: Any = None,
) -> Steps:
    return _reduce(s, func, args, state, listitems, dictitems, state_setter, obj)


def check_reduce(s: Saver, obj: Any, rv: tuple[Any, ...]) -> None:
    """The C pickler's checks of a reduce value, raising its errors."""
    func, args = rv[0], rv[1]
    bad = (
        not callable(func)
        or not isinstance(args, tuple)
        or (len(rv) > 3 and rv[3] is not None and not hasattr(rv[3], "__next__"))
        or (len(rv) > 4 and rv[4] is not None and not hasattr(rv[4], "__next__"))
        or (len(rv) > 5 and rv[5] is not None and not callable(rv[5]))
    )
    if bad:
        raise s.c_error(obj, pickle.PicklingError("invalid __reduce__ result"))


def _reduce(
    s: Saver,
    func: Any,
    args: tuple[Any, ...],
    state: Any,
    listitems: Any,
    dictitems: Any,
    state_setter: Any,
    obj: Any,
) -> Steps:
    write = s.write
    name = getattr(func, "__name__", "") if s.proto >= 2 else ""
    if name == "__newobj_ex__":
        if len(args) != 3:
            raise s.c_error(obj, pickle.PicklingError("bad __newobj_ex__ arguments"))
        cls, cls_args, kwargs = args
        if not isinstance(cls, type) or (obj is not None and cls is not obj.__class__):
            raise s.c_error(obj, pickle.PicklingError("bad __newobj_ex__ class"))
        if s.proto >= 4 and (type(cls_args) is not tuple or type(kwargs) is not dict):
            raise s.c_error(obj, pickle.PicklingError("bad __newobj_ex__ arguments"))
        if s.proto >= 4:
            yield from _steps(s, cls, cls_args, kwargs)
            write(b"\x92")
        else:
            yield from _steps(s, partial(cls.__new__, cls, *cls_args, **kwargs), ())
            write(b"R")
    elif name == "__newobj__":
        if not args or not isinstance(args[0], type):
            raise s.c_error(obj, pickle.PicklingError("bad __newobj__ arguments"))
        cls = args[0]
        if obj is not None and cls is not obj.__class__:
            raise s.c_error(
                obj, pickle.PicklingError("args[0] from __newobj__ args has the wrong class")
            )
        yield from _steps(s, cls, args[1:])
        write(b"\x81")
    else:
        yield from _steps(s, func, args)
        write(b"R")
    if obj is not None:
        memo = s.memo
        if id(obj) in memo:  # recursive: drop what was built, take the memo's
            write(b"0" + s.get(memo[id(obj)][0]))
        else:
            s.memoize(obj)
    if listitems is not None:
        yield appends(s, listitems)
    if dictitems is not None:
        yield setitems(s, dictitems)
    if state is not None:
        if state_setter is None:
            yield from _steps(s, state)
            write(b"b")
        else:
            yield from _steps(s, state_setter, obj, state)
            write(b"\x86R0")


def save_type(s: Saver, obj: type) -> Steps | None:
    if obj in _SINGLETON_TYPES:
        return save_reduce(s, type, (_SINGLETON_TYPES[obj],), obj=obj)
    return save_global(s, obj)


def save_global(s: Saver, obj: Any, name: str | None = None) -> Steps | None:
    try:
        if name is None:
            name = getattr(obj, "__qualname__", None)
        if name is None:
            name = obj.__name__
        module_name = pickle.whichmodule(obj, name)  # type: ignore[attr-defined]
        __import__(module_name, level=0)
        module = sys.modules[module_name]
        found, parent = _lookup(module, name)
    except Exception as exc:
        raise s.c_error(obj, pickle.PicklingError(f"Can't pickle {obj!r}")) from exc
    if found is not obj:
        raise s.c_error(obj, pickle.PicklingError(f"Can't pickle {obj!r}: not the same object"))
    if s.proto >= 2:
        code = copyreg._extension_registry.get((module_name, name), _ABSENT)  # type: ignore[attr-defined]
        if code is not _ABSENT:
            if type(code) is not int or not 0 < code <= 0x7FFFFFFF:
                raise s.c_error(obj, RuntimeError(f"extension code {code!r} is out of range"))
            if code <= 0xFF:
                s.write(b"\x82" + bytes((code,)))
            elif code <= 0xFFFF:
                s.write(b"\x83" + code.to_bytes(2, "little"))
            else:
                s.write(b"\x84" + code.to_bytes(4, "little", signed=True))
            return None
    return _global(s, obj, module_name, name, module, parent)


def _lookup(module: Any, name: str) -> tuple[Any, Any]:
    parent, found = None, module
    for part in name.split("."):
        if part == "<locals>":
            raise AttributeError(f"Can't get local attribute {name!r} on {module!r}")
        parent, found = found, getattr(found, part)
    return found, parent


def _global(s: Saver, obj: Any, module_name: str, name: str, module: Any, parent: Any) -> Steps:
    last = name.rpartition(".")[2]
    if parent is module:
        name = last
    if s.proto >= 4:
        yield from _steps(s, module_name, name)
        s.write(b"\x93")
    elif parent is not module and not _DOTTED_PATHS:
        yield save_reduce(s, getattr, (parent, last))
    elif "." in name:
        first, *path = name.split(".")
        for _ in path:
            yield from _steps(s, getattr)
            if s.proto < 2:
                s.write(b"(")
        _toplevel(s, obj, module_name, first)
        for attribute in path:
            yield from _steps(s, attribute)
            s.write(b"t" if s.proto < 2 else b"\x86")
            s.write(b"R")
    else:
        _toplevel(s, obj, module_name, name)
    s.memoize(obj)


def _toplevel(s: Saver, obj: Any, module_name: str, name: str) -> None:
    if s.proto >= 3:
        s.write(b"c" + module_name.encode("utf-8") + b"\n" + name.encode("utf-8") + b"\n")
        return
    if s.fix_imports:
        if (module_name, name) in _compat_pickle.REVERSE_NAME_MAPPING:
            module_name, name = _compat_pickle.REVERSE_NAME_MAPPING[(module_name, name)]
        elif module_name in _compat_pickle.REVERSE_IMPORT_MAPPING:
            module_name = _compat_pickle.REVERSE_IMPORT_MAPPING[module_name]
    try:
        s.write(b"c" + module_name.encode("ascii") + b"\n" + name.encode("ascii") + b"\n")
    except UnicodeEncodeError:
        raise s.c_error(obj, pickle.PicklingError("can't pickle global identifier")) from None
