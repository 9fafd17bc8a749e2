"""Loopback TCP helpers shared by the tests of the async API."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.abc import ByteStream, SocketAttribute, SocketListener, SocketStream

#: Seconds; only so that a broken test fails instead of hanging CI.
HANG_GUARD = 20


class NeverWaits(ByteStream):
    """Hands out *data* without ever waiting or checkpointing (a reader that had it all
    buffered, as an asyncio StreamReader does once the bytes arrived); ``pos`` is how much
    it handed out. What is sent to it is dropped."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self.pos >= len(self.data):
            raise anyio.EndOfStream
        start, self.pos = self.pos, self.pos + max_bytes
        return self.data[start : self.pos]

    async def send(self, item: bytes) -> None:
        pass

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        self.pos = len(self.data)


@asynccontextmanager
async def tcp_pair() -> AsyncIterator[tuple[SocketStream, SocketStream]]:
    """The two ends of a loopback TCP connection: (client, server)."""
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(SocketAttribute.local_port)
        client = await anyio.connect_tcp("127.0.0.1", port)
        inner = listener.listeners[0]
        assert isinstance(inner, SocketListener)
        server = await inner.accept()
        async with client, server:
            yield client, server


async def while_sending(data: bytes, receive: Callable[[SocketStream], Awaitable[Any]]) -> Any:
    """Send *data* from one end (then EOF) while *receive* reads the other; the sender is
    cancelled once *receive* returns or raises (a refused peer is never read to the end)."""
    result: Any = None
    error: Exception | None = None
    async with tcp_pair() as (client, server):
        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as group:

                async def send() -> None:
                    # A refusing receiver may hang up before it read everything.
                    with contextlib.suppress(anyio.BrokenResourceError, OSError):
                        await client.send(data)
                        await client.send_eof()

                group.start_soon(send)
                try:
                    result = await receive(server)
                except Exception as exc:  # raised below, not wrapped in an exception group
                    error = exc
                group.cancel_scope.cancel()
    if error is not None:
        raise error
    return result


@asynccontextmanager
async def asyncio_pipe() -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """The two ends of an OS pipe as an asyncio ``StreamReader`` and ``StreamWriter`` (on the
    running loop's pipe transports); both closed on exit."""
    loop = asyncio.get_running_loop()
    read_fd, write_fd = os.pipe()
    reader = asyncio.StreamReader()
    source, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", 0)
    )
    protocol = asyncio.StreamReaderProtocol(asyncio.StreamReader())  # drain()'s flow control
    transport, _ = await loop.connect_write_pipe(lambda: protocol, os.fdopen(write_fd, "wb"))
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    try:
        yield reader, writer
    finally:
        writer.close()
        source.close()


async def aiohttp_server(app: Any, **runner_options: Any) -> tuple[Any, int]:
    """Serve the aiohttp *app* on a free loopback port: ``(runner, port)``; the caller
    awaits ``runner.cleanup()`` when done (*runner_options* go to ``web.AppRunner``)."""
    from aiohttp import web

    runner = web.AppRunner(app, **runner_options)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    port: int = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


@asynccontextmanager
async def uvicorn_server(app: Any) -> AsyncIterator[int]:
    """Serve the ASGI *app* with uvicorn on a free loopback port, on the running asyncio loop;
    yields the port and shuts the server down on exit."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done(), "uvicorn stopped before it started"
            await asyncio.sleep(0.01)
        port: int = server.servers[0].sockets[0].getsockname()[1]
        yield port
    finally:
        server.should_exit = True
        await task
