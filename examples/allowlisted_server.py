"""A server for untrusted clients: restricted loading with an allowlist, plus size limits.

    python examples/allowlisted_server.py [--requests 10] [--backend asyncio|trio]
    python examples/allowlisted_server.py --serve 8765     # the server alone, until Ctrl-C

A plain ``pickle.load`` runs whatever the sender wrote: a client can make the server call
``os.system``. This server loads every request under an `Allowlist` (builtins, datetime and
decimal types; nothing that acts on the world), with a frame and an object size limit, and
treats every bad request as fatal for that connection (see docs/security.md, "Recommended
setup for a server"): it answers with an error and hangs up, and goes on serving others.

The demo runs the server and four clients in one process, over loopback TCP (anyio: the same
code on asyncio and trio):

1. an honest client, whose requests are answered;
2. an attacker whose pickle would run ``os.system("touch <marker>")``: refused with
   `ForbiddenGlobal` before ``os`` is even looked up, and the marker file never appears;
3. a liar claiming a 4 GiB frame: refused with `LimitExceeded` before anything is allocated;
4. another honest client, served as if nothing happened: the server stayed up.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import pickle
import signal
import tempfile
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import SocketAttribute, SocketStream

import streampickle
from streampickle import ALLOW_BUILTINS, ALLOW_DATETIME, ALLOW_DECIMAL, PickleStream

HOST = "127.0.0.1"

#: What requests may contain besides ints, floats, strings, bytes, lists, tuples and dicts
#: (which need no global at all). Build yours with streampickle.required_globals on samples.
POLICY = ALLOW_BUILTINS | ALLOW_DATETIME | ALLOW_DECIMAL
#: Honest requests are small: refuse a frame over 256 KiB and a request over 1 MiB. Under
#: allow= the other limits (payload, memo, opcode count, stack depth) apply with their defaults.
LIMITS: dict[str, Any] = {"max_frame_size": 256 << 10, "max_object_size": 1 << 20}
#: A client gets this long to send each request: one that stalls is dropped, not waited for.
REQUEST_TIMEOUT = 30.0


def restricted_stream(connection: SocketStream) -> PickleStream:
    """A PickleStream that loads only what `POLICY` allows, within `LIMITS`."""
    return PickleStream(connection, protocol=5, allow=POLICY, **LIMITS)


def answer(request: dict[str, Any]) -> dict[str, Any]:
    """The server's work: total an invoice (also the oracle for the demo's checks)."""
    return {
        "id": request["id"],
        "total": sum(request["amounts"], Decimal(0)),
        "due": (request["issued"] + datetime.timedelta(days=30)).date(),
    }


@dataclass
class Server:
    """The server's connection handler and its record of refused requests."""

    refusals: list[Exception] = field(default_factory=list)

    async def handle(self, connection: SocketStream) -> None:
        peer = connection.extra(SocketAttribute.remote_address)
        async with restricted_stream(connection) as stream:
            while True:
                try:
                    with anyio.fail_after(REQUEST_TIMEOUT):
                        request = await stream.receive()
                    reply = answer(request)
                except anyio.EndOfStream:  # the client is done
                    return
                except Exception as exc:
                    # ForbiddenGlobal, PolicyViolation, LimitExceeded, a truncated pickle, an
                    # allowed constructor given bad arguments, a request of the wrong shape, a
                    # client too slow (TimeoutError):
                    # whatever it is, it ends this connection and nothing else.
                    self.refusals.append(exc)
                    print(f"refused {peer}: {type(exc).__name__}: {exc}")
                    await self.refuse(stream, exc)
                    return
                await stream.send(reply)

    @staticmethod
    async def refuse(stream: PickleStream, exc: Exception) -> None:
        """Tell the client why, then let the caller hang up. The stream is not read further:
        nothing after a bad request can be trusted to be where a next request starts."""
        with contextlib.suppress(anyio.BrokenResourceError, OSError):  # the client is gone
            await stream.send({"error": f"{type(exc).__name__}: {exc}"})


# -- clients ---------------------------------------------------------------------------------


def make_requests(count: int) -> list[dict[str, Any]]:
    issued = datetime.datetime(2024, 1, 15, 9, 30, tzinfo=datetime.timezone.utc)
    return [
        {"id": i, "issued": issued, "amounts": [Decimal(f"{i}.{j:02}") for j in range(10)]}
        for i in range(count)
    ]


async def honest_client(port: int, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Send each request and collect the answers."""
    async with restricted_stream(await anyio.connect_tcp(HOST, port)) as stream:
        replies = []
        for request in requests:
            await stream.send(request)
            replies.append(await stream.receive())
        await stream.send_eof()
        return replies


class Exploit:
    """What an attacker pickles: unpickling it calls ``os.system(command)``."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (self.command,)


async def raw_client(port: int, payload: bytes) -> Any:
    """Send *payload* as is, as an attacker would, and return the server's reply."""
    async with await anyio.connect_tcp(HOST, port) as connection:
        await connection.send(payload)
        # A client, too, should only load what it expects from a server.
        return await streampickle.aload(connection, allow=POLICY, **LIMITS)


async def run_demo(port: int, requests: int, marker: Path) -> dict[str, Any]:
    """The four clients of the module docstring, one after the other; their replies by name."""
    honest = make_requests(requests)
    exploit = pickle.dumps(Exploit(f"touch {marker}"), protocol=5)
    # PROTO 5, FRAME of 2**32 bytes, and no frame: a size claim that costs the liar 11 bytes.
    liar = b"\x80\x05\x95" + (1 << 32).to_bytes(8, "little")
    return {
        "honest": await honest_client(port, honest),
        "exploit": await raw_client(port, exploit),
        "liar": await raw_client(port, liar),
        "honest again": await honest_client(port, honest),
    }


@dataclass
class DemoResult:
    replies: dict[str, Any]
    refusals: list[Exception]
    marker_created: bool


async def main(requests: int = 10) -> DemoResult:
    """Run the server and the demo clients; check and return what happened."""
    server = Server()
    listener = await anyio.create_tcp_listener(local_host=HOST)
    port = listener.extra(SocketAttribute.local_port)
    with tempfile.TemporaryDirectory() as scratch:
        marker = Path(scratch) / "pwned"
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, server.handle)
            replies = await run_demo(port, requests, marker)
            tg.cancel_scope.cancel()  # stop serving
        result = DemoResult(replies, server.refusals, marker.exists())
    expected = [answer(request) for request in make_requests(requests)]
    assert replies["honest"] == replies["honest again"] == expected, "honest clients: wrong answers"
    assert not result.marker_created, "the exploit ran!"
    print(f"honest clients: {requests} answers each, correct; the exploit never ran")
    print(f"refused: {', '.join(type(exc).__name__ for exc in server.refusals)}")
    return result


async def serve_forever(port: int) -> None:
    """Serve on *port* until SIGINT (Ctrl-C) or SIGTERM, then stop cleanly."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        listener = await anyio.create_tcp_listener(local_host=HOST, local_port=port)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, Server().handle)
            print(f"serving on {HOST}:{port}; Ctrl-C to stop")
            async for signum in signals:
                print(f"{signal.Signals(signum).name}: stopping")
                tg.cancel_scope.cancel()  # closes every connection
                break


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--requests", type=int, default=10, help="requests per honest client (default: %(default)s)"
    )
    parser.add_argument(
        "--backend",
        choices=["asyncio", "trio"],
        default="asyncio",
        help="the event loop (default: %(default)s)",
    )
    parser.add_argument("--serve", type=int, metavar="PORT", help="only run the server")
    args = parser.parse_args()
    if args.serve is not None:
        anyio.run(serve_forever, args.serve, backend=args.backend)
    else:
        anyio.run(main, args.requests, backend=args.backend)
