"""Attacks on objects that existed before the load (docs/security.md, "Objects an allowed call
hands back"): an allowed call that returns an Enum member, a singleton or a module-level
object, then BUILD, APPEND(S) or SETITEM(S) on it, which would change it for the whole
process. Each with a control: plain ``pickle``, restricted to the same allowlist, changes it.
"""

from __future__ import annotations

import enum
import io
import pickle
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest

import streampickle
from hostile import glob, text
from streampickle import ALLOW_BUILTINS, PolicyViolation
from streampickle._policy import reader
from streampickle._policy.allowlist import may_share

ME = __name__
SHARED = "changes the result of a call that may hand back an object that existed before"


class Color(enum.Enum):
    RED = 1


class Config:
    """A singleton made by a ``__new__`` written in Python."""

    instance: Config | None = None

    def __new__(cls) -> Config:
        if cls.instance is None:
            cls.instance = super().__new__(cls)
        return cls.instance


class Single(type):
    def __call__(cls, *args: Any) -> Any:
        if "instance" not in cls.__dict__:
            cls.instance = super().__call__(*args)
        return cls.instance


class Registry(metaclass=Single):
    """A singleton made by its metaclass."""


#: A module-level list an allowed function hands back.
DEFAULTS: list[Any] = []


def defaults() -> list[Any]:
    return DEFAULTS


def getter() -> Any:
    return defaults


class Fresh:
    """A user's class whose instances are new: BUILD on them loads."""

    port: int


ALLOW = ALLOW_BUILTINS | [(ME, name) for name in ("Color", "Config", "Registry", "defaults")]
ALLOW |= [(ME, "getter")]
ALLOW |= [(ME, "Fresh"), ("builtins", "str"), ("copyreg", "__newobj__")]


def restricted(payload: bytes, allow: Any = ALLOW) -> Any:
    return streampickle.loads(payload, allow=allow)


def control(payload: bytes, allow: Any = ALLOW) -> Any:
    """Plain ``pickle``, resolving only what *allow* lists."""

    class Control(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            assert (module, name) in streampickle.Allowlist(allow)
            return super().find_class(module, name)

    return Control(io.BytesIO(payload)).load()


def attribute(name: str, value: int) -> bytes:
    """A BUILD state ``{name: value}`` and the BUILD."""
    return b"}" + text(name) + b"K" + bytes([value]) + b"sb"  # EMPTY_DICT ... SETITEM BUILD


def stack_global(module: str, name: str) -> bytes:
    """Protocol 4's way to name a global: two strings and STACK_GLOBAL."""
    return text(module) + text(name) + b"\x93"


#: BUILD on what each allowed call hands back, one per way a pickle can name and call it.
PAYLOADS = {
    "Enum by REDUCE": b"\x80\x02" + glob(ME, "Color") + b"K\x01\x85R" + attribute("_value_", 9),
    "Enum by STACK_GLOBAL": b"\x80\x04" + stack_global(ME, "Color") + b"K\x01\x85R"
    + attribute("_value_", 9),
    "Enum by NEWOBJ": b"\x80\x02" + glob(ME, "Color") + b"K\x01\x85\x81" + attribute("_value_", 9),
    "Enum by copyreg.__newobj__": b"\x80\x02" + glob("copyreg", "__newobj__") + glob(ME, "Color")
    + b"K\x01\x86R" + attribute("_value_", 9),
    "Python __new__": b"\x80\x02" + glob(ME, "Config") + b")\x81" + attribute("port", 7),
    "metaclass __call__": b"\x80\x02" + glob(ME, "Registry") + b")R" + attribute("port", 7),
    "a function's result": b"\x80\x02" + glob(ME, "defaults") + b")R(K\x07e.",  # APPENDS
    "a call's result called": b"\x80\x02" + glob(ME, "getter") + b")R)R(K\x07e.",
    "names a call made": b"\x80\x04" + glob("builtins", "str") + text(ME) + b"\x85R"
    + glob("builtins", "str") + text("Color") + b"\x85R\x93K\x01\x85R" + attribute("_value_", 9),
}  # fmt: skip
for key in PAYLOADS:
    if not PAYLOADS[key].endswith(b"."):
        PAYLOADS[key] += b"."


def reset() -> None:
    Color.RED._value_ = 1
    for obj in (Config.instance, Registry.__dict__.get("instance")):
        if obj is not None:
            obj.__dict__.pop("port", None)
    DEFAULTS.clear()


@pytest.fixture(autouse=True)
def restore() -> Iterator[None]:
    yield
    reset()


def changed() -> bool:
    registry = Registry.__dict__.get("instance")
    return (
        Color.RED.value != 1
        or getattr(Config.instance, "port", None) is not None
        or getattr(registry, "port", None) is not None
        or DEFAULTS != []
    )


@pytest.mark.parametrize("way", PAYLOADS)
def test_changing_an_existing_object_is_refused(way: str) -> None:
    payload = PAYLOADS[way]
    Config(), Registry()  # the singletons exist before the load
    control(payload)
    assert changed()  # the control: plain pickle changed it for the whole process
    reset()
    assert not changed()
    for pure in (False, True):
        scan = None if pure else reader.SCAN
        with mock.patch.object(reader, "SCAN", scan), pytest.raises(PolicyViolation, match=SHARED):
            restricted(payload)
    assert not changed()


def test_loading_shared_objects_without_changing_them_still_works() -> None:
    # What pickle writes for them: the member or singleton, no state.
    for protocol in range(6):
        data = pickle.dumps([Color.RED, Color.RED], protocol)
        assert restricted(data) == [Color.RED, Color.RED]
    assert restricted(b"\x80\x02" + glob(ME, "defaults") + b")R.") is DEFAULTS


def test_new_objects_still_take_their_state() -> None:
    obj = Fresh()
    obj.port = 7
    for protocol in range(2, 6):
        loaded = restricted(pickle.dumps(obj, protocol))
        assert type(loaded) is Fresh
        assert loaded.port == 7
    payload = b"\x80\x04" + stack_global(ME, "Fresh") + b")\x81" + attribute("port", 7) + b"."
    assert restricted(payload).port == 7


def test_a_dtype_numpy_hands_back_takes_no_state() -> None:
    np = pytest.importorskip("numpy")
    state = pickle.dumps((3, ">", None, None, None, -1, -1, 0), 2)[2:-1]
    dtype = glob("numpy", "dtype") + text("f8") + b"\x89"  # NEWFALSE: align
    handed_back = dtype + b"\x89\x87R" + state + b"b."  # copy=False: numpy's own descriptor
    copied = dtype + b"\x88\x87R" + state + b"b."  # copy=True, as numpy pickles it
    assert np.dtype("f8", False, False) is np.dtype("f8")
    assert restricted(b"\x80\x02" + copied, streampickle.ALLOW_NUMPY) == np.dtype(">f8")
    with pytest.raises(PolicyViolation, match=SHARED):
        restricted(b"\x80\x02" + handed_back, streampickle.ALLOW_NUMPY)


class Plain:
    pass


def function() -> None:
    pass


@pytest.mark.parametrize(
    ("obj", "shares"),
    [
        (Plain, False),
        (Fresh, False),
        (dict, False),
        (io.BytesIO, False),
        (Color, True),
        (Config, True),
        (Registry, True),
        (function, True),
        (len, True),
        (enum.Enum, True),
    ],
)
def test_may_share(obj: Any, shares: bool) -> None:
    assert may_share(obj) is shares


def test_the_answer_is_kept_per_pair() -> None:
    allow = streampickle.Allowlist([(ME, "Color"), (ME, "Plain")])
    assert allow.shares(ME, "Color") and not allow.shares(ME, "Plain")
    assert not allow.shares(ME, "Missing")  # not listed: find_class refuses it
    assert not streampickle.Allowlist([(ME, "Missing")]).shares(ME, "Missing")  # no such name
    with mock.patch("streampickle._policy.allowlist.may_share", side_effect=AssertionError):
        assert allow.shares(ME, "Color")
