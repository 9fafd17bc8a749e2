"""Pickles over HTTP: aiohttp server responses, on a real loopback server."""

from __future__ import annotations

import asyncio
import pickle
import warnings
from collections.abc import AsyncIterator
from typing import Any, cast

from aiohttp import ClientSession, web

import streampickle
from netutil import aiohttp_server, uvicorn_server

OBJ = {"records": [{"id": i, "name": f"r{i}"} for i in range(20_000)], "blob": b"z" * 300_000}


async def _serve(handler: Any) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_get("/", handler)
    runner, port = await aiohttp_server(app)
    return runner, port


def test_adump_into_an_aiohttp_stream_response() -> None:
    """aiohttp's StreamResponse has an async write() and a deprecated drain(): the write is
    awaited (it was taken for a StreamWriter's sync write and dropped: an empty body)."""
    written: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-pickle"})
        await response.prepare(request)
        written.append(await streampickle.adump(OBJ, response, 5))
        await response.write_eof()
        return response

    async def main() -> bytes:
        runner, port = await _serve(handler)
        try:
            async with (
                ClientSession() as session,
                session.get(f"http://127.0.0.1:{port}/") as response,
            ):
                return await response.read()
        finally:
            await runner.cleanup()

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "coroutine was never awaited", no deprecation
        body = asyncio.run(main())
    assert body == pickle.dumps(OBJ, 5)
    assert written == [len(body)]


# Starlette on uvicorn, httpx as the client: aiter_dumps as a streaming response body and as
# an upload body.


def _starlette_app(uploads: list[Any]) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    async def download(request: Request) -> StreamingResponse:
        size = int(request.query_params["n"])
        obj = {"n": size, "items": list(range(size)), "blob": b"b" * 200_000}
        return StreamingResponse(
            streampickle.aiter_dumps(obj, 5), media_type="application/x-pickle"
        )

    async def upload(request: Request) -> Response:
        uploads.append(pickle.loads(await request.body()))
        return Response("ok")

    return Starlette(
        routes=[Route("/download", download), Route("/upload", upload, methods=["POST"])]
    )


def test_aiter_dumps_with_starlette_uvicorn_and_httpx() -> None:
    """Four concurrent downloads of StreamingResponse(aiter_dumps(obj)) (a sync iterator
    there would be resumed from the thread pool's threads), and an upload with
    content=aiter_dumps(obj)."""
    import httpx

    uploads: list[Any] = []

    async def main() -> list[bytes]:
        async with (
            uvicorn_server(_starlette_app(uploads)) as port,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
        ):
            responses = await asyncio.gather(
                *(client.get("/download", params={"n": n}) for n in (10, 20_000, 30, 50_000))
            )
            sent = {"upload": list(range(30_000)), "blob": bytearray(b"u" * 300_000)}
            # Chunks are bytes or memoryviews: httpx sends both, but is typed for bytes.
            body = cast(AsyncIterator[bytes], streampickle.aiter_dumps(sent, 5))
            reply = await client.post("/upload", content=body)
            assert reply.text == "ok"
            assert uploads == [sent]
            return [response.content for response in responses]

    bodies = asyncio.run(main())
    for n, body in zip((10, 20_000, 30, 50_000), bodies, strict=True):
        obj = {"n": n, "items": list(range(n)), "blob": b"b" * 200_000}
        assert body == pickle.dumps(obj, 5)


def test_aiter_dumps_is_pickle_dumps_in_chunks() -> None:
    obj = {"records": list(range(100_000)), "big": bytearray(3 << 20)}

    async def main() -> list[Any]:
        return [chunk async for chunk in streampickle.aiter_dumps(obj, 5)]

    chunks = asyncio.run(main())
    assert b"".join(chunks) == pickle.dumps(obj, 5)
    assert len(chunks) > 3 and max(len(chunk) for chunk in chunks) <= 1 << 20


def test_a_sync_chunk_iterator_resumed_from_another_thread_names_aiter_dumps() -> None:
    import threading

    chunks = streampickle.iter_dumps(list(range(100_000)), 5)
    next(chunks)
    failures: list[BaseException] = []

    def resume() -> None:
        try:
            next(chunks)
        except RuntimeError as exc:
            failures.append(exc)

    thread = threading.Thread(target=resume)
    thread.start()
    thread.join()
    assert "aiter_dumps" in str(failures[0])
    chunks.close()
