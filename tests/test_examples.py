"""The examples run end to end (with small sizes), on asyncio and trio."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.anyio
async def test_stream_graph_demo(capsys: pytest.CaptureFixture[str]) -> None:
    demo: dict[str, Any] = runpy.run_path(str(EXAMPLES / "stream_graph.py"))
    await demo["main"](3000)
    out = capsys.readouterr().out
    assert "3,000 records" in out
    assert "arrived intact both ways" in out
    assert out.count(" MB in ") == 2
