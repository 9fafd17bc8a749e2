"""README.md's snippets, each run: the quick-start server and client pairs as written (on a free
port), the recipes' modules (``servers.py``, ``clients.py``, ``ws.py``) against real servers on
loopback, and the fragments (the intro's, Progress's) with ``obj``, ``reader``, ``writer`` and
``ALLOWED`` bound to a loopback connection; each load from a peer passes ``allow=``."""

from __future__ import annotations

import ast
import asyncio
import pickle
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

import streampickle
from netutil import HANG_GUARD, aiohttp_server, uvicorn_server

README = Path(__file__).resolve().parent.parent / "README.md"
#: A fenced Python block and the line before it (the pairs' captions name the file).
BLOCK = re.compile(r"([^\n]*)\n\n```python\n(.*?)\n```", re.DOTALL)
#: What the quick start's clients print.
EXPECTED = [f"{{'id': {job}, 'total': {sum(range(100_000 * (job + 1)))}}}" for job in range(3)]
#: The recipes' modules, by the file names their captions give.
RECIPE = re.compile(r"`(servers|clients|ws)\.py`:$")
#: The calls that load from a peer.
LOADS = {"aload", "aiter_load", "PickleStream", "from_asyncio", "from_trio", "from_websocket"}


def snippets() -> list[tuple[str, str]]:
    return [(caption, code) for caption, code in BLOCK.findall(README.read_text())]


def quick_start_pairs() -> dict[str, tuple[str, str]]:
    """``{"asyncio": (server, client), "trio": (...)}`` from the captions."""
    found: dict[str, dict[str, str]] = {}
    for caption, code in snippets():
        match = re.match(r"(\w+).*`(server|client)\.py`:", caption)
        if match:
            found.setdefault(match[1], {})[match[2]] = code
    return {name: (pair["server"], pair["client"]) for name, pair in found.items()}


def kind(caption: str) -> str:
    """How a snippet is run: ``pair``, ``recipe`` or ``fragment``."""
    if re.match(r"(\w+).*`(server|client)\.py`:", caption):
        return "pair"
    return "recipe" if RECIPE.search(caption) else "fragment"


def recipe(name: str) -> dict[str, Any]:
    """The namespace of the recipe module *name*, executed as written."""
    for caption, code in snippets():
        match = RECIPE.search(caption)
        if match and match[1] == name:
            namespace: dict[str, Any] = {"__name__": name}
            exec(compile(code, f"README {name}.py", "exec"), namespace)
            return namespace
    raise AssertionError(f"README.md has no `{name}.py` recipe")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for(port: int, server: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert server.poll() is None, server.communicate()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    pytest.fail("the README's server did not start listening")


def test_the_readme_has_both_quick_start_pairs() -> None:
    assert set(quick_start_pairs()) == {"asyncio", "trio"}


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_quick_start_pair_runs_as_written(backend: str, tmp_path: Path) -> None:
    server_code, client_code = quick_start_pairs()[backend]
    port = str(free_port())
    for name, code in [("server.py", server_code), ("client.py", client_code)]:
        assert "9000" in code
        (tmp_path / name).write_text(code.replace("9000", port))
    server = subprocess.Popen(
        [sys.executable, "server.py"], cwd=tmp_path, text=True, stderr=subprocess.PIPE
    )
    try:
        wait_for(int(port), server)
        client = subprocess.run(
            [sys.executable, "client.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert client.returncode == 0, client.stderr
        assert client.stdout.splitlines() == EXPECTED
    finally:
        server.kill()
        server.communicate()


def called_name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


@pytest.mark.parametrize("index", range(len(snippets())))
def test_every_snippet_compiles_and_loads_with_allow(index: int) -> None:
    _caption, code = snippets()[index]
    tree = compile(
        code, f"README snippet {index}", "exec", ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    )
    loads = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
    for call in loads:
        if called_name(call) in LOADS:
            keywords = {keyword.arg for keyword in call.keywords}
            assert "allow" in keywords, f"{ast.unparse(call)} in snippet {index} has no allow="


def test_every_snippet_is_run() -> None:
    """Each snippet is a pair half, a recipe module or a fragment, and each kind has a test
    below that runs it (the fragments by index)."""
    kinds = [kind(caption) for caption, _code in snippets()]
    assert kinds.count("pair") == 4
    assert sorted(RECIPE.search(c)[1] for c, _ in snippets() if kind(c) == "recipe") == [  # type: ignore[index]
        "clients",
        "servers",
        "ws",
    ]
    assert kinds.count("fragment") >= 1


def test_the_http_recipes_run_as_written() -> None:
    """Both servers (Starlette on uvicorn, aiohttp), each called by both clients (httpx,
    aiohttp): the upload arrives (the server says how many values it read) and the download is
    the server's DATA."""
    servers, clients = recipe("servers"), recipe("clients")
    upload = {"values": list(range(30_000)), "blob": bytearray(b"u" * 300_000)}

    async def main() -> dict[tuple[str, str], Any]:
        results: dict[tuple[str, str], Any] = {}
        runner, aiohttp_port = await aiohttp_server(servers["aiohttp_app"])
        try:
            async with uvicorn_server(servers["starlette_app"]) as starlette_port:
                for server, port in [("starlette", starlette_port), ("aiohttp", aiohttp_port)]:
                    for client in ("with_httpx", "with_aiohttp"):
                        url = f"http://127.0.0.1:{port}/data"
                        with anyio.fail_after(HANG_GUARD):
                            results[server, client] = await clients[client](url, upload)
        finally:
            await runner.cleanup()
        return results

    results = asyncio.run(main())
    assert len(results) == 4
    for text, data in results.values():
        assert text == "30000 values"
        assert data == servers["DATA"]


def test_the_websockets_recipe_runs_as_written() -> None:
    """``ask`` sends an object to ``echo`` and gets it back, over a fresh connection each time."""
    from websockets.asyncio.server import serve

    ws = recipe("ws")
    objects = [{"n": 1}, list(range(200_000)), b"w" * 3_000_000]

    async def main() -> list[Any]:
        async with serve(ws["echo"], "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            with anyio.fail_after(HANG_GUARD):
                return [await ws["ask"](f"ws://127.0.0.1:{port}", obj) for obj in objects]

    assert asyncio.run(main()) == objects


FRAGMENT_OBJ = {"values": list(range(50_000)), "blob": b"f" * 300_000}
#: What the peer of a fragment's connection sends, then it closes its side.
PEER_SENDS = [{"first": 1}, {"second": 2}, {"third": 3}]


@pytest.mark.parametrize(
    "index", [i for i, (caption, _code) in enumerate(snippets()) if kind(caption) == "fragment"]
)
def test_every_fragment_runs(index: int) -> None:
    """A fragment runs as the body of an async function, with ``obj``, ``ALLOWED`` and a
    loopback connection's ``reader`` and ``writer``; the peer sends PEER_SENDS and closes its
    side. What the fragment wrote must be whole pickles of ``obj``, what it read the peer's
    objects."""
    _caption, code = snippets()[index]
    compiled = compile(code, f"README snippet {index}", "exec", ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)

    async def main() -> tuple[dict[str, Any], bytes]:
        received = asyncio.get_running_loop().create_future()

        async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for item in PEER_SENDS:
                writer.write(pickle.dumps(item, 5))
            writer.write_eof()
            received.set_result(await reader.read())  # until the fragment's side closes
            writer.close()

        server = await asyncio.start_server(peer, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            namespace: dict[str, Any] = {
                "obj": FRAGMENT_OBJ,
                "reader": reader,
                "writer": writer,
                "ALLOWED": streampickle.ALLOW_BUILTINS,
            }
            try:
                with anyio.fail_after(HANG_GUARD):
                    pending = eval(compiled, namespace)  # a coroutine if the fragment awaits
                    if pending is not None:
                        await pending
                    writer.write_eof()
                    wrote: bytes = await received
            finally:
                writer.close()
        return namespace, wrote

    namespace, wrote = asyncio.run(main())
    assert namespace["obj"] in PEER_SENDS  # it loaded what the peer sent
    one = pickle.dumps(FRAGMENT_OBJ)
    assert wrote == one * (len(wrote) // len(one))
