"""The stream types `AsyncWriter` and `AsyncReader` match the registry: every stream kind that
`adump`/`aload` take type-checks, and what they refuse at run time is refused by ``mypy --strict``
too. The static half is this file under the suite's mypy run: each refused call carries a
``# type: ignore[arg-type]``, and mypy's ``warn_unused_ignores`` (part of strict) fails the
run if a refused call ever type-checks. The run-time half is the test below.
"""

from __future__ import annotations

import asyncio
import io
from typing import Any

import aiofiles
import aiohttp
import aiohttp.web
import anyio
import httpx
import pytest
import starlette.requests
import trio
import websockets.asyncio.client
from anyio.abc import ByteStream
from anyio.streams.buffered import BufferedByteReceiveStream

from streampickle import adump, aiter_load, aload


async def _accepted_writers(
    asyncio_writer: asyncio.StreamWriter,
    anyio_stream: ByteStream,
    trio_stream: trio.SocketStream,
    response: aiohttp.web.StreamResponse,
    websocket: websockets.asyncio.client.ClientConnection,
) -> None:
    await adump(1, asyncio_writer)
    await adump(1, anyio_stream)
    await adump(1, trio_stream)
    await adump(1, response)
    await adump(1, websocket)
    send, _ = anyio.create_memory_object_stream[bytes]()
    await adump(1, send)
    async with aiofiles.open("x", "wb") as aiofile:
        await adump(1, aiofile)
    async with await anyio.open_file("x", "wb") as anyio_file:
        await adump(1, anyio_file)


async def _accepted_readers(
    asyncio_reader: asyncio.StreamReader,
    anyio_stream: ByteStream,
    trio_stream: trio.SocketStream,
    client_response: aiohttp.ClientResponse,
    request: aiohttp.web.Request,
    httpx_response: httpx.Response,
    starlette_request: starlette.requests.Request,
    websocket: websockets.asyncio.client.ClientConnection,
) -> None:
    await aload(asyncio_reader)
    await aload(anyio_stream)
    await aload(BufferedByteReceiveStream(anyio_stream))
    await aload(trio_stream)
    await aload(client_response.content)
    await aload(request.content)
    await aload(httpx_response.aiter_bytes())
    await aload(httpx_response.aiter_raw())
    await aload(starlette_request.stream())
    await aload(websocket)
    _, receive = anyio.create_memory_object_stream[bytes]()
    await aload(receive)
    async with aiofiles.open("x", "rb") as aiofile:
        await aload(aiofile)
    async with await anyio.open_file("x", "rb") as anyio_file:
        async for _ in aiter_load(anyio_file):
            pass


async def _refused(
    asyncio_reader: asyncio.StreamReader, asyncio_writer: asyncio.StreamWriter
) -> None:
    await adump(1, io.BytesIO())  # type: ignore[arg-type]
    await adump(1, asyncio_reader)  # type: ignore[arg-type]
    await aload(io.BytesIO())  # type: ignore[arg-type]
    await aload(asyncio_writer)  # type: ignore[arg-type]
    async with await anyio.open_file("x", "r") as text_file:
        await aload(text_file)  # type: ignore[arg-type]
    send, receive = anyio.create_memory_object_stream[int]()
    await adump(1, send)  # type: ignore[arg-type]
    await aload(receive)  # type: ignore[arg-type]


@pytest.mark.anyio
@pytest.mark.backends("asyncio")
async def test_what_the_types_refuse_is_refused_at_run_time() -> None:
    reader = asyncio.StreamReader()
    reader.feed_eof()
    refused_writers: list[Any] = [io.BytesIO(), reader]
    for writer in refused_writers:
        with pytest.raises(TypeError):
            await adump(1, writer)
    refused_readers: list[Any] = [io.BytesIO(b"\x80\x05K\x01."), io.StringIO("x")]
    for bad in refused_readers:
        with pytest.raises(TypeError):
            await aload(bad)
