"""README.md's snippets: the quick-start server and client pairs run as written (on a free
port), and every other snippet compiles, each load from a peer passing ``allow=``."""

from __future__ import annotations

import ast
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
#: A fenced Python block and the line before it (the pairs' captions name the file).
BLOCK = re.compile(r"([^\n]*)\n\n```python\n(.*?)\n```", re.DOTALL)
#: What the quick start's clients print.
EXPECTED = [f"{{'id': {job}, 'total': {sum(range(100_000 * (job + 1)))}}}" for job in range(3)]
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
