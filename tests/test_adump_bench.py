"""Smoke test of benchmarks/bench_stream.py, so that the benchmark cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_stream.py"


def test_benchmark_quick_run_verifies_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--verify", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    results = json.loads(out.read_text())["results"]
    cases = {(row["payload"], row["method"]) for row in results}
    assert cases == {(p, m) for p in ("records", "arrays") for m in ("naive", "adump")}
    for row in results:
        assert row["verified"] is True  # the receiver loaded the pickle; digests matched
        assert row["megabytes"] > 0 and row["wall_s"] > 0 and row["first_byte_ms"] > 0
    by_case = {(row["payload"], row["method"]): row for row in results}
    for payload in ("records", "arrays"):  # both methods sent the same pickle
        assert by_case[payload, "naive"]["megabytes"] == by_case[payload, "adump"]["megabytes"]
    assert "adump" in run.stdout and "stall ms" in run.stdout
