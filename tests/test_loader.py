"""The sans-IO incremental loader, fed whole, byte by byte, with trailing data, truncated."""

from __future__ import annotations

import io
import pickle
import random
from collections.abc import Generator
from typing import Any

import pytest

import streampickle
from corpus import Plain
from leaks import GreenletLedger
from streampickle import Peek, Read, ReadInto, ReadLine, Request

PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)
OBJ = [Plain("a", [1, 2.5]), {"k": (None, True)}, "x" * 70_000, b"y" * 70_000, list(range(3000))]


class Feeder:
    """A sans-IO driver over bytes that arrive in pieces of at most *piece* bytes.

    It answers ``Peek`` only with what has "arrived" (its buffer), as an async driver would,
    and logs every request so tests can see what the loader asked for.
    """

    def __init__(self, data: bytes, piece: int | None = None, seed: int = 0) -> None:
        self.data, self.pos, self.arrived = data, 0, 0
        self.piece, self.rng = piece, random.Random(seed)
        self.log: list[Request] = []

    def _arrive(self) -> None:
        step = self.piece or len(self.data) or 1
        self.arrived = min(len(self.data), self.arrived + self.rng.randint(1, step))

    def _take(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        self.arrived = max(self.arrived, self.pos)
        return out

    def answer(self, request: Request) -> Any:
        self.log.append(request)
        if isinstance(request, Peek):
            if self.arrived == self.pos:
                self._arrive()
            return self.data[self.pos : min(self.arrived, self.pos + request.size)]
        if isinstance(request, Read):
            return self._take(request.size)
        if isinstance(request, ReadInto):
            chunk = self._take(len(request.buffer))
            request.buffer[: len(chunk)] = chunk
            return len(chunk)
        assert isinstance(request, ReadLine)
        end = self.data.find(b"\n", self.pos)
        return self._take((end if end >= 0 else len(self.data)) - self.pos + 1)

    def load(self, requests: Generator[Request, Any, Any] | None = None) -> Any:
        gen = requests or streampickle.iter_loads()
        reply: Any = None
        try:
            while True:
                reply = self.answer(gen.send(reply))
        except StopIteration as stop:
            return stop.value


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("piece", [None, 1, 7, 4096])
def test_loads_whatever_the_arrival_pattern_and_stops_at_stop(
    protocol: int, piece: int | None
) -> None:
    data = pickle.dumps(OBJ, protocol)
    feeder = Feeder(data + b"NEXT", piece=piece, seed=protocol)
    assert feeder.load() == OBJ
    assert feeder.pos == len(data)  # consumed exactly the pickle; "NEXT" is left


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_back_to_back_pickles_from_one_sync_file(protocol: int) -> None:
    objs = [OBJ, "second", {3}]
    for file_type in (io.BytesIO, lambda b: io.BufferedReader(io.BytesIO(b), 1024)):
        f = file_type(b"".join(pickle.dumps(o, protocol) for o in objs))
        assert [streampickle.drive_load(streampickle.iter_loads(), f) for _ in objs] == objs
        with pytest.raises(EOFError):
            streampickle.drive_load(streampickle.iter_loads(), f)


@pytest.mark.parametrize("protocol", [4, 5])
def test_frames_are_read_whole_and_large_payloads_into_their_buffer(protocol: int) -> None:
    payload = b"p" * 500_000
    data = pickle.dumps([list(range(50_000)), payload], protocol)
    feeder = Feeder(data)
    feeder.load()
    frame_reads = [r.size for r in feeder.log if isinstance(r, Read)]
    assert max(frame_reads) > 60_000  # a whole frame per read, not an opcode at a time
    into = [len(r.buffer) for r in feeder.log if isinstance(r, ReadInto)]
    assert into and max(into) > len(payload) - 140_000  # the payload lands in its final buffer


def test_protocol_0_readline_requests() -> None:
    feeder = Feeder(pickle.dumps(["text", 12, 3.5], 0), piece=1)
    assert feeder.load() == ["text", 12, 3.5]
    assert any(isinstance(r, ReadLine) for r in feeder.log)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_truncation_fails_cleanly(protocol: int) -> None:
    data = pickle.dumps([Plain(1, "two"), b"bytes", 3.0, {4: 5}], protocol)
    for cut in range(len(data)):
        with pytest.raises((pickle.UnpicklingError, EOFError)):
            Feeder(data[:cut], piece=3).load()


def test_empty_stream_is_eof() -> None:
    with pytest.raises(EOFError, match="Ran out of input"):
        Feeder(b"").load()


def test_garbage_is_unpickling_error() -> None:
    with pytest.raises(pickle.UnpicklingError):
        Feeder(b"\xff\xfe not a pickle").load()


def test_unpickler_subclass_hooks_run_in_the_loader() -> None:
    class Loader(streampickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if name == "Plain":
                return "replaced"
            return super().find_class(module, name)

        def persistent_load(self, pid: Any) -> Any:
            return f"loaded {pid}"

    class Saver(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            return "P" if obj == "persist me" else None

    f = io.BytesIO()
    Saver(f, 2).dump([Plain, "persist me"])
    expected = ["replaced", "loaded P"]
    assert Feeder(f.getvalue()).load(Loader(None).iter_load()) == expected
    assert Feeder(f.getvalue()).load(streampickle.iter_loads(unpickler_class=Loader)) == expected


def test_out_of_band_buffers() -> None:
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(pickle.PickleBuffer(b"oob" * 1000), 5, buffer_callback=buffers.append)
    loaded = Feeder(data).load(streampickle.iter_loads(buffers=buffers))
    assert bytes(loaded) == b"oob" * 1000


def test_encoding_for_python2_strings() -> None:
    py2 = b"U\x04caf\xe9q\x00."  # SHORT_BINSTRING from Python 2 with a latin-1 byte
    assert Feeder(py2).load(streampickle.iter_loads(encoding="latin1")) == "café"
    assert Feeder(py2).load(streampickle.iter_loads(encoding="bytes")) == b"caf\xe9"


def test_unpickler_memo_kept_across_iter_loads() -> None:
    f = io.BytesIO()
    pickler = pickle.Pickler(f, 2)
    shared = ["shared"]
    pickler.dump(shared)
    pickler.dump(shared)  # the second pickle is a memo reference to the first
    feeder = Feeder(f.getvalue())
    unpickler = streampickle.Unpickler(None)
    first = feeder.load(unpickler.iter_load())
    assert feeder.load(unpickler.iter_load()) is first


def test_early_close_of_the_loader_leaves_no_greenlet(
    no_leaked_greenlets: GreenletLedger,
) -> None:
    gen = streampickle.iter_loads()
    assert isinstance(next(gen), Peek | Read)
    assert no_leaked_greenlets.leaked() == 1  # the unpickler waits on its worker
    gen.close()
    assert no_leaked_greenlets.leaked() == 0


def test_unpickler_without_file() -> None:
    with pytest.raises(RuntimeError, match="without a file"):
        streampickle.Unpickler(None).load()
    with pytest.raises(TypeError, match="'read' and 'readline'"):
        streampickle.Unpickler(object())


def test_file_with_only_read_gets_readline_emulated() -> None:
    class OnlyRead:
        def __init__(self, data: bytes) -> None:
            self.buf = io.BytesIO(data)

        def read(self, n: int) -> bytes:
            return self.buf.read(n)

    data = pickle.dumps(["protocol", 0, "text"], 0)
    f = OnlyRead(data + b"rest")
    assert streampickle.drive_load(streampickle.iter_loads(), f) == ["protocol", 0, "text"]
    assert f.read(100) == b"rest"
