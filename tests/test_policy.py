"""Restricted loading: allowlists, the opcode checks, and the globals lister.

Every bypass test builds a hostile pickle by hand, shows that plain ``pickle`` really runs it
(a marker file appears), and then that the restricted load refuses it with nothing run.
"""

from __future__ import annotations

import collections
import contextlib
import copyreg
import datetime
import decimal
import io
import os
import pickle
import pickletools
import socket
import struct
import sys
import threading
import warnings
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streampickle
from streampickle import (
    ALLOW_BUILTINS,
    ALLOW_COLLECTIONS,
    ALLOW_DATETIME,
    ALLOW_DECIMAL,
    Allowlist,
    ForbiddenGlobal,
    Peek,
    PolicyViolation,
    Read,
    ReadInto,
    ReadLine,
    required_globals,
)
from streampickle._limits import Limits
from streampickle._policy import rules as policy_rules
from streampickle._policy.allowlist import map_python2
from streampickle._unpickler import PeekableBytes

EVERYTHING = ALLOW_BUILTINS | ALLOW_COLLECTIONS | ALLOW_DATETIME | ALLOW_DECIMAL
PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)


# --------------------------------------------------------------------------------------------
# Helpers


def touch(path: str) -> None:
    """The side effect the hostile pickles aim for (through other callables)."""
    Path(path).touch()


# copyreg registers one code per name: one name per extension opcode.
touch_ext1 = touch_ext2 = touch_ext4 = touch


#: An alias of a dangerous function under an innocent name (refused when resolved).
run_command = os.system


class Point:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    class Inner:
        def __eq__(self, other: object) -> bool:
            return isinstance(other, Point.Inner)


class Reduced:
    """Pickled as a call of a module-level function."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (make_reduced, ())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Reduced)


def make_reduced() -> Reduced:
    return Reduced()


ME = __name__


def global_op(module: str, name: str) -> bytes:
    """A protocol-0 GLOBAL opcode."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def string(text: str) -> bytes:
    """A protocol-0 STRING push."""
    return b"S" + repr(text).encode() + b"\n"


def call(func: bytes, *args: bytes) -> bytes:
    """``func(*args)`` as protocol-0 opcodes: MARK args TUPLE REDUCE."""
    return func + b"(" + b"".join(args) + b"tR"


def short_unicode(text: str) -> bytes:
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def stack_global(module: str, name: str) -> bytes:
    """A protocol-4 STACK_GLOBAL of two SHORT_BINUNICODE pushes."""
    return short_unicode(module) + short_unicode(name) + b"\x93"


def framed(body: bytes, frame_size: int | None = None) -> bytes:
    """PROTO 4, then *body* in one FRAME claiming *frame_size* bytes (default: all of it)."""
    size = len(body) if frame_size is None else frame_size
    return b"\x80\x04\x95" + struct.pack("<Q", size) + body


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "pwned"


def assert_attack(data: bytes, marker: Path, allow: Any, error: type[Exception]) -> Exception:
    """*data* creates *marker* under plain pickle, and is refused with *error* when restricted."""
    with pytest.raises(error) as refused:
        streampickle.loads(data, allow=allow)
    assert not marker.exists(), "the restricted load ran the payload"
    with contextlib.suppress(Exception):  # the control only has to run the payload
        pickle.loads(data)
    assert marker.exists(), "the control pickle is not a working attack"
    marker.unlink()
    return refused.value


# --------------------------------------------------------------------------------------------
# Allowed data loads as pickle loads it


DATA: list[Any] = [
    {"a": {1, 2}, "b": frozenset({3}), "c": bytearray(b"xy"), "d": b"bytes", "e": 1 + 2j},
    [slice(1, 2, 3), range(2, 9, 3), ..., NotImplemented, b"", None, True, 1.5, -(10**30)],
    collections.OrderedDict(a=1, b=[2]),
    collections.deque([1, 2, 3], maxlen=5),
    collections.defaultdict(list, {"k": [1]}),
    datetime.datetime(2024, 5, 6, 7, 8, 9, 10, tzinfo=datetime.timezone.utc),
    [datetime.date(2020, 1, 2), datetime.time(3, 4), datetime.timedelta(days=-1, seconds=5)],
    datetime.timezone(datetime.timedelta(hours=2), "X"),
    [decimal.Decimal("-1.25E+7"), decimal.Decimal("-Infinity")],
    # Payloads of 64 KiB or more follow their frame unframed at protocols 4 and 5.
    {"big": b"z" * 200_000, "text": "\u00e9" * 70_000, "array": bytearray(70_000)},
    list(range(40_000)),
]
# A defaultdict's factory is a global of its own.
DATA_ALLOW = EVERYTHING | [("builtins", "list")]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("index", range(len(DATA)))
def test_allowed_data_round_trips(protocol: int, index: int) -> None:
    data = pickle.dumps(DATA[index], protocol)
    expected = pickle.loads(data)
    assert streampickle.loads(data, allow=DATA_ALLOW) == expected
    assert streampickle.load(io.BytesIO(data), allow=DATA_ALLOW) == expected
    assert streampickle.loads(memoryview(data), allow=list(DATA_ALLOW)) == expected


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_back_to_back_pickles_on_one_file(protocol: int) -> None:
    objects = [DATA[0], DATA[9], {"n": 1}, DATA[2]]
    stream = io.BytesIO(b"".join(pickle.dumps(obj, protocol) for obj in objects) + b"tail")
    unpickler = streampickle.Unpickler(stream, allow=DATA_ALLOW)
    assert [unpickler.load() for _ in objects] == objects
    assert stream.read() == b"tail"  # never read past the last STOP


def test_data_without_globals_loads_under_an_empty_allowlist() -> None:
    obj: dict[str, Any] = {"s": "text", "l": [1, 2.5, None, True], "t": (1, (2,))}
    for protocol in PROTOCOLS:
        if protocol >= 3:  # before protocol 3, bytes are pickled as a call of _codecs.encode
            obj["b"] = b"raw"
        assert streampickle.loads(pickle.dumps(obj, protocol), allow=[]) == obj


def test_user_classes_load_when_listed() -> None:
    obj = [Point(1, 2), Point.Inner(), Reduced()]
    for protocol in PROTOCOLS:
        data = pickle.dumps(obj, protocol)
        if protocol < 4:  # nested classes are pickled as getattr(Point, "Inner") before 4
            assert ("builtins", "getattr") in required_globals(data)
            with pytest.raises(ValueError, match="getattr"):
                Allowlist(required_globals(data))
            data = pickle.dumps(obj[::2], protocol)
        allow = Allowlist(required_globals(data))
        assert streampickle.loads(data, allow=allow) == pickle.loads(data)
        with pytest.raises(ForbiddenGlobal) as refused:
            streampickle.loads(data, allow=[])
        assert (refused.value.module, refused.value.name) == required_globals(data)[0]


BUILTIN_DATA = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.complex_numbers(allow_nan=False)
    | st.text()
    | st.binary()
    | st.builds(bytearray, st.binary()),
    lambda children: (
        st.lists(children)
        | st.tuples(children, children)
        | st.dictionaries(st.text(), children)
        | st.frozensets(st.integers() | st.text())
        | st.sets(st.integers() | st.binary())
        | st.builds(slice, children, children, children)
        | st.builds(range, st.integers(-50, 50), st.integers(-50, 50), st.integers(1, 5))
        | st.builds(range, st.integers(), st.integers(), st.integers(1) | st.integers(max_value=-1))
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(obj=BUILTIN_DATA, protocol=st.sampled_from(PROTOCOLS))
def test_builtin_data_round_trips_under_the_builtin_preset(obj: Any, protocol: int) -> None:
    """Also with max_expansion=0: the calls pickle writes copy no more than twice what they
    take on the wire."""
    data = pickle.dumps(obj, protocol)
    assert streampickle.loads(data, allow=ALLOW_BUILTINS, max_expansion=0) == pickle.loads(data)
    assert set(required_globals(data)) <= ALLOW_BUILTINS.pairs


#: The types whose constructors copy what they are given, as pickle writes them.
CONTAINER_DATA: st.SearchStrategy[Any] = st.recursive(
    st.integers() | st.text(max_size=300) | st.binary(max_size=300),
    lambda children: (
        st.lists(children)
        | st.builds(bytearray, st.binary(max_size=2000))
        | st.builds(collections.deque, st.lists(children), st.none() | st.integers(0, 5))
        | st.builds(collections.Counter, st.lists(st.integers(-3, 3) | st.text(max_size=2)))
        | st.builds(collections.OrderedDict, st.lists(st.tuples(st.text(max_size=3), children)))
        | st.builds(
            lambda items: collections.defaultdict(list, items),
            st.dictionaries(st.integers(), st.lists(children)),
        )
        | st.sets(st.integers() | st.binary(max_size=3))
        | st.frozensets(st.integers() | st.text(max_size=3))
        | st.builds(decimal.Decimal, st.decimals(allow_nan=False) | st.integers())
        | st.builds(range, st.integers(), st.integers(), st.integers(1, 10**20))
    ),
    max_leaves=25,
)
CONTAINER_ALLOW = EVERYTHING | [("builtins", "list"), ("collections", "Counter")]


@settings(max_examples=150, deadline=None)
@given(obj=CONTAINER_DATA, protocol=st.sampled_from(PROTOCOLS))
def test_container_data_round_trips_with_no_expansion(obj: Any, protocol: int) -> None:
    data = pickle.dumps(obj, protocol)
    loaded = streampickle.loads(data, allow=CONTAINER_ALLOW, max_expansion=0)
    assert loaded == pickle.loads(data)


def test_every_opcode_has_a_model() -> None:
    """The vetting pass models each opcode of this Python's pickletools; the fallback for an
    opcode added later has the stack effect pickletools documents."""
    names = {opcode.name for opcode in pickletools.opcodes}
    assert set(policy_rules._MODEL) == names
    for name in ("APPENDS", "TUPLE2", "STOP", "BUILD", "POP_MARK", "REDUCE"):
        rules = policy_rules.Rules(Limits())
        rules.stack = ["a", "b", "c"]
        rules.marks, rules.fence = [1], 1
        try:
            policy_rules._unknown_opcode(rules, name, None, 0, 1)
        except pickle.UnpicklingError:
            pytest.fail(f"the fallback underflows on {name}")
        expected = policy_rules.Rules(Limits())
        expected.stack, expected.marks, expected.fence = ["a", "b", "c"], [1], 1
        policy_rules._MODEL[name](expected, name, None, 0, 1)
        assert (len(rules.stack), len(rules.marks)) == (len(expected.stack), len(expected.marks))


@pytest.mark.parametrize(
    "data",
    [b"S'\\('\n.", b"S'\\400'\n.", b"S'\\x4'\n.", b"S'a\\'\n.", b"S'\\N{DASH}'\n."],
    ids=["unknown", "octal-over-255", "short-hex", "trailing", "named"],
)
def test_strings_with_escapes_that_warn_are_refused(data: bytes) -> None:
    """CPython decodes a STRING's unknown escapes with a DeprecationWarning (or fails): the
    vetting pass refuses them first, so no warning escapes (it would be an exception under
    ``-W error``), whatever the warning filters."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(pickle.UnpicklingError, match="escape"):
            required_globals(data)
        with pytest.raises(pickle.UnpicklingError, match="escape"):
            streampickle.loads(data, allow=ALLOW_BUILTINS)


def test_strings_with_valid_escapes_load_as_pickle_loads_them() -> None:
    data = b"(S'a\\x41\\101\\n\\\\\\''\nS\"q\"\nS''\nl."
    assert streampickle.loads(data, allow=[]) == pickle.loads(data) == ["aAA\n\\'", "q", ""]
    assert required_globals(data) == []


# --------------------------------------------------------------------------------------------
# The known bypasses


def command(marker: Path) -> bytes:
    return string(f"touch {marker}")


def test_dotted_name_walks_are_refused(marker: Path) -> None:
    """Allowing glob.escape must not allow glob.os.system (glob imports os, on 3.10-3.13;
    pathlib, the classic example, no longer does since 3.13 made it a package)."""
    data = b"\x80\x04" + stack_global("glob", "os.system") + command(marker) + b"\x85R."
    refused = assert_attack(data, marker, [("glob", "escape")], ForbiddenGlobal)
    assert isinstance(refused, ForbiddenGlobal)
    assert (refused.module, refused.name) == ("glob", "os.system")


def test_python2_names_are_judged_after_fix_imports(marker: Path) -> None:
    code = f"open({str(marker)!r}, 'w').close()"
    data = b"\x80\x02" + call(global_op("__builtin__", "exec"), string(code)) + b"."
    for allow in (ALLOW_BUILTINS, [("__builtin__", "exec")]):
        refused = assert_attack(data, marker, allow, ForbiddenGlobal)
        assert isinstance(refused, ForbiddenGlobal)
        assert (refused.module, refused.name) == ("builtins", "exec")


def test_python2_names_of_allowed_types_load() -> None:
    data = b"\x80\x02" + call(global_op("__builtin__", "set"), b"]") + b"."
    assert streampickle.loads(data, allow=ALLOW_BUILTINS) == set()
    with pytest.raises(ForbiddenGlobal):  # not mapped, so judged as itself
        streampickle.loads(data, allow=ALLOW_BUILTINS, fix_imports=False)


@pytest.mark.parametrize(
    ("module", "name"),
    [("posix", "system"), ("nt", "system"), ("os", "system"), ("_io", "open")],
)
def test_c_module_aliases_are_refused_before_import(module: str, name: str) -> None:
    data = b"\x80\x04" + stack_global(module, name) + b"."
    before = set(sys.modules)
    with pytest.raises(ForbiddenGlobal) as refused:
        streampickle.loads(data, allow=EVERYTHING | [("operator", "itemgetter")])
    assert (refused.value.module, refused.value.name) == (module, name)
    assert set(sys.modules) == before  # nt does not exist here: an ImportError would show


def test_posix_system_attack(marker: Path) -> None:
    data = call(global_op("posix", "system"), command(marker)) + b"."
    assert_attack(data, marker, EVERYTHING, ForbiddenGlobal)


@pytest.mark.parametrize(
    "pair",
    [("posix", "system"), ("builtins", "getattr"), ("_operator", "attrgetter"),
     ("subprocess", "Popen"), ("pickle", "loads"), ("pydoc", "locate"), ("io", "open"),
     # C aliases of refused Python names, and well-known gadgets (issue 13)
     ("_functools", "partial"), ("functools", "reduce"), ("_functools", "reduce"),
     ("operator", "call"), ("_thread", "start_new_thread"), ("threading", "Thread"),
     ("timeit", "timeit"), ("pdb", "run"), ("cProfile", "runctx"), ("types", "FunctionType"),
     ("types", "CodeType"), ("webbrowser", "open"), ("linecache", "getline"),
     ("urllib.request", "urlopen"), ("asyncio.subprocess", "create_subprocess_shell")],
)  # fmt: skip
def test_dangerous_names_cannot_be_listed_by_accident(pair: tuple[str, str]) -> None:
    with pytest.raises(ValueError, match="allow_dangerous"):
        Allowlist([pair])
    assert pair in Allowlist([pair], allow_dangerous=True)


def test_aliases_of_dangerous_functions_are_refused_when_resolved(marker: Path) -> None:
    data = call(global_op(ME, "run_command"), command(marker)) + b"."
    refused = assert_attack(data, marker, [(ME, "run_command")], ForbiddenGlobal)
    assert "alias of posix.system" in str(refused)


def getattr_chain(marker: Path) -> bytes:
    """getattr(__import__('os'), 'system')('touch ...')"""
    os_module = call(global_op("builtins", "__import__"), string("os"))
    system = call(global_op("builtins", "getattr"), os_module, string("system"))
    return call(system, command(marker)) + b"."


def attrgetter_chain(marker: Path) -> bytes:
    """attrgetter('system')(__import__('os'))('touch ...')"""
    getter = call(global_op("operator", "attrgetter"), string("system"))
    system = call(getter, call(global_op("builtins", "__import__"), string("os")))
    return call(system, command(marker)) + b"."


def methodcaller_chain(marker: Path) -> bytes:
    """methodcaller('system', 'touch ...')(__import__('os'))"""
    caller = call(global_op("operator", "methodcaller"), string("system"), command(marker))
    return call(caller, call(global_op("builtins", "__import__"), string("os"))) + b"."


def partial_chain(marker: Path) -> bytes:
    """partial(os.system, 'touch ...')()"""
    bound = call(global_op("functools", "partial"), global_op("os", "system"), command(marker))
    return call(bound) + b"."


def resolve_name_chain(marker: Path) -> bytes:
    return call(call(global_op("pkgutil", "resolve_name"), string("os:system")), command(marker))


def locate_chain(marker: Path) -> bytes:
    return call(call(global_op("pydoc", "locate"), string("os.system")), command(marker))


def nested_loader(marker: Path) -> bytes:
    inner = call(global_op("os", "system"), command(marker)) + b"."
    return call(global_op("pickle", "loads"), b"C" + bytes([len(inner)]) + inner) + b"."


@pytest.mark.parametrize(
    "build",
    [getattr_chain, attrgetter_chain, methodcaller_chain, partial_chain, resolve_name_chain,
     locate_chain, nested_loader],
)  # fmt: skip
@pytest.mark.parametrize(
    "allow", [EVERYTHING, [("operator", "itemgetter")]], ids=["presets", "itemgetter"]
)
def test_gadget_chains_are_refused(
    build: Callable[[Path], bytes], allow: Any, marker: Path
) -> None:
    data = build(marker)
    if not data.endswith(b"."):
        data += b"."
    assert_attack(data, marker, allow, ForbiddenGlobal)


def test_modules_are_refused_even_when_listed() -> None:
    data = b"\x80\x04" + stack_global("collections", "abc") + b"."
    with pytest.raises(ForbiddenGlobal, match="is a module"):
        streampickle.loads(data, allow=[("collections", "abc")])


@pytest.fixture
def extensions() -> Iterator[dict[str, int]]:
    """Register ``touch`` under an EXT1, an EXT2 and an EXT4 code, and cache it (as any load
    of a pickle using the code does); unregister afterwards."""
    codes = {"EXT1": 0xF1, "EXT2": 0xF1F2, "EXT4": 0x7F1F2F3}
    for opcode, code in codes.items():
        copyreg.add_extension(ME, f"touch_{opcode.lower()}", code)
    try:
        for code in codes.values():
            copyreg._extension_cache[code] = touch  # type: ignore[attr-defined]
        yield codes
    finally:
        for opcode, code in codes.items():
            copyreg.remove_extension(ME, f"touch_{opcode.lower()}", code)


@pytest.mark.parametrize("opcode", ["EXT1", "EXT2", "EXT4"])
def test_extension_registry_is_refused(
    opcode: str, extensions: dict[str, int], marker: Path
) -> None:
    code = extensions[opcode]
    layouts = {"EXT1": (b"\x82", "<B"), "EXT2": (b"\x83", "<H"), "EXT4": (b"\x84", "<i")}
    byte, layout = layouts[opcode]
    ext = byte + struct.pack(layout, code)
    data = b"\x80\x02" + ext + string(str(marker)) + b"\x85R."
    # Even an allowlist that lists the registered pair: the cache bypasses find_class.
    name = f"touch_{opcode.lower()}"
    refused = assert_attack(data, marker, [(ME, name)], PolicyViolation)
    assert opcode in str(refused)
    assert required_globals(data) == [(ME, name)]


def test_frame_straddling_is_refused() -> None:
    body = short_unicode("hello") + b"."
    data = framed(body, frame_size=3)  # the frame ends inside SHORT_BINUNICODE
    assert pickle.loads(data) == "hello"  # CPython's C unpickler reads through the frame end
    with pytest.raises(PolicyViolation, match="straddles") as refused:
        streampickle.loads(data, allow=EVERYTHING)
    assert refused.value.position == 11
    with pytest.raises(pickle.UnpicklingError, match="exhausted before end of frame"):
        pickle._loads(data)  # type: ignore[attr-defined]  # the Python reference refuses it


def test_frame_straddling_cannot_smuggle_a_global(marker: Path) -> None:
    """An opcode whose argument runs past the frame end, hiding a GLOBAL from a frame scan."""
    attack = call(global_op("os", "system"), command(marker)) + b"."
    body = b"\x8c" + bytes([len(attack)]) + attack  # a string that "contains" the attack
    data = framed(body, frame_size=2)
    with pytest.raises(PolicyViolation):
        streampickle.loads(data, allow=EVERYTHING)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (framed(b"N" + b"\x95" + struct.pack("<Q", 1) + b"."), "inside another frame"),
        (framed(b"N.NN"), "runs past it"),
        (framed(b"N" + b"\x8e" + struct.pack("<Q", 1), frame_size=5) + b"x.", "straddles"),
    ],
    ids=["nested-frame", "frame-past-stop", "payload-header-split"],
)
def test_bad_framing_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(PolicyViolation, match=message):
        streampickle.loads(data, allow=[])


def test_payload_after_its_frame_is_accepted() -> None:
    """What the pickler writes for a large payload: header framed, payload unframed."""
    payload = b"p" * 100_000
    head = b"\x8e" + struct.pack("<Q", len(payload))
    data = framed(head) + payload + framed(b".")[2:]
    assert pickle.loads(data) == payload
    assert streampickle.loads(data, allow=[]) == payload


def test_an_unpickler_stays_refused_after_a_violation() -> None:
    bad = framed(short_unicode("hello") + b".", frame_size=3)
    unpickler = streampickle.Unpickler(io.BytesIO(bad + pickle.dumps(1)), allow=[])
    for _ in range(2):
        with pytest.raises(PolicyViolation):
            unpickler.load()


#: A refused global followed by what reads as a whole pickle: a list holding "wrong".
REFUSED_THEN_TAIL = b"\x80\x02c__main__\nRefused\n]X\x05\x00\x00\x00wronga."


def test_a_refusal_is_final_for_a_reused_unpickler() -> None:
    class Control(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if name == "Refused":
                raise pickle.UnpicklingError("refused")
            return super().find_class(module, name)

    # The control: plain pickle, reused after its refusal, reads the tail as the next pickle.
    control = Control(io.BytesIO(REFUSED_THEN_TAIL))
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        control.load()
    assert control.load() == ["wrong"]

    unpickler = streampickle.Unpickler(io.BytesIO(REFUSED_THEN_TAIL), allow=ALLOW_BUILTINS)
    with pytest.raises(ForbiddenGlobal) as first:
        unpickler.load()
    for _ in range(2):
        with pytest.raises(ForbiddenGlobal) as again:
            unpickler.load()
        assert again.value is first.value


def test_bad_data_inside_a_pickle_is_final_a_clean_end_is_not() -> None:
    bad = b"\x80\x02]h\x09X\x05\x00\x00\x00wronga."  # GET of a memo index never put
    unpickler = streampickle.Unpickler(io.BytesIO(bad + pickle.dumps(1, 2)), allow=[])
    with pytest.raises(pickle.UnpicklingError) as first:
        unpickler.load()
    with pytest.raises(pickle.UnpicklingError) as again:
        unpickler.load()
    assert again.value is first.value
    # A clean end of stream (EOFError before a pickle's first byte) is not a refusal.
    unpickler = streampickle.Unpickler(io.BytesIO(pickle.dumps(1, 2)), allow=[])
    assert unpickler.load() == 1
    with pytest.raises(EOFError) as end:
        unpickler.load()
    with pytest.raises(EOFError) as end_again:
        unpickler.load()
    assert end_again.value is not end.value


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_truncated_pickles_raise_the_usual_errors(protocol: int) -> None:
    data = pickle.dumps(DATA[9], protocol)
    with pytest.raises(EOFError):
        streampickle.loads(b"", allow=[])
    for cut in (1, 9, len(data) // 2, len(data) - 1):
        with pytest.raises((EOFError, pickle.UnpicklingError)):
            streampickle.loads(data[:cut], allow=EVERYTHING)


# --------------------------------------------------------------------------------------------
# Sans-IO and real files


def drive_sans_io(
    requests: Generator[Any, Any, Any], data: bytes, stream: io.BytesIO | None = None
) -> tuple[Any, list[type]]:
    """Answer *requests* from *data* (or *stream*, whose ``peek`` answers peeks; without one a
    peek gets nothing); return the object and the kinds of request made, leaving out the
    ``Read(0)`` turns the vetting reader offers (answered ``b""``, as any driver answers them)."""
    stream = io.BytesIO(data) if stream is None else stream
    kinds: list[type] = []
    reply: Any = None
    try:
        while True:
            request = requests.send(reply)
            if request != Read(0):
                kinds.append(type(request))
            if isinstance(request, Read):
                reply = stream.read(request.size)
            elif isinstance(request, ReadInto):
                reply = stream.readinto(request.buffer)
            elif isinstance(request, ReadLine):
                reply = stream.readline()
            elif isinstance(request, Peek) and hasattr(stream, "peek"):
                reply = stream.peek(request.size)
            else:
                reply = b""
    except StopIteration as stop:
        return stop.value, kinds


@pytest.mark.parametrize("peeks", [False, True], ids=["no peek", "peek"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_sans_io_restricted_loading(protocol: int, peeks: bool) -> None:
    """Answered peeks or not, the object is right and nothing past its STOP is read."""
    obj = DATA[0]
    data = pickle.dumps(obj, protocol)
    unpickler = streampickle.Unpickler(None, allow=DATA_ALLOW)
    stream = (PeekableBytes if peeks else io.BytesIO)(data + b"next")
    loaded, kinds = drive_sans_io(unpickler.iter_load(), b"", stream)
    assert loaded == obj
    assert stream.read() == b"next"
    assert set(kinds) <= {Read, ReadLine, Peek}
    assert streampickle.drive_load(unpickler.iter_load(), io.BytesIO(data)) == obj
    hostile = streampickle.Unpickler(None, allow=DATA_ALLOW)
    with pytest.raises(ForbiddenGlobal):
        drive_sans_io(hostile.iter_load(), call(global_op("os", "system"), b"S'x'\n") + b".")


def test_frames_are_read_whole_in_sans_io() -> None:
    data = pickle.dumps(list(range(100_000)), 4)
    frames = [arg for op, arg, _ in pickletools.genops(data) if op.name == "FRAME"]
    _, kinds = drive_sans_io(streampickle.Unpickler(None, allow=[]).iter_load(), data)
    # Per frame: the FRAME opcode, its length and its body; then the opcodes outside frames.
    assert len(kinds) <= 3 * len(frames) + 8


def test_restricted_load_over_a_socket(marker: Path) -> None:
    """Back-to-back pickles from a peer over a real socket; the hostile one is refused."""
    good = [DATA[0], DATA[2], DATA[9]]
    hostile = call(global_op("os", "system"), command(marker)) + b"."
    left, right = socket.socketpair()
    with left, right:

        def send() -> None:
            for obj in good:
                left.sendall(pickle.dumps(obj, 5))
            left.sendall(hostile)
            left.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        with right.makefile("rb") as reader:
            unpickler = streampickle.Unpickler(reader, allow=DATA_ALLOW)
            assert [unpickler.load() for _ in good] == good
            with pytest.raises(ForbiddenGlobal):
                unpickler.load()
        sender.join(10)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# The allowlist object


def test_allowlist_api() -> None:
    combined = ALLOW_DECIMAL | [("fractions", "Fraction")]
    assert isinstance(combined, Allowlist)
    assert ("decimal", "Decimal") in combined and ("fractions", "Fraction") in combined
    assert [("a", "b")] | ALLOW_DECIMAL == ALLOW_DECIMAL | [("a", "b")]
    assert len(combined) == 2 and list(combined) == sorted(combined.pairs)
    assert repr(combined) == "Allowlist([('decimal', 'Decimal'), ('fractions', 'Fraction')])"
    assert hash(Allowlist([("a", "b")])) == hash(Allowlist([("a", "b")]))
    for bad in [("a",), ("a", ""), ("a", 1), "a.b", ["a", "b"]]:
        with pytest.raises(TypeError, match="qualname"):
            Allowlist([bad])  # type: ignore[list-item]
    risky = ALLOW_DECIMAL | Allowlist([("posix", "getcwd")], allow_dangerous=True)
    assert risky.allow_dangerous and ("posix", "getcwd") in risky
    assert streampickle.loads(pickle.dumps(os.getcwd, 4), allow=risky) is os.getcwd


def test_allow_of_the_wrong_type_says_what_it_takes() -> None:
    data = pickle.dumps(1)
    for allow, hint in [
        ("builtins", "list them: [('builtins', 'name'), ...], or use a preset"),
        (True, "allow=[] permits no global at all; for a trusted peer leave allow= out"),
    ]:
        with pytest.raises(TypeError) as info:
            streampickle.loads(data, allow=allow)  # type: ignore[arg-type]
        assert "allow= takes an Allowlist or an iterable of (module, name) pairs" in str(info.value)
        assert hint in str(info.value)


def test_forbidden_global_says_how_to_allow_it() -> None:
    with pytest.raises(ForbiddenGlobal) as info:
        streampickle.loads(pickle.dumps(collections.OrderedDict()), allow=[])
    assert str(info.value).startswith(
        "global collections.OrderedDict is not in the allowlist; to allow it, add "
        "('collections', 'OrderedDict') to allow= (streampickle.required_globals(data) lists"
    )


def test_forbidden_global_is_an_unpickling_error() -> None:
    with pytest.raises(pickle.UnpicklingError, match=r"global collections\.deque is not in"):
        streampickle.loads(pickle.dumps(collections.deque()), allow=ALLOW_BUILTINS)


def test_unpickler_subclass_keeps_the_restriction() -> None:
    calls: list[tuple[str, str]] = []

    class Recording(streampickle.Unpickler):
        def find_class(self, module_name: str, global_name: str, /) -> Any:
            calls.append((module_name, global_name))
            return super().find_class(module_name, global_name)

    data = pickle.dumps([{1}, collections.deque()], 2)
    with pytest.raises(ForbiddenGlobal):
        Recording(io.BytesIO(data), allow=ALLOW_BUILTINS).load()
    assert calls == [("__builtin__", "set"), ("collections", "deque")]


# --------------------------------------------------------------------------------------------
# The globals lister


class Recorder(pickle.Unpickler):
    """The oracle: the globals the C unpickler actually asks for."""

    def __init__(self, file: Any) -> None:
        super().__init__(file)
        self.found: list[tuple[str, str]] = []

    def find_class(self, module_name: str, global_name: str, /) -> Any:
        if (module_name, global_name) not in self.found:
            self.found.append((module_name, global_name))
        return super().find_class(module_name, global_name)


LISTED = [Point(1, 2), Point.Inner(), Reduced(), DATA[0], DATA[2], DATA[5], Point(3, 4), {2}]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_required_globals_matches_what_find_class_is_asked(protocol: int) -> None:
    data = pickle.dumps(LISTED, protocol)
    recorder = Recorder(io.BytesIO(data))
    recorder.load()
    assert required_globals(data, fix_imports=False) == recorder.found
    assert required_globals(io.BytesIO(data + b"more")) == [
        map_python2(module, name, True) for module, name in recorder.found
    ]


def test_required_globals_follows_the_memo() -> None:
    # Names pushed, memoized, popped, and fetched back from the memo for STACK_GLOBAL.
    data = (
        b"\x80\x04"
        + short_unicode("collections") + b"\x94"  # memo 0
        + short_unicode("OrderedDict") + b"\x94"  # memo 1
        + b"00"  # POP both
        + b"(" + short_unicode("noise") + b"1"  # MARK ... POP_MARK
        + b"h\x00h\x01\x93)R"  # BINGET 0, BINGET 1, STACK_GLOBAL, (), REDUCE
        + b"."
    )  # fmt: skip
    assert pickle.loads(data) == collections.OrderedDict()
    assert required_globals(data) == [("collections", "OrderedDict")]


@pytest.mark.parametrize(
    "data",
    [b"\x80\x04K\x01K\x02\x93.", b"\x80\x04\x93.", b"\x80\x04h\x05.", b"\x80\x04(\x93."],
    ids=["ints", "empty-stack", "missing-memo", "mark"],
)
def test_required_globals_rejects_what_it_cannot_name(data: bytes) -> None:
    with pytest.raises(pickle.UnpicklingError):
        required_globals(data)


# --------------------------------------------------------------------------------------------
# Restricted loading in the async API, over real sockets


@pytest.mark.anyio
@pytest.mark.parametrize("protocol", [2, 5])
async def test_aload_and_aiter_load_restricted(
    protocol: int, marker: Path, anyio_backend: Any
) -> None:
    from netutil import while_sending

    good = [DATA[0], DATA[2], DATA[9]]
    data = b"".join(pickle.dumps(obj, protocol) for obj in good)
    hostile = call(global_op("os", "system"), command(marker)) + b"."

    async def first(stream: Any) -> Any:
        return await streampickle.aload(stream, allow=DATA_ALLOW)

    async def collect(stream: Any) -> list[Any]:
        return [obj async for obj in streampickle.aiter_load(stream, allow=DATA_ALLOW)]

    assert await while_sending(data, first) == good[0]
    assert await while_sending(data, collect) == good
    with pytest.raises(ForbiddenGlobal) as refused:
        await while_sending(data + hostile, collect)
    assert (refused.value.module, refused.value.name) == ("os", "system")
    assert not await anyio.Path(marker).exists()


@pytest.mark.anyio
async def test_pickle_stream_restricted(marker: Path, anyio_backend: Any) -> None:
    from netutil import HANG_GUARD, tcp_pair

    hostile = call(global_op("os", "system"), command(marker)) + b"."
    async with tcp_pair() as (client, server):
        receiver = streampickle.PickleStream(server, allow=DATA_ALLOW)
        with anyio.fail_after(HANG_GUARD):
            await streampickle.PickleStream(client).send(DATA[2])
            assert await receiver.receive() == DATA[2]
            await client.send(hostile)
            with pytest.raises(ForbiddenGlobal):
                await receiver.receive()
            await client.send(pickle.dumps(1))
            with pytest.raises(anyio.BrokenResourceError):  # the refusal stays in force
                await receiver.receive()
    assert not await anyio.Path(marker).exists()


@pytest.mark.anyio
async def test_pickle_stream_gives_each_object_a_fresh_memo(anyio_backend: Any) -> None:
    """pickle's Unpickler keeps its memo across load() calls: one per stream would resolve the
    second object's memo references to the first object's entries."""
    from netutil import tcp_pair

    async with tcp_pair() as (client, server):
        sender = streampickle.PickleStream(client, protocol=4)
        receiver = streampickle.PickleStream(server, allow=[])
        objects = [["x", "x", ("t",)], ["y", "y"]]
        for obj in objects:
            await sender.send(obj)
        assert [await receiver.receive() for _ in objects] == objects


@pytest.mark.anyio
async def test_async_allow_needs_a_streampickle_unpickler(anyio_backend: Any) -> None:
    from netutil import HANG_GUARD, tcp_pair

    class Plain(pickle.Unpickler):
        pass

    async with tcp_pair() as (_, server):
        with anyio.fail_after(HANG_GUARD), pytest.raises(TypeError, match="Unpickler subclass"):
            await streampickle.aload(server, allow=[], unpickler_class=Plain)


def test_iter_loads_restricted() -> None:
    data = pickle.dumps(DATA[0], 5)
    loaded, kinds = drive_sans_io(streampickle.iter_loads(allow=DATA_ALLOW), data)
    assert loaded == DATA[0]
    assert set(kinds) <= {Read, ReadLine, Peek}
    with pytest.raises(ForbiddenGlobal):
        drive_sans_io(streampickle.iter_loads(allow=[]), data)


@pytest.mark.parametrize(
    ("data", "cause"),
    [
        (b"\x80\x04}]Ns.", TypeError),  # a list as a dict key: unhashable
        (b"\x80\x04" + stack_global("builtins", "complex") + b"\x8c\x02zz\x85R.", ValueError),
        (b"\x80\x04" + stack_global("builtins", "range") + b")R.", TypeError),
        (b"\x80\x04N}b.", AttributeError),  # BUILD on None
    ],
    ids=["unhashable", "allowed-callable-value", "allowed-callable-type", "build"],
)
def test_bad_data_raises_only_unpickling_errors(data: bytes, cause: type[Exception]) -> None:
    with pytest.raises(cause):
        pickle.loads(data)  # what plain pickle raises
    with pytest.raises(pickle.UnpicklingError, match="bad pickle data") as refused:
        streampickle.loads(data, allow=ALLOW_BUILTINS)
    assert isinstance(refused.value.__cause__, cause)


def test_file_errors_pass_through_a_restricted_load() -> None:
    class Failing(io.BytesIO):
        def read(self, size: int | None = -1, /) -> bytes:
            raise ValueError("the file broke")

    with pytest.raises(ValueError, match="the file broke"):
        streampickle.load(Failing(b"x"), allow=[])
