"""aload/aiter_load from the streams users have beyond byte streams: anyio object streams of
bytes, async iterables of chunks (httpx, Starlette, websockets), async read(n) (aiohttp,
fsspec async files).

Chunks come in sizes of their own, so a chunk may hold the end of one pickle and the start of
the next: the rest is kept for the next aload of the same stream.
"""

from __future__ import annotations

import asyncio
import io
import pickle
import random
from collections.abc import AsyncGenerator
from typing import Any

import anyio
import fsspec
import pytest
from fsspec.asyn import AbstractAsyncStreamedFile

import streampickle
from netutil import aiohttp_server, uvicorn_server

pytestmark = pytest.mark.anyio

OBJECTS = [
    {"i": i, "text": "t" * (i * 997 % 5000), "blob": b"b" * (i * 7919 % 90_000)} for i in range(8)
]


def stream_bytes(protocol: int) -> bytes:
    return b"".join(pickle.dumps(obj, protocol) for obj in OBJECTS)


def random_chunks(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    chunks, position = [], 0
    while position < len(data):
        size = rng.choice([1, 3, 100, 4096, 70_000, 300_000])
        chunks.append(data[position : position + size])
        position += size
    return chunks


async def chunk_iterator(chunks: list[bytes]) -> AsyncGenerator[bytes, None]:
    for chunk in chunks:
        yield chunk
        await anyio.lowlevel.checkpoint()


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("seed", [1, 2])
async def test_async_iterable_of_chunks(protocol: int, seed: int, anyio_backend: Any) -> None:
    chunks = random_chunks(stream_bytes(protocol), seed)
    iterator = chunk_iterator(chunks)
    first = [await streampickle.aload(iterator) for _ in range(3)]  # one aload at a time
    rest = [obj async for obj in streampickle.aiter_load(iterator)]
    assert first + rest == OBJECTS


@pytest.mark.parametrize("protocol", [0, 5])
async def test_memory_object_stream_of_bytes(protocol: int, anyio_backend: Any) -> None:
    chunks = random_chunks(stream_bytes(protocol), 3)
    send, receive = anyio.create_memory_object_stream[bytes](len(chunks))
    with send, receive:
        for chunk in chunks:
            send.send_nowait(chunk)
        send.close()
        assert await streampickle.aload(receive) == OBJECTS[0]
        assert [obj async for obj in streampickle.aiter_load(receive)] == OBJECTS[1:]


async def test_object_with_async_read(anyio_backend: Any) -> None:
    class Reader:
        def __init__(self, data: bytes) -> None:
            self.data = data

        async def read(self, size: int = -1) -> bytes:
            await anyio.lowlevel.checkpoint()
            out, self.data = self.data[: min(size, 5000)], self.data[min(size, 5000) :]
            return out

    reader = Reader(stream_bytes(5))
    assert [obj async for obj in streampickle.aiter_load(reader)] == OBJECTS
    reader = Reader(stream_bytes(5) + b"tail")
    assert await streampickle.aload(reader) == OBJECTS[0]
    assert reader.data.endswith(b"tail") and reader.data.startswith(pickle.dumps(OBJECTS[1], 5))


async def test_truncated_chunks_fail_cleanly(anyio_backend: Any) -> None:
    data = pickle.dumps(OBJECTS[3], 5)
    for end in range(0, len(data), 997):
        chunks = chunk_iterator([data[:end]])
        with anyio.fail_after(5), pytest.raises((EOFError, pickle.UnpicklingError)):
            await streampickle.aload(chunks)
        await chunks.aclose()


async def test_text_chunks_are_refused(anyio_backend: Any) -> None:
    async def text() -> AsyncGenerator[str, None]:
        yield "not bytes"

    chunks = text()
    with pytest.raises(TypeError, match="gave a str"):
        await streampickle.aload(chunks)  # type: ignore[arg-type]
    await chunks.aclose()


# --------------------------------------------------------------------------------------------
# Real servers: aiohttp, Starlette on uvicorn with httpx, websockets (asyncio only).


def test_aiohttp_server_and_client_read_with_aload() -> None:
    """Server: aload(request.content) of an upload sent with data=aiter_dumps(obj); client:
    aload(resp.content) of a StreamResponse written with adump."""
    from aiohttp import ClientSession, web

    sent = {"up": list(range(40_000)), "blob": b"u" * 400_000}
    got: list[Any] = []

    async def upload(request: web.Request) -> web.Response:
        got.append(await streampickle.aload(request.content))
        return web.Response(text="ok")

    async def download(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await streampickle.adump(OBJECTS, response, 5)
        await response.write_eof()
        return response

    async def main() -> Any:
        app = web.Application()
        app.router.add_post("/up", upload)
        app.router.add_get("/down", download)
        runner, port = await aiohttp_server(app)
        try:
            async with ClientSession() as session:
                async with session.post(
                    f"http://127.0.0.1:{port}/up", data=streampickle.aiter_dumps(sent, 5)
                ) as response:
                    assert await response.text() == "ok"
                async with session.get(f"http://127.0.0.1:{port}/down") as response:
                    return await streampickle.aload(response.content)
        finally:
            await runner.cleanup()

    assert asyncio.run(main()) == OBJECTS
    assert got == [sent]


def test_httpx_download_and_starlette_upload_read_with_aload() -> None:
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    got: list[Any] = []

    async def download(request: Request) -> StreamingResponse:
        return StreamingResponse(streampickle.aiter_dumps(OBJECTS, 5))

    async def upload(request: Request) -> Response:
        got.append(await streampickle.aload(request.stream()))
        return Response("ok")

    app = Starlette(routes=[Route("/down", download), Route("/up", upload, methods=["POST"])])

    async def main() -> Any:
        async with (
            uvicorn_server(app) as port,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
        ):
            reply = await client.post("/up", content=pickle.dumps(OBJECTS[2], 4))
            assert reply.text == "ok"
            async with client.stream("GET", "/down") as response:
                return await streampickle.aload(response.aiter_bytes())

    assert asyncio.run(main()) == OBJECTS
    assert got == [OBJECTS[2]]


def test_websockets_binary_messages_carry_chunks() -> None:
    """adump into a websocket sends each chunk as one binary message; aload(ws) reads the
    messages as a stream of chunks, so a pickle may span messages and leftovers stay."""
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import ServerConnection, serve

    async def echo(ws: ServerConnection) -> None:
        obj = await streampickle.aload(ws)
        await streampickle.adump(obj, ws, 5)

    async def main() -> Any:
        async with serve(echo, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            async with connect(f"ws://127.0.0.1:{port}", max_size=None) as ws:
                await streampickle.adump(OBJECTS, ws, 5)
                return await streampickle.aload(ws)

    assert asyncio.run(main()) == OBJECTS


def test_pickle_stream_over_a_websocket() -> None:
    """PickleStream.from_websocket on both ends: objects echoed, EndOfStream at a normal close;
    PickleStream(ws) names from_websocket."""
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import ServerConnection, serve

    objects = [*OBJECTS, numpy_free_payload()]

    async def echo(ws: ServerConnection) -> None:
        async with streampickle.PickleStream.from_websocket(ws) as stream:
            async for obj in stream:
                await stream.send(obj)

    async def main() -> list[Any]:
        async with serve(echo, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            async with connect(f"ws://127.0.0.1:{port}") as ws:
                with pytest.raises(TypeError, match="from_websocket"):
                    streampickle.PickleStream(ws)  # type: ignore[arg-type]
                stream = streampickle.PickleStream.from_websocket(ws)
                received = []
                for obj in objects:
                    await stream.send(obj)
                    received.append(await stream.receive())
                await stream.aclose()
                return received

    assert asyncio.run(main()) == objects


def numpy_free_payload() -> dict[str, Any]:
    """A payload bigger than websockets' default max_size (1 MiB) per message."""
    return {"big": bytearray(b"m" * (3 << 20)), "records": list(range(50_000))}


# --------------------------------------------------------------------------------------------
# fsspec async files: io.IOBase subclasses (AbstractBufferedFile) whose read and write are
# coroutines, so they are async files, not the synchronous files aload and adump refuse.


class AsyncBlobFile(AbstractAsyncStreamedFile):  # type: ignore[misc]
    """The part an fsspec async filesystem implements for its files (s3fs's, gcsfs's and
    adlfs's async files are such subclasses): range fetches and chunk uploads, here on a
    bytearray. Small blocks, so that a write uploads several chunks."""

    def __init__(self, blob: bytearray, mode: str) -> None:
        self.blob = blob
        size = len(blob) if mode == "rb" else None
        memory = fsspec.filesystem("memory")
        super().__init__(memory, "/blob", mode, block_size=1 << 16, cache_type="none", size=size)

    async def _fetch_range(self, start: int, end: int) -> bytes:
        await anyio.lowlevel.checkpoint()
        return bytes(self.blob[start:end])

    async def _upload_chunk(self, final: bool = False) -> bool:
        await anyio.lowlevel.checkpoint()
        self.blob += self.buffer.getvalue()
        return True


BIG = b"\x00\xff" * (3 << 20)  # 6 MiB: a payload written and read outside the frames


async def test_fsspec_async_file_written_by_adump_read_by_aload(anyio_backend: Any) -> None:
    """adump into an fsspec async file opened "wb" (an awaitable write), aload and aiter_load
    from one opened "rb" (an async read(n) with range fetches): objects at protocols 0-5 and a
    big bytes payload; then EOFError, and a cut copy fails cleanly."""
    objects = [(OBJECTS[p], p) for p in range(pickle.HIGHEST_PROTOCOL + 1)] + [(BIG, 5)]
    blob = bytearray()
    async with AsyncBlobFile(blob, "wb") as file:
        assert isinstance(file, io.IOBase)
        for obj, protocol in objects:
            await streampickle.adump(obj, file, protocol)
    assert blob == b"".join(pickle.dumps(obj, protocol) for obj, protocol in objects)

    async with AsyncBlobFile(blob, "rb") as file:
        got = [await streampickle.aload(file) for _ in range(2)]
        got += [obj async for obj in streampickle.aiter_load(file)]
        with pytest.raises(EOFError):
            await streampickle.aload(file)
    assert got == [obj for obj, _ in objects]

    async with AsyncBlobFile(blob[: len(blob) - len(BIG) // 2], "rb") as file:
        assert [await streampickle.aload(file) for _ in range(6)] == OBJECTS[:6]
        with pytest.raises((pickle.UnpicklingError, EOFError)):
            await streampickle.aload(file)


async def test_fsspec_synchronous_file_is_refused(anyio_backend: Any) -> None:
    """An fsspec file of a synchronous filesystem is a synchronous file: refused, naming load."""
    memory = fsspec.filesystem("memory")
    memory.pipe_file("/streampickle-sync.pickle", pickle.dumps(1))
    try:
        with (
            memory.open("/streampickle-sync.pickle", "rb") as file,
            pytest.raises(TypeError, match=r"is a synchronous file; use streampickle\.load"),
        ):
            await streampickle.aload(file)
    finally:
        memory.rm("/streampickle-sync.pickle")


def test_fsspec_http_async_file_reads_with_aload() -> None:
    """fsspec's HTTPFileSystem(asynchronous=True).open_async (the async file fsspec itself
    ships; it opens for reading only) on a static download from a local aiohttp server: a
    known size, unlike the live stream of tests/streams.py's fsspec-http kind."""
    from aiohttp import web
    from fsspec.implementations.http import HTTPFileSystem

    data = b"".join(pickle.dumps(obj, 5) for obj in [*OBJECTS, BIG])

    async def download(request: web.Request) -> web.Response:
        return web.Response(body=data)

    async def main() -> list[Any]:
        app = web.Application()
        app.router.add_get("/objects", download)
        runner, port = await aiohttp_server(app)
        fs = HTTPFileSystem(asynchronous=True, skip_instance_cache=True)
        session = await fs.set_session()
        try:
            file = await fs.open_async(f"http://127.0.0.1:{port}/objects", "rb")
            try:
                assert issubclass(type(file), io.IOBase) and file.size == len(data)
                got = [await streampickle.aload(file)]
                got += [obj async for obj in streampickle.aiter_load(file)]
                with pytest.raises(EOFError):
                    await streampickle.aload(file)
                return got
            finally:
                await file.close()
        finally:
            await session.close()
            await runner.cleanup()

    assert asyncio.run(main()) == [*OBJECTS, BIG]
