"""The command line (``python -m streampickle``: demo, inspect) and the progress hooks."""

from __future__ import annotations

import collections
import io
import itertools
import json
import os
import pickle
import pickletools
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streampickle
from netutil import tcp_pair
from streampickle import Allowlist, PickleStream
from streampickle.__main__ import main
from streampickle._inspect import inspect_stream

PYTHON = [sys.executable, "-m", "streampickle"]


def records(count: int) -> list[dict[str, Any]]:
    return [{"id": i, "name": f"record {i}", "tags": {"a", "b"}} for i in range(count)]


def run_cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """``python -m streampickle ARGS`` in a subprocess (hang guard: 60 s)."""
    return subprocess.run(
        [*PYTHON, *args], input=stdin, capture_output=True, timeout=60, check=False
    )


def one_line_error(err: str, command: str) -> str:
    """Check *err* is one error line naming *command*, no traceback; return the message."""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    prefix = f"streampickle {command}: error: "
    assert lines[0].startswith(prefix), err
    return lines[0][len(prefix) :]


# ---------------------------------------------------------------------------------------------
# Progress hooks, over real loopback TCP


def check_counts(counts: list[int], total: int) -> None:
    assert counts, "progress was never called"
    assert all(a < b for a, b in itertools.pairwise(counts)), "counts must strictly increase"
    assert counts[-1] == total


@pytest.mark.anyio
async def test_adump_and_aload_progress_over_tcp() -> None:
    obj: dict[str, Any] = {
        "rows": records(5000),
        "blob": os.urandom(3 << 20),
    }  # frames, then a 3 MiB payload read in pieces
    expected = pickle.dumps(obj, 5)
    sent: list[int] = []
    received: list[int] = []
    async with tcp_pair() as (client, server), anyio.create_task_group() as group:
        group.start_soon(lambda: streampickle.adump(obj, client, 5, progress=sent.append))
        with anyio.fail_after(30):
            got = await streampickle.aload(server, progress=received.append)
    assert got == obj
    check_counts(sent, len(expected))
    check_counts(received, len(expected))
    # The payload is reported as its pieces arrive, not only once it is whole.
    payload_start = expected.index(obj["blob"][:64])
    inside = [n for n in received if payload_start < n < payload_start + len(obj["blob"])]
    assert len(inside) >= 2, received[-10:]


@pytest.mark.anyio
async def test_aiter_load_progress_counts_the_whole_stream(tmp_path: Path) -> None:
    # Protocols 2 and 4/5 take the two read modes of the loader (read-ahead and exact).
    objects = [records(300), {"x": 1}, records(2000)]
    data = [pickle.dumps(obj, protocol) for obj, protocol in zip(objects, (2, 4, 5), strict=True)]
    path = tmp_path / "stream.pkl"
    path.write_bytes(b"".join(data))
    counts: list[int] = []
    seen_at: list[int] = []
    async with await anyio.open_file(path, "rb") as file:
        async for obj in streampickle.aiter_load(file, progress=counts.append):
            seen_at.append(counts[-1])
            assert obj == objects[len(seen_at) - 1]
    check_counts(counts, path.stat().st_size)
    boundaries = [sum(map(len, data[: i + 1])) for i in range(len(data))]
    assert seen_at == boundaries  # each object arrives once its last byte was counted


@pytest.mark.anyio
async def test_pickle_stream_progress_is_per_call() -> None:
    objects = [records(3000), "small"]
    async with tcp_pair() as (client, server):
        sender, receiver = PickleStream(client), PickleStream(server)
        for obj in objects:
            sent: list[int] = []
            received: list[int] = []
            async with anyio.create_task_group() as group:
                group.start_soon(lambda: sender.send(obj, progress=sent.append))  # noqa: B023
                with anyio.fail_after(30):
                    assert await receiver.receive(progress=received.append) == obj
            size = len(pickle.dumps(obj, sender.protocol))
            check_counts(sent, size)
            check_counts(received, size)


@pytest.mark.anyio
async def test_progress_with_tqdm(monkeypatch: pytest.MonkeyPatch) -> None:
    from tqdm import tqdm

    monkeypatch.setattr(tqdm, "monitor_interval", 0)  # no monitor thread
    obj = records(20_000)
    out = io.StringIO()
    # The receiver cannot know the total: an open-ended bar, advanced by the difference.
    with tqdm(total=None, unit="B", unit_scale=True, file=out, mininterval=0) as bar:
        async with tcp_pair() as (client, server), anyio.create_task_group() as group:
            group.start_soon(lambda: streampickle.adump(obj, client, 5))
            got = await streampickle.aload(server, progress=lambda n: bar.update(n - bar.n))
        updates = bar.n
    assert got == obj
    assert updates == len(pickle.dumps(obj, 5))
    assert out.getvalue().rsplit("\r", 1)[-1].startswith(tqdm.format_sizeof(updates) + "B ")


@pytest.mark.anyio
async def test_progress_with_rich() -> None:
    from rich.console import Console
    from rich.progress import Progress

    obj = records(20_000)
    console = Console(file=io.StringIO(), force_terminal=False, width=100)
    with Progress(console=console, auto_refresh=False) as bars:
        receiving = bars.add_task("receiving", total=None)
        sending = bars.add_task("sending", total=None)
        async with tcp_pair() as (client, server), anyio.create_task_group() as group:

            async def send() -> None:
                sent = await streampickle.adump(
                    obj, client, 5, progress=lambda n: bars.update(sending, completed=n)
                )
                bars.update(sending, total=sent)  # the sender knows the total at the end

            group.start_soon(send)
            got = await streampickle.aload(
                server, progress=lambda n: bars.update(receiving, completed=n)
            )
    size = len(pickle.dumps(obj, 5))
    assert got == obj
    assert [task.completed for task in bars.tasks] == [size, size]
    assert bars.tasks[1].finished and not bars.tasks[0].finished  # only one total is known
    assert "receiving" in console.file.getvalue()  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------
# inspect


SAMPLE: dict[str, Any] = {
    "set": {1, 2},
    "ordered": collections.OrderedDict(a=1),
    "rows": records(2000),
    "text": "é" * 40_000,  # 80 KB of UTF-8: a large str payload
    "blob": b"\x00" * 100_000,  # a large bytes payload
}


def inspect_json(capsys: pytest.CaptureFixture[str], *args: str, status: int = 0) -> dict[str, Any]:
    assert main(["inspect", *args, "--json"]) == status
    document: dict[str, Any] = json.loads(capsys.readouterr().out)
    return document


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_inspect_each_protocol(
    protocol: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = pickle.dumps(SAMPLE, protocol)
    path = tmp_path / "one.pkl"
    path.write_bytes(data)
    document = inspect_json(capsys, str(path))
    assert document["count"] == 1 and document["error"] is None
    assert document["total_bytes"] == len(data)
    [report] = document["pickles"]
    assert (report["offset"], report["size"], report["protocol"]) == (0, len(data), protocol)
    # pickletools is the oracle for the opcodes and frames.
    ops: list[tuple[str, Any]] = [(op.name, arg) for op, arg, _ in pickletools.genops(data)]
    assert report["opcodes"] == dict(collections.Counter(name for name, _ in ops))
    assert report["opcode_count"] == len(ops)
    frames = [arg for name, arg in ops if name == "FRAME"]
    assert report["frames"]["count"] == len(frames) and report["frames"]["total"] == sum(frames)
    if protocol >= 4:
        assert frames and report["frames"]["max"] == max(frames)
    # Protocol 0 has no length-prefixed payloads; 1 and 2 pickle the blob as a str argument
    # of _codecs.encode, of the same size.
    payloads = report["large_payloads"]["sizes"]
    assert payloads == ([] if protocol == 0 else [80_000, 100_000])
    # The globals are required_globals', and the printed allowlist loads the pickle.
    assert report["globals"] == [list(pair) for pair in streampickle.required_globals(data)]
    allowlist = eval(report["allowlist"], {"Allowlist": Allowlist})
    assert streampickle.loads(data, allow=allowlist) == SAMPLE


def test_inspect_stream_of_pickles_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    buffers: list[pickle.PickleBuffer] = []
    parts = [
        pickle.dumps(SAMPLE, 5),
        pickle.dumps([b"x" * (3 << 20)], 4),  # a payload inspect skips over
        pickle.dumps(pickle.PickleBuffer(b"y" * 1000), 5, buffer_callback=buffers.append),
        pickle.dumps(None, 0),
    ]
    path = tmp_path / "many.pkl"
    path.write_bytes(b"".join(parts))
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    offsets = [sum(map(len, parts[:i])) for i in range(len(parts))]
    for number, (offset, part) in enumerate(zip(offsets, parts, strict=True), 1):
        assert f"pickle {number}: offset {offset:,}, {len(part):,} bytes" in out
    assert f"total: 4 pickles, {path.stat().st_size:,} bytes" in out
    assert "large payloads: 1 (smallest 3,145,728, largest 3,145,728" in out
    assert "out-of-band buffers: 1" in out
    assert out.count("globals: none (allow=[] is enough for them)") == 3
    assert out.count("limits: within Limits' defaults (what allow= checks)") == 4
    allowlists = [line.strip() for line in out.splitlines() if "Allowlist(" in line]
    assert allowlists == ["Allowlist([('collections', 'OrderedDict')])"]


def test_inspect_stream_of_pickles_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parts = [pickle.dumps(obj, protocol) for protocol, obj in enumerate([1, "a", [b"z"] * 3])]
    path = tmp_path / "many.pkl"
    path.write_bytes(b"".join(parts))
    document = inspect_json(capsys, str(path))
    assert document["count"] == 3 and document["error"] is None
    assert [p["size"] for p in document["pickles"]] == list(map(len, parts))
    assert [p["offset"] for p in document["pickles"]] == [0, 4, 4 + 9]
    assert [p["protocol"] for p in document["pickles"]] == [0, 1, 2]
    keys = {"offset", "size", "protocol", "frames", "large_payloads", "out_of_band_buffers"}
    keys |= {"opcodes", "opcode_count", "globals", "dangerous_globals", "allowlist"}
    assert all(set(p) == keys | {"limits_needed"} for p in document["pickles"])
    assert all(p["limits_needed"] == {} for p in document["pickles"])


def test_inspect_prints_the_limits_a_pickle_needs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A payload over max_payload_size (64 MiB): inspect names the keyword and the value, and
    a restricted load with exactly that passes (without it, LimitExceeded)."""
    data = pickle.dumps(b"p" * (65 << 20), 5)
    path = tmp_path / "big.pkl"
    path.write_bytes(data)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    needed = 65 << 20
    assert f"to load it under allow=, also pass max_payload_size={needed}" in out
    assert inspect_json(capsys, str(path))["pickles"][0]["limits_needed"] == {
        "max_payload_size": needed
    }
    with pytest.raises(streampickle.LimitExceeded, match="max_payload_size"):
        streampickle.loads(data, allow=[])
    assert streampickle.loads(data, allow=[], max_payload_size=needed) == b"p" * needed


def test_inspect_dangerous_global(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = pickle.dumps(os.system, 4)
    path = tmp_path / "evil.pkl"
    path.write_bytes(data)
    report = inspect_json(capsys, str(path))["pickles"][0]
    assert report["dangerous_globals"] == report["globals"] == [[os.name, "system"]]
    assert eval(report["allowlist"], {"Allowlist": Allowlist}).allow_dangerous
    assert main(["inspect", str(path)]) == 0
    assert f"warning: {os.name}.system is known to be dangerous" in capsys.readouterr().out


def test_inspect_prints_names_from_the_pickle_safely(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A name holding terminal escape sequences (clear the screen, set the title): shown
    # escaped, never written raw to the terminal.
    name = "\x1b[2J\x1b]0;pwned\x07system"
    path = tmp_path / "escapes.pkl"
    path.write_bytes(b"\x80\x02cos\n" + name.encode() + b"\n)R.")
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "warning: os.\\x1b[2J\\x1b]0;pwned\\x07system is known to be dangerous" in out


def test_inspect_stdin_through_a_pipe() -> None:
    parts = [pickle.dumps(SAMPLE, 5), pickle.dumps([1, 2], 2)]
    done = run_cli("inspect", "-", "--json", stdin=b"".join(parts))
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert [p["size"] for p in document["pickles"]] == list(map(len, parts))
    assert done.stderr == b""


def test_inspect_stdin_in_process(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = pickle.dumps({"a": 1}, 3)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert inspect_json(capsys, "-")["pickles"][0]["size"] == len(data)


GOOD = pickle.dumps(SAMPLE, 5)


@pytest.mark.parametrize(
    ("data", "message", "good"),
    [
        (GOOD[:-1], "pickle 1: malformed pickle: pickle exhausted before seeing STOP", 0),
        (GOOD[:1000], "pickle 1: malformed pickle:", 0),
        (b"hello, world", "pickle 1: not a pickle: it starts with b'hello, world' at offset 0", 0),
        (b"\x80\x05\xff", "pickle 1: malformed pickle: at position 2, opcode b'\\xff' unknown", 0),
        (b"", "the input is empty: no pickle in it", 0),
        (
            GOOD + b"\x00junk",
            f"pickle 2: not a pickle: it starts with b'\\x00junk' at offset {len(GOOD)}",
            1,
        ),
        (b"a.", "pickle 1: not a pickle: it starts with b'a.'", 0),
        (b"\x80\x02a.", "pickle 1: malformed pickle: APPEND at offset 2 underflows the stack", 0),
        # A claimed 1 TiB payload: read in pieces, never allocated (a MemoryError before).
        (
            b"\x80\x04\x8d" + (1 << 40).to_bytes(8, "little") + b"abc",
            "pickle 1: malformed pickle: expected 1099511627776 bytes in a unicodestring8",
            0,
        ),
    ],
    ids=[
        "truncated",
        "frame",
        "garbage",
        "opcode",
        "empty",
        "trailing",
        "not-a-start",
        "underflow",
        "claim",
    ],
)
def test_inspect_bad_input(
    data: bytes, message: str, good: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.pkl"
    path.write_bytes(data)
    assert main(["inspect", str(path)]) == 1
    captured = capsys.readouterr()
    assert one_line_error(captured.err, "inspect").startswith(message)
    assert captured.out.count("pickle ") == good  # the good pickles before it are shown
    document = inspect_json(capsys, str(path), status=1)
    assert document["count"] == good and document["error"].startswith(message)


@settings(max_examples=300, deadline=None)
@given(
    seed=st.sampled_from([pickle.dumps(SAMPLE["rows"][:50], p) for p in range(6)]),
    edits=st.lists(st.tuples(st.integers(0, 5000), st.binary(max_size=8), st.integers(0, 8))),
)
def test_inspect_any_input_reports_or_refuses(seed: bytes, edits: list[Any]) -> None:
    """Whatever the bytes, inspect yields reports or raises UnpicklingError."""
    data = bytearray(seed)
    for position, insert, delete in edits:
        data[position : position + delete] = insert
    try:
        reports = list(inspect_stream(io.BytesIO(bytes(data))))
    except pickle.UnpicklingError:
        return  # any other exception fails the test
    assert sum(report.size for report in reports) == len(data)


def test_inspect_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(tmp_path / "nope.pkl")]) == 1
    captured = capsys.readouterr()
    assert "No such file or directory" in one_line_error(captured.err, "inspect")
    assert captured.out == ""


def test_inspect_bad_input_in_a_subprocess() -> None:
    done = run_cli("inspect", "-", stdin=b"\x80\x04\x95\x10")
    assert done.returncode == 1
    assert one_line_error(done.stderr.decode(), "inspect").startswith("pickle 1: malformed")


# ---------------------------------------------------------------------------------------------
# demo

DEMO_KEYS = {"bytes", "wall_s", "peak_memory_mb", "max_stall_ms", "first_byte_ms", "intact"}
DEMO_DOCUMENT = {"backend", "payload", "records", "mb", "memory_measure", "results"}
DEMO_ADDED = {"runs", "floor_s", "floor", "verdict", "samples"}
DEMO_ADDED_RESULTS = {
    "wall_s_range",
    "sender_peak_memory_mb",
    "receiver_peak_memory_mb",
    "sender_max_stall_ms",
    "receiver_max_stall_ms",
    "sender_cpu_s",
    "receiver_cpu_s",
}


def check_demo(document: dict[str, Any], backend: str, size: int, runs: int = 1) -> None:
    # The keys from before the demo ran its ends in separate processes keep their meaning
    # (now medians over the runs); the new ones are added beside them.
    assert set(document) == DEMO_DOCUMENT | DEMO_ADDED
    assert document["backend"] == backend
    assert document["runs"] == runs
    assert set(document["results"]) == {"streampickle", "naive"}
    for result in document["results"].values():
        assert set(result) == DEMO_KEYS | DEMO_ADDED_RESULTS
        assert result["intact"] is True
        assert result["bytes"] == size
        assert result["wall_s"] > 0 and result["first_byte_ms"] > 0
        assert result["max_stall_ms"] >= 0
        low, high = result["wall_s_range"]
        assert low <= result["wall_s"] <= high
        if document["memory_measure"] is not None:
            assert result["peak_memory_mb"] >= 0
    # One warm-up each way, then *runs* each way, the order swapped every other round.
    samples = document["samples"]
    assert [(s["method"], s["warmup"]) for s in samples[:2]] == [
        ("streampickle", True),
        ("naive", True),
    ]
    counted = [s["method"] for s in samples if not s["warmup"]]
    assert sorted(counted) == sorted(["streampickle", "naive"] * runs)
    assert all(s["intact"] and s["bytes"] == size for s in samples)
    assert document["floor_s"] > 0 and len(document["floor"]["samples"]) == runs
    assert document["verdict"].startswith("streampickle: ")
    assert "x the naive time" in document["verdict"] and "floor" in document["verdict"]


def demo_records(count: int) -> Any:
    from streampickle._cli import parser
    from streampickle._cli.demo_child import build as _build

    return _build(parser().parse_args(["demo", "--records", str(count)]))


BACKENDS = ["asyncio", "trio", pytest.param("uvloop", marks=pytest.mark.skipif(
    sys.platform == "win32", reason="uvloop does not run on Windows"))]  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
def test_demo_json(backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["demo", "--records", "3000", "--runs", "1", "--backend", backend, "--json"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    size = len(pickle.dumps(demo_records(3000), 5))
    check_demo(json.loads(captured.out), backend, size)
    assert captured.err == ""  # stderr is not a terminal: no progress line by default


def test_demo_table_and_progress(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--records", "3000", "--runs", "2", "--progress"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == "payload: 3,000 records, protocol 5, loopback TCP, backend asyncio"
    assert lines[1] == (
        "sender and receiver in fresh processes; medians of 2 runs each way, after a warm-up"
    )
    assert lines[2].split() == ["streampickle", "naive"]
    labels = [line[:24].strip() for line in lines[3:-3]]
    assert labels == [
        "pickle size (MB)",
        "wall time (s)",
        "range over runs (s)",
        "peak memory (MB, RSS)",
        "sender + receiver",
        "longest loop stall (ms)",
        "time to first byte (ms)",
        "CPU time (s)",
        "sender + receiver",
    ]
    assert lines[-3].startswith("receiver's floor (pickle.loads of the same bytes, fresh process)")
    assert lines[-2] == "the object arrived intact both ways"
    assert lines[-1].startswith("streampickle: ") and "x the receiver's floor" in lines[-1]
    # The progress hooks of both ends (in their own processes) fed the line: the last state of
    # each transfer shows every byte sent and received.
    megabytes = len(pickle.dumps(demo_records(3000), 5)) / 1e6
    finals = [line for line in captured.err.splitlines() if "received" in line]
    for label in ("streampickle (warm-up)", "naive (warm-up)", "streampickle", "naive"):
        last = [line for line in finals if line.startswith(label + ":")][-1]
        assert f"sent {megabytes:.1f} MB, received {megabytes:.1f} MB" in last


def test_demo_arrays(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("numpy")
    assert main(["demo", "--payload", "arrays", "--mb", "4", "--runs", "1", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert (document["payload"], document["mb"], document["records"]) == ("arrays", 4, None)
    assert all(r["intact"] and r["bytes"] > 4 << 20 for r in document["results"].values())
    assert all(s["intact"] for s in document["samples"])


def test_demo_in_a_subprocess() -> None:
    done = run_cli("demo", "--records", "2000", "--runs", "1", "--backend", "trio", "--json")
    assert done.returncode == 0, done.stderr
    check_demo(json.loads(done.stdout), "trio", len(pickle.dumps(demo_records(2000), 5)))


def test_demo_child_failure_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from streampickle._cli import demo

    # A receiver that cannot start (an unknown role option) fails the demo with one line.
    argv = ["demo", "--records", "100", "--runs", "1"]
    real = demo._start

    def broken(*args: Any, **extra: Any) -> Any:
        return real(*args, **{**extra, "method": "bogus"})

    demo._start = broken
    try:
        assert main(argv) == 1
    finally:
        demo._start = real
    assert one_line_error(capsys.readouterr().err, "demo").startswith("a demo process failed")


# ---------------------------------------------------------------------------------------------
# help and usage


def test_help_in_a_subprocess() -> None:
    done = run_cli("--help")
    assert done.returncode == 0
    out = done.stdout.decode()
    assert "demo" in out and "inspect" in out and "--json" in out
    for command, words in (("demo", "peak memory"), ("inspect", "Allowlist")):
        sub = run_cli(command, "--help")
        assert sub.returncode == 0 and words in sub.stdout.decode()


def test_demo_help_says_mb_counts_mib(capsys: pytest.CaptureFixture[str]) -> None:
    """--mb 100 makes 104.9 MB of pickle: the help says the option's unit and the table's."""
    assert main(["demo", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "MiB (2**20 bytes) of arrays" in out and "MB are 10**6 bytes" in out


@pytest.mark.parametrize(
    "argv", [[], ["frobnicate"], ["demo", "--records", "0"], ["demo", "--backend", "curio"]]
)
def test_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "usage: streampickle" in capsys.readouterr().err
