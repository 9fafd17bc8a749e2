"""Smoke tests of the benchmark suite (benchmarks/run_suite.py), so that it cannot rot.

One tiny run of the suite (two backends, two methods, tiny payloads, a few concurrent clients,
whole-pickle digests compared) is shared by the tests below; they check what it writes.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
BACKENDS = ("asyncio", "trio")
METHODS = ("streampickle", "naive")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    """Run the suite once: (output directory, the JSON report, RESULTS.md's text)."""
    pytest.importorskip("matplotlib", reason="the plots need the bench extra: '.[bench]'")
    root = tmp_path_factory.mktemp("suite")
    out, markdown = root / "results", root / "RESULTS.md"
    run = subprocess.run(
        [sys.executable, str(BENCHMARKS / "run_suite.py"), "--quick", "--verify",
         "--backends", ",".join(BACKENDS), "--methods", ",".join(METHODS),
         "--sizes-records", "0.2", "--sizes-arrays", "1", "--clients", "8",
         "--object-kb", "200", "--gate-kb", "70",
         "--collector-records", "20000", "--many-clients", "20",
         "--out", str(out), "--markdown", str(markdown)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return out, json.loads((out / "results.json").read_text()), markdown.read_text()


def test_json_has_the_documented_keys(suite: tuple[Path, dict[str, Any], str]) -> None:
    _, report, _ = suite
    assert set(report) == {
        "machine", "config", "transfers", "receivers", "floors", "concurrency", "collector",
        "clients", "targets", "plots",
    }  # fmt: skip
    floors = {row["payload"]: row for row in report["floors"]}
    assert set(floors) == {"records", "arrays"}
    for row in floors.values():
        assert set(row) == {"payload", "target_mb", "object_mib", "load_rss_mib"}
        assert row["load_rss_mib"] > 0 and row["object_mib"] > 0
    assert report["config"]["repeat"] == 1 and report["machine"]["cpus"] >= 1
    cases = {(row["backend"], row["method"], row["payload"]) for row in report["transfers"]}
    assert cases == {(b, m, p) for b in BACKENDS for m in METHODS for p in ("records", "arrays")}
    metrics = {"megabytes", "object_mib", "wall_s", "receive_s", "ttfb_ms", "sender_rss_mib"}
    metrics |= {"receiver_rss_mib", "sender_stall_ms", "receiver_stall_ms"}
    metrics |= {"sender_cpu_stall_ms", "receiver_cpu_stall_ms"}
    for row in report["transfers"] + report["receivers"]:
        assert {"target_mb", "blast", "runs", "samples", *metrics} <= set(row)
        assert row["runs"] == len(row["samples"]) == 1
        assert row["wall_s"] > 0 and row["ttfb_ms"] > 0 and row["wall_s"] * 1000 > row["ttfb_ms"]
    # The pickle is the same bytes whichever method sent it (same payload, protocol 5).
    sizes = {(row["payload"], row["method"]): row["megabytes"] for row in report["transfers"]}
    for payload in ("records", "arrays"):
        assert sizes[payload, "streampickle"] == sizes[payload, "naive"] > 0
    receivers = {(row["backend"], row["method"], row["payload"]) for row in report["receivers"]}
    assert receivers == cases and all(row["blast"] for row in report["receivers"])
    assert {row["issue"] for row in report["targets"]} == {3, 4}
    assert sum("receiver alone" in row["target"] for row in report["targets"]) == 2 * 2
    assert sum("pickle.load from a file" in row["target"] for row in report["targets"]) == 2 * 2
    for row in report["targets"]:
        assert set(row) == {"issue", "target", "payload", "backend", "streampickle", "naive", "met"}


def test_concurrency_mode_reports_memory_per_stream(
    suite: tuple[Path, dict[str, Any], str],
) -> None:
    _, report, _ = suite
    rows = report["concurrency"]
    assert {(row["backend"], row["method"]) for row in rows} == {
        (backend, method) for backend in BACKENDS for method in METHODS
    }
    for row in rows:
        assert row["clients"] == 8 and row["pickle_kb"] > row["gate_kb"] == 70
        assert row["per_stream_kib"] == pytest.approx(
            row["server_rss_in_flight_mib"] * 1024 / row["clients"]
        )


def test_the_collector_and_many_clients_scenarios(
    suite: tuple[Path, dict[str, Any], str],
) -> None:
    """Both scenarios ran (every object checked by their children) and their tables, with
    the floor and the streampickle/naive ratio, are in RESULTS.md."""
    out, report, markdown = suite
    ways = report["collector"]["results"]["20000"]
    assert set(ways) == {"streampickle", "streampickle, pause off", "floor",
                         "pickle.loads, collector on"}  # fmt: skip
    assert all(run["seconds"] > 0 for runs in ways.values() for run in runs)
    clients = report["clients"]["results"]["20"]
    assert set(clients) == {"streampickle", "naive"}
    assert all(run["intact"] == 20 for runs in clients.values() for run in runs)
    assert "## Receiving object graphs: the collector" in markdown
    assert "| 20,000 | floor |" in markdown
    assert "## Many concurrent clients" in markdown and "| 20 | ratio |" in markdown
    assert (out / "collector.md").exists() and (out / "clients.md").exists()


def test_plots_and_results_md_are_written(suite: tuple[Path, dict[str, Any], str]) -> None:
    out, report, markdown = suite
    assert set(report["plots"]) == {"time", "memory", "stall", "ttfb"}
    for file in report["plots"].values():
        assert (out / file).read_bytes().startswith(PNG_SIGNATURE)
    links = re.findall(r"!\[\w+\]\(([^)]+)\)", markdown)
    assert sorted(links) == sorted(f"results/{file}" for file in report["plots"].values())
    for row in report["transfers"]:  # the table of medians has a row per case
        case = f"| {row['payload']} | {row['megabytes']:.0f} | {row['backend']} | {row['method']} |"
        assert case in markdown
    assert "## Targets" in markdown and "## Concurrency" in markdown
    assert "## Receivers alone" in markdown


def test_render_only_rebuilds_plots_and_markdown(
    suite: tuple[Path, dict[str, Any], str],
) -> None:
    out, report, markdown = suite
    for file in report["plots"].values():
        (out / file).unlink()
    rendered = out.parent / "again.md"
    run = subprocess.run(
        [sys.executable, str(BENCHMARKS / "run_suite.py"), "--render-only",
         "--out", str(out), "--markdown", str(rendered)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert rendered.read_text() == markdown  # nothing re-measured: the same document
    for file in report["plots"].values():
        assert (out / file).read_bytes().startswith(PNG_SIGNATURE)


def test_quick_runs_never_overwrite_the_published_results() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import run_suite
    finally:
        sys.path.remove(str(BENCHMARKS))
    quick, full = run_suite.parse(["--quick"]), run_suite.parse([])
    assert full.out == BENCHMARKS / "results" and full.markdown == BENCHMARKS / "RESULTS.md"
    assert quick.out == BENCHMARKS / "results-quick"
    assert quick.markdown == BENCHMARKS / "results-quick" / "RESULTS.md"
