"""The examples run end to end (with small sizes), on asyncio, uvloop and trio."""

from __future__ import annotations

import datetime
import io
import os
import pickle
import runpy
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest

import streampickle

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


# Each example runs end to end at a small size, its results checked against an oracle
# computed here (stdlib pickle for bytes on the wire or on disk).


def example(name: str) -> dict[str, Any]:
    """The example's module namespace (its ``__main__`` block does not run)."""
    return runpy.run_path(str(EXAMPLES / name))


def summary(job: dict[str, Any]) -> dict[str, Any]:
    """What the asyncio and trio servers must answer to *job*."""
    values = job["values"]
    return {
        "id": job["id"],
        "count": len(values),
        "total": sum(values),
        "low": min(values),
        "high": max(values),
    }


@pytest.mark.anyio
@pytest.mark.backends("asyncio", "uvloop")  # asyncio_server.py uses asyncio's own streams
async def test_asyncio_server(capsys: pytest.CaptureFixture[str]) -> None:
    demo = example("asyncio_server.py")
    results = await demo["main"](clients=3, jobs=4, values=500)
    assert len(results) == 3
    for client, answers in enumerate(results):
        jobs = demo["make_jobs"](client, 4, 500)
        assert answers == [summary(job) for job in jobs]
        assert {answer["id"] for answer in answers} == {(client, job) for job in range(4)}
    out = capsys.readouterr().out
    assert out.count("answers, all correct") == 3
    assert "server shut down cleanly" in out


@pytest.mark.anyio
@pytest.mark.backends("asyncio", "uvloop")  # asyncio_server.py uses asyncio's own streams
async def test_asyncio_server_speaks_plain_pickle() -> None:
    """A client with nothing but stdlib pickle and asyncio streams gets its answers."""
    import asyncio

    demo = example("asyncio_server.py")
    jobs = demo["make_jobs"](7, 3, 2000)
    server = await asyncio.start_server(demo["handle_client"], "127.0.0.1", 0)
    async with server:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", server.sockets[0].getsockname()[1]
        )
        writer.write(b"".join(pickle.dumps(job, protocol=2) for job in jobs))  # no frames at all
        writer.write_eof()
        with anyio.fail_after(20):  # hang guard
            data = await reader.read()  # the server answers everything, then closes
        writer.close()
        await writer.wait_closed()
    stream = io.BytesIO(data)
    assert [pickle.load(stream) for _ in jobs] == [summary(job) for job in jobs]
    assert stream.read() == b""


@pytest.mark.anyio
@pytest.mark.backends("trio")  # trio_server.py is written with trio's own API
async def test_trio_server(capsys: pytest.CaptureFixture[str]) -> None:
    demo = example("trio_server.py")
    results = await demo["main"](clients=3, jobs=4, values=500)
    assert len(results) == 3
    for client, answers in enumerate(results):
        assert answers == [summary(job) for job in demo["make_jobs"](client, 4, 500)]
    out = capsys.readouterr().out
    assert out.count("answers, all correct") == 3
    assert "server shut down cleanly" in out


@pytest.mark.anyio
async def test_subprocess_worker(capsys: pytest.CaptureFixture[str]) -> None:
    demo = example("subprocess_worker.py")
    with anyio.fail_after(60):  # hang guard: a deadlocked pipe pair would wait forever
        results = await demo["main"](items=30, size=400)
    items = demo["make_items"](30, 400)
    assert results == [
        {
            "id": item["id"],
            "sorted": sorted(item["numbers"]),
            "sum_of_squares": sum(n * n for n in item["numbers"]),
        }
        for item in items
    ]
    assert (
        "30 items of 400 numbers through one worker process, all correct" in capsys.readouterr().out
    )


@pytest.mark.anyio
async def test_checkpoint(anyio_backend_name: str, tmp_path: Path) -> None:
    demo = example("checkpoint_aiofiles.py")
    checkpoints = await demo["main"](tmp_path, megabytes=0.5, records=300)
    # aiofiles needs asyncio; anyio's AsyncFile works everywhere.
    expected = ["aiofiles", "anyio"] if anyio_backend_name == "asyncio" else ["anyio"]
    assert [checkpoint.variant for checkpoint in checkpoints] == expected
    check_checkpoint_files(checkpoints, pickle.dumps(demo["make_state"](0.5, 300), protocol=5))


def check_checkpoint_files(checkpoints: list[Any], oracle: bytes) -> None:
    """Each checkpoint file holds exactly what ``pickle.dump`` writes, and nothing else is
    left in its directory (the temporary files were renamed)."""
    assert len(oracle) > 500_000  # the buffers are large payloads (>= 64 KiB), written unframed
    for checkpoint in checkpoints:
        assert checkpoint.size == len(oracle)
        assert checkpoint.path.read_bytes() == oracle
    directory = checkpoints[0].path.parent
    assert sorted(path.name for path in directory.iterdir()) == sorted(
        checkpoint.path.name for checkpoint in checkpoints
    )


@pytest.mark.anyio
async def test_numpy_protocol5(capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    demo = example("numpy_protocol5.py")
    transfers = await demo["main"](megabytes=1)
    payload = demo["make_payload"](1)  # the same seed: the same arrays
    for variant in ("in band", "out of band"):
        received = transfers[variant][1]
        assert received.keys() == payload.keys()
        for key in ("image", "labels", "mask"):
            assert received[key].dtype == payload[key].dtype
            assert np.array_equal(received[key], payload[key]), (variant, key)
        assert np.array_equal(received["columns"]["y"], payload["columns"]["y"])
        assert received["notes"] == payload["notes"]
    # In band the wire carries exactly pickle.dumps(payload, 5); out of band a sizes header,
    # the raw buffers and the metadata-only pickle.
    assert transfers["in band"][0] == len(pickle.dumps(payload, protocol=5))
    buffers: list[pickle.PickleBuffer] = []
    body = pickle.dumps(payload, protocol=5, buffer_callback=buffers.append)
    sizes = [buffer.raw().nbytes for buffer in buffers]
    assert len(body) < 2000 and sum(sizes) > 1_000_000
    assert transfers["out of band"][0] == len(pickle.dumps(sizes, protocol=5)) + sum(sizes) + len(
        body
    )
    assert capsys.readouterr().out.count("every array equal") == 2


@pytest.mark.anyio
async def test_allowlisted_server(capsys: pytest.CaptureFixture[str]) -> None:
    demo = example("allowlisted_server.py")
    result = await demo["main"](requests=3)
    issued = datetime.datetime(2024, 1, 15, 9, 30, tzinfo=datetime.timezone.utc)
    expected = [
        {
            "id": i,
            "total": sum(Decimal(f"{i}.{j:02}") for j in range(10)),
            "due": datetime.date(2024, 2, 14),
        }
        for i in range(3)
    ]
    assert demo["make_requests"](3)[0]["issued"] == issued
    assert result.replies["honest"] == expected
    assert result.replies["honest again"] == expected  # the server stayed up
    # The exploit really names os.system, and was refused by name, before it could run.
    exploit = pickle.dumps(demo["Exploit"]("true"), protocol=5)
    assert streampickle.required_globals(exploit) == [(os.system.__module__, "system")]
    forbidden, limit = result.refusals
    assert isinstance(forbidden, streampickle.ForbiddenGlobal)
    assert (forbidden.module, forbidden.name) == (os.system.__module__, "system")
    assert not result.marker_created
    assert isinstance(limit, streampickle.LimitExceeded)
    assert (limit.limit, limit.size, limit.maximum) == ("max_frame_size", 1 << 32, 256 << 10)
    # Each refused client was told why.
    assert result.replies["exploit"] == {"error": f"ForbiddenGlobal: {forbidden}"}
    assert result.replies["liar"] == {"error": f"LimitExceeded: {limit}"}
    assert "the exploit never ran" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("script", "args", "expected"),
    [
        ("asyncio_server.py", ["--clients", "2", "--jobs", "2", "--values", "50"], "cleanly"),
        ("trio_server.py", ["--clients", "2", "--jobs", "2", "--values", "50"], "cleanly"),
        ("subprocess_worker.py", ["--items", "3", "--size", "10", "--backend", "trio"], "correct"),
        ("checkpoint_aiofiles.py", ["--megabytes", "0.1", "--records", "10"], "intact"),
        ("numpy_protocol5.py", ["--megabytes", "0.2", "--backend", "trio"], "array_equal"),
        ("allowlisted_server.py", ["--requests", "2"], "the exploit never ran"),
    ],
)
def test_command_line(script: str, args: list[str], expected: str) -> None:
    """Each script runs as documented from the command line (its argparse and __main__)."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=120,  # hang guard
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert expected in done.stdout


@pytest.mark.parametrize("script", sorted(path.name for path in EXAMPLES.glob("*.py")))
def test_help_shows_each_default(script: str) -> None:
    """``--help`` states the default of every option that has one (a value or a choice)."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    options = " ".join(done.stdout.split("options:")[1].split()).split(" --")[1:]
    for option in options:
        name = option.split()[0]
        if name not in {"help", "serve", "connect", "worker"}:  # no default to state
            assert "(default: " in option, f"{script} --{name}: {option}"
