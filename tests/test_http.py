"""Pickles over HTTP: aiohttp server responses, on a real loopback server."""

from __future__ import annotations

import asyncio
import pickle
import warnings
from typing import Any

from aiohttp import ClientSession, web

import streampickle

OBJ = {"records": [{"id": i, "name": f"r{i}"} for i in range(20_000)], "blob": b"z" * 300_000}


async def _serve(handler: Any) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port: int = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
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
