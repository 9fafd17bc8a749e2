"""The benchmark suite: streampickle against the naive ways, on asyncio, uvloop and trio.

    python benchmarks/run_suite.py            # the published run: about 10 minutes on 2 cores
    python benchmarks/run_suite.py --quick    # small sizes, one run each, into results-quick/

Every transfer runs its sender and its receiver in two fresh processes over loopback TCP (see
`bench_stream`), for each backend x method x payload x size, ``--repeat`` times (interleaved, so
that a slow spell on a shared machine hits every configuration alike); medians are reported. Then
the receivers alone (issue 4): at each payload's largest size, a sender that pickled before the
clock started writes the whole pickle, to ``aload`` and to the naive receiver. Then the
concurrency mode (see `bench_server`): ``--clients`` clients stream to one server at once, and
the server's memory per in-flight stream is reported. Then two scenarios of their own
benchmarks, run as child processes: object graphs of growing size received against the
collector-off floor (`bench_collector`, ``--collector-records``) and thousands of clients
sending one object each to one server (`bench_clients`, ``--many-clients``); their tables are
included in the markdown. ``--render-only`` redoes the targets, plots and markdown from an
existing ``results.json``.

Writes ``OUT/results.json``, the plots ``OUT/time.png``, ``OUT/memory.png``, ``OUT/stall.png``,
``OUT/ttfb.png`` (Agg backend), ``OUT/collector.{md,json}`` and ``OUT/clients.{md,json}``, and
``--markdown`` (``benchmarks/RESULTS.md``), which links the plots relatively. The JSON has the
keys in `JSON_KEYS`; each row of ``transfers`` and ``receivers`` has `CASE_KEYS` and the medians
of `METRICS` (plus ``samples``, every run's figures); each of ``concurrency`` has
`CONCURRENCY_KEYS`; each of ``targets`` has `TARGET_KEYS`; ``collector`` and ``clients`` are
the JSON those two benchmarks write (None when skipped).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from bench_server import run_server_case
from bench_stream import BACKENDS, METHODS, PAYLOADS, Case, run_transfer, unpickle_floor

HERE = Path(__file__).resolve().parent
METRICS = (
    "megabytes",
    "object_mib",
    "wall_s",
    "receive_s",
    "ttfb_ms",
    "sender_rss_mib",
    "receiver_rss_mib",
    "sender_stall_ms",
    "receiver_stall_ms",
    "sender_cpu_stall_ms",
    "receiver_cpu_stall_ms",
)
CASE_KEYS = ("backend", "method", "payload", "protocol", "target_mb", "blast", "runs")
CONCURRENCY_KEYS = (
    "backend",
    "method",
    "clients",
    "pickle_kb",
    "gate_kb",
    "server_rss_in_flight_mib",
    "per_stream_kib",
    "release_to_done_s",
)
TARGET_KEYS = ("issue", "target", "payload", "backend", "streampickle", "naive", "met")
SIDES = {3: "sending (adump)", 4: "receiving (aload)"}  # the markdown's; the JSON keeps "issue"
JSON_KEYS = (
    "machine", "config", "transfers", "receivers", "floors", "concurrency", "collector",
    "clients", "targets", "plots",
)  # fmt: skip
FLOOR_KEYS = ("payload", "target_mb", "object_mib", "load_rss_mib")
PLOTS = ("time", "memory", "stall", "ttfb")
FULL_SIZES = {"records": [10.0, 30.0, 100.0], "arrays": [10.0, 100.0, 1000.0]}
QUICK_SIZES = {"records": [1.0, 4.0], "arrays": [4.0, 32.0]}
#: Slack allowed by the "no worse than naive" targets: about the run-to-run noise seen here.
TIME_SLACK = 1.05


def sizes(text: str) -> list[float]:
    return [float(size) for size in text.split(",") if size]


def counts(text: str) -> list[int]:
    return [int(count) for count in text.split(",") if count]


def names(choices: Iterable[str]) -> Any:
    def parse(text: str) -> list[str]:
        chosen = [name for name in text.split(",") if name]
        unknown = set(chosen) - set(choices)
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown: {', '.join(sorted(unknown))}")
        return chosen

    return parse


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes, one run each")
    parser.add_argument("--sizes-records", type=sizes, help="pickle sizes in MB, comma-separated")
    parser.add_argument("--sizes-arrays", type=sizes, help="pickle sizes in MB, comma-separated")
    parser.add_argument("--backends", type=names(BACKENDS), default=list(BACKENDS))
    parser.add_argument("--methods", type=names(METHODS), default=list(METHODS))
    parser.add_argument("--payloads", type=names(PAYLOADS), default=list(PAYLOADS))
    parser.add_argument("--repeat", type=int, help="runs per configuration (default 3; quick 1)")
    parser.add_argument("--clients", type=int, help="concurrency mode (default 1000; quick 50)")
    parser.add_argument("--object-kb", type=int, default=256, help="concurrency: per client")
    parser.add_argument("--gate-kb", type=int, default=128, help="concurrency: sent before pause")
    parser.add_argument(
        "--collector-records", type=counts,
        help="the collector scenario (bench_collector): record counts, comma-separated "
        "(default 125000,250000,500000,1000000; quick 50000,100000; empty: skip it)",
    )  # fmt: skip
    parser.add_argument(
        "--many-clients", type=counts,
        help="the many-clients scenario (bench_clients): client counts, comma-separated "
        "(default 1000,5000; quick 200; empty: skip it)",
    )  # fmt: skip
    parser.add_argument(
        "--no-receivers", dest="receivers", action="store_false",
        help="skip the receivers-alone runs (the largest size, pickled before the clock starts)",
    )  # fmt: skip
    parser.add_argument("--verify", action="store_true", help="compare whole pickles' digests")
    parser.add_argument(
        "--out", type=Path,
        help="where the JSON, plots and tables go (default benchmarks/results; with --quick "
        "benchmarks/results-quick, so that a quick run never overwrites the published one)",
    )  # fmt: skip
    parser.add_argument(
        "--markdown", type=Path,
        help="the report (default benchmarks/RESULTS.md; with --quick OUT/RESULTS.md)",
    )  # fmt: skip
    parser.add_argument(
        "--render-only", action="store_true",
        help="redo targets, plots and markdown from OUT/results.json, without running",
    )  # fmt: skip
    args = parser.parse_args(argv)
    default_sizes = QUICK_SIZES if args.quick else FULL_SIZES
    args.sizes_records = args.sizes_records or default_sizes["records"]
    args.sizes_arrays = args.sizes_arrays or default_sizes["arrays"]
    args.out = args.out or HERE / ("results-quick" if args.quick else "results")
    args.markdown = args.markdown or (
        args.out / "RESULTS.md" if args.quick else HERE / "RESULTS.md"
    )
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.clients = args.clients if args.clients is not None else (50 if args.quick else 1000)
    if args.collector_records is None:
        args.collector_records = (
            [50_000, 100_000] if args.quick else [125_000, 250_000, 500_000, 1_000_000]
        )
    if args.many_clients is None:
        args.many_clients = [200] if args.quick else [1000, 5000]
    return args


# ---------------------------------------------------------------------------------------------
# Running.


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def payload_sizes(args: argparse.Namespace, payload: str) -> list[float]:
    return list(args.sizes_records if payload == "records" else args.sizes_arrays)


def transfer_cases(args: argparse.Namespace) -> list[Case]:
    """Every backend x method x payload x size."""
    return [
        Case(backend, method, payload, size)
        for payload in args.payloads
        for size in payload_sizes(args, payload)
        for backend in args.backends
        for method in args.methods
    ]


def receiver_cases(args: argparse.Namespace) -> list[Case]:
    """The receivers alone (issue 4): `streampickle` and `naive`, at each payload's largest
    size, from a sender that pickled before the clock started."""
    if not args.receivers:
        return []
    return [
        Case(backend, method, payload, max(payload_sizes(args, payload)), blast=True)
        for payload in args.payloads
        for backend in args.backends
        for method in ("streampickle", "naive")
    ]


def run_cases(cases: list[Case], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every case ``args.repeat`` times, interleaved; one median row per case."""
    samples: dict[Case, list[dict[str, Any]]] = {case: [] for case in cases}
    for run, case in itertools.product(range(args.repeat), cases):
        log(f"run {run + 1}/{args.repeat}: {case.payload} {case.megabytes:g} MB "
            f"{case.backend} {case.method}{' (receiver alone)' if case.blast else ''}")  # fmt: skip
        samples[case].append(run_transfer(case, args.verify))
    return [median_row(case, runs) for case, runs in samples.items()]


def median_row(case: Case, runs: list[dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {key: value for key, value in asdict(case).items() if key != "megabytes"}
    row.update(target_mb=case.megabytes, runs=len(runs))
    row.update({key: statistics.median(run[key] for run in runs) for key in METRICS})
    row["samples"] = runs
    return row


def run_floors(args: argparse.Namespace) -> list[dict[str, Any]]:
    """``pickle.load`` from a file at each payload's largest size: the receivers' floor."""
    rows = []
    for payload in args.payloads:
        size = max(payload_sizes(args, payload))
        log(f"floor: pickle.load of {payload} {size:g} MB from a file")
        rows.append({"payload": payload, "target_mb": size, **unpickle_floor(payload, size)})
    return rows


def run_scenario(script: str, name: str, flags: list[str], args: argparse.Namespace) -> Any:
    """Run the benchmark *script* with *flags* (and ``--rounds``), writing ``OUT/name.md`` and
    ``OUT/name.json``; return that JSON (None when *flags* is empty: the scenario is skipped)."""
    if not flags:
        return None
    log(f"{name}: {script} {' '.join(flags)}")
    markdown, report = args.out / f"{name}.md", args.out / f"{name}.json"
    subprocess.run(
        [sys.executable, str(HERE / script), *flags, f"--rounds={args.repeat}",
         f"--markdown={markdown}", f"--json={report}"],
        check=True, stdout=subprocess.DEVNULL, timeout=3600,
    )  # fmt: skip
    return json.loads(report.read_text())


def run_collector(args: argparse.Namespace) -> Any:
    """Receiving object graphs of growing size against the collector-off floor."""
    sizes = [str(count) for count in args.collector_records]
    return run_scenario(
        "bench_collector.py", "collector", ["--sizes", *sizes] if sizes else [], args
    )


def run_many_clients(args: argparse.Namespace) -> Any:
    """Thousands of clients sending one object each to one asyncio server."""
    clients = [str(count) for count in args.many_clients]
    return run_scenario(
        "bench_clients.py", "clients", ["--clients", *clients] if clients else [], args
    )


def run_concurrency(args: argparse.Namespace) -> list[dict[str, Any]]:
    if not args.clients:
        return []
    rows = []
    for backend, method in itertools.product(args.backends, ("streampickle", "naive")):
        log(f"concurrency: {args.clients} clients, {backend} {method}")
        rows.append(run_server_case(backend, method, args.clients, args.object_kb, args.gate_kb))
    return rows


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if "model name" in line)
        memory_kib = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, StopIteration, ValueError):
        memory_kib = 0
    versions: dict[str, str | None] = {}
    for package in ("anyio", "trio", "uvloop", "greenlet", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": round(memory_kib / (1 << 20), 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


# ---------------------------------------------------------------------------------------------
# The issues' targets, checked on the medians at the largest size of each payload: issue 3
# (adump) sender memory, loop stall and time; issue 4 (aload) receiver memory. Issue 4's "aload
# no slower than the naive receiver" is the end-to-end time, which includes both ends.


def targets(transfers: list[dict[str, Any]], floors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The targets, per payload and backend, against the fastest naive method (and for the
    receiver's memory, against *floors*: ``pickle.load`` from a file)."""
    rows = []
    floor = {row["payload"]: row["load_rss_mib"] - row["object_mib"] for row in floors}
    for payload, backend in itertools.product(PAYLOADS, BACKENDS):
        cases = [row for row in transfers if (row["payload"], row["backend"]) == (payload, backend)]
        largest = max((row["target_mb"] for row in cases), default=None)
        by_method = {row["method"]: row for row in cases if row["target_mb"] == largest}
        ours = by_method.pop("streampickle", None)
        if ours is not None and by_method:
            fastest = min(by_method.values(), key=lambda row: row["wall_s"])
            for check in checks(payload, ours, fastest, floor.get(payload)):
                rows.append(dict(zip(TARGET_KEYS, check, strict=True)) | {"backend": backend})
    return rows


def receiver_targets(receivers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 4's time target, on the receivers-alone runs: aload no slower than naive."""
    rows = []
    for payload, backend in itertools.product(PAYLOADS, BACKENDS):
        by_method = {
            row["method"]: row["receive_s"]
            for row in receivers
            if (row["payload"], row["backend"]) == (payload, backend)
        }
        if {"streampickle", "naive"} <= set(by_method):
            speedup = by_method["naive"] / by_method["streampickle"]
            text = "receiver alone no slower than naive (x faster)"
            check = (4, text, payload, backend, speedup, 1.0, speedup >= 1 / TIME_SLACK)
            rows.append(dict(zip(TARGET_KEYS, check, strict=True)))
    return rows


def checks(
    payload: str, ours: dict[str, Any], naive: dict[str, Any], floor: float | None
) -> list[tuple[Any, ...]]:
    """(issue, target, payload, None, streampickle's figure, naive's, met) for one case;
    *floor* is what ``pickle.load`` from a file costs over the object, if measured."""
    speedup = naive["wall_s"] / ours["wall_s"]
    found = []
    if payload == "arrays":
        memory, stall = ours["sender_rss_mib"], ours["sender_stall_ms"]
        cpu, naive_cpu = ours["sender_cpu_stall_ms"], naive["sender_cpu_stall_ms"]
        found += [
            (3, "sender peak RSS <= 4 MiB extra", memory, naive["sender_rss_mib"], memory <= 4),
            (3, "sender loop stall <= 10 ms", stall, naive["sender_stall_ms"], stall <= 10),
            (3, "sender loop stall in CPU time <= 10 ms", cpu, naive_cpu, cpu <= 10),
            (3, "end to end >= 2x faster than naive (x)", speedup, 1.0, speedup >= 2),
        ]
    else:
        met = speedup >= 1 / TIME_SLACK
        found.append((3, "end to end no slower than naive (x faster)", speedup, 1.0, met))
    overhead = ours["receiver_rss_mib"] - ours["object_mib"]
    naive_overhead = naive["receiver_rss_mib"] - naive["object_mib"]
    found.append((4, "receiver peak - object <= 4 MiB", overhead, naive_overhead, overhead <= 4))
    if floor is not None:
        text = f"receiver peak - object <= pickle.load from a file's ({floor:.1f}) + 4 MiB"
        found.append((4, text, overhead, naive_overhead, overhead <= floor + 4))
    return [(issue, text, payload, None, *rest) for issue, text, *rest in found]


# ---------------------------------------------------------------------------------------------
# Plots.

COLORS = {"streampickle": "tab:green", "naive": "tab:red", "naive-thread": "tab:orange"}
PLOT_SPECS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "time": ("end-to-end time (s)", [("wall_s", "-")]),
    "memory": ("peak RSS increase (MiB)", [("sender_rss_mib", "-"), ("receiver_rss_mib", "--")]),
    "stall": ("max event-loop stall (ms)", [("sender_stall_ms", "-"), ("receiver_stall_ms", "--")]),
    "ttfb": ("time to first byte (ms)", [("ttfb_ms", "-")]),
}


def plot(transfers: list[dict[str, Any]], out: Path) -> dict[str, str]:
    """One PNG per metric: a grid of payload (rows) x backend (columns), log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    payloads = [p for p in PAYLOADS if any(row["payload"] == p for row in transfers)]
    backends = [b for b in BACKENDS if any(row["backend"] == b for row in transfers)]
    files = {}
    for name, (label, series) in PLOT_SPECS.items():
        figure, axes = plt.subplots(
            len(payloads), len(backends), figsize=(4 * len(backends), 3.2 * len(payloads)),
            squeeze=False, sharex="row", sharey="row",
        )  # fmt: skip
        for (i, payload), (j, backend) in itertools.product(
            enumerate(payloads), enumerate(backends)
        ):
            draw(axes[i][j], transfers, payload, backend, series)
            axes[i][j].set_title(f"{payload}, {backend}", fontsize=9)
            axes[i][0].set_ylabel(label, fontsize=8)
            axes[-1][j].set_xlabel("pickle size (MB)", fontsize=8)
        handles, labels = axes[0][0].get_legend_handles_labels()
        figure.legend(handles, labels, loc="upper right", fontsize=7, ncol=3)
        title = f"{label}; solid: sender, dashed: receiver" if len(series) > 1 else label
        figure.suptitle(title, x=0.02, ha="left")
        figure.subplots_adjust(left=0.08, right=0.98, bottom=0.09, top=0.86, hspace=0.35)
        files[name] = f"{name}.png"
        figure.savefig(out / files[name], dpi=72)
        plt.close(figure)
    return files


def draw(axis: Any, transfers: list[dict[str, Any]], payload: str, backend: str,
         series: list[tuple[str, str]]) -> None:  # fmt: skip
    for method, (metric, style) in itertools.product(METHODS, series):
        rows = sorted(
            (row for row in transfers if (row["payload"], row["backend"], row["method"])
             == (payload, backend, method)),
            key=lambda row: row["megabytes"],
        )  # fmt: skip
        if rows:
            side = "" if len(series) == 1 else f" ({metric.split('_')[0]})"
            axis.plot(
                [row["megabytes"] for row in rows],
                [max(row[metric], 0.01) for row in rows],  # log axes: 0 shows as 0.01
                style, marker="o", markersize=3, color=COLORS[method], label=method + side,
            )  # fmt: skip
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.minorticks_off()  # log axes' minor ticks cost most of the drawing time
    axis.grid(True, linewidth=0.3)
    axis.tick_params(labelsize=7)


# ---------------------------------------------------------------------------------------------
# RESULTS.md


def markdown(report: dict[str, Any], markdown_path: Path, out: Path) -> str:
    link = Path(os.path.relpath(out, markdown_path.parent)).as_posix()
    config, host = report["config"], report["machine"]
    versions = ", ".join(f"{name} {version}" for name, version in host["versions"].items())
    lines = [
        "# Benchmark results",
        "",
        f"Produced by `python benchmarks/run_suite.py {' '.join(config['argv'])}`".rstrip()
        + f" on {host['date']} in {config['duration_s'] / 60:.1f} minutes.",
        f"Machine: {host['cpu']}, {host['cpus']} cores, {host['memory_gib']} GiB RAM, "
        f"{host['os']}; Python {host['python']}; {versions}.",
        f"Each figure is the median of {config['repeat']} runs; every run is a fresh sender "
        "process and a fresh receiver process over loopback TCP. The machine was shared: its "
        "5-minute load average was {:.1f} at the start and {:.1f} at the end.".format(
            *host["load_average_5min"]
        ),
        "",
        *NOTES,
        "",
        "## Targets, at the largest size of each payload",
        "",
        summary(report["targets"]),
        "",
        "| side | target | payload | backend | streampickle | best naive | met |",
        "|---|---|---|---|---:|---:|---|",
    ]
    for row in report["targets"]:
        lines.append(
            f"| {SIDES.get(row['issue'], row['issue'])} | {row['target']} | {row['payload']} "
            f"| {row['backend']} "
            f"| {row['streampickle']:.1f} | {row['naive']:.1f} | "
            f"{'yes' if row['met'] else '**no**'} |"
        )
    lines += ["", "## Medians", "", TABLE_HEADER, "|---|---:|---|---|" + "---:|" * 7]
    for row in sorted(report["transfers"], key=table_order):
        lines.append(
            f"| {row['payload']} | {row['megabytes']:.0f} | {row['backend']} | {row['method']} "
            f"| {row['wall_s']:.3f} | {row['ttfb_ms']:.1f} | {row['sender_rss_mib']:.1f} "
            f"| {row['receiver_rss_mib']:.1f} | {row['object_mib']:.1f} "
            f"| {row['sender_stall_ms']:.1f} | {row['receiver_stall_ms']:.1f} |"
        )
    lines += receiver_lines(report["receivers"])
    lines += concurrency_lines(report["concurrency"])
    lines += included_lines(
        out / "collector.md", "Receiving object graphs: the collector", markdown_path
    )
    lines += included_lines(out / "clients.md", "Many concurrent clients", markdown_path)
    lines += protocol_lines(markdown_path)
    lines += restricted_lines(markdown_path)
    lines += included_lines(ENGINES_TABLE, "Pickling engines (`engine=`)", markdown_path)
    lines += ["", "## Plots", ""]
    lines += [f"![{name}]({link}/{file})" for name, file in report["plots"].items()]
    return "\n".join(lines) + "\n"


def summary(rows: list[dict[str, Any]]) -> str:
    missed = sorted({f"{row['target']} ({row['payload']})" for row in rows if not row["met"]})
    text = f"{sum(row['met'] for row in rows)} of {len(rows)} checks met."
    return text + (f" Missed on some backend: {'; '.join(missed)}." if missed else "")


TABLE_HEADER = (
    "| payload | MB | backend | method | wall s | first byte ms | sender +MiB | receiver +MiB "
    "| object MiB | sender stall ms | receiver stall ms |"
)


def table_order(row: dict[str, Any]) -> tuple[int, float, int, int]:
    return (
        PAYLOADS.index(row["payload"]),
        row["target_mb"],
        BACKENDS.index(row["backend"]),
        METHODS.index(row["method"]),
    )


def receiver_lines(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    lines = [
        "",
        "## Receivers alone",
        "",
        "The same transfers at the largest size, but the sender pickles before the clock "
        "starts and writes the whole pickle at full speed (after the length prefix for the naive "
        "receiver, in 1 MiB writes), so only the receivers differ. *Receive* is from the "
        "first byte to the whole object. It compares the receivers with each other; with "
        "this sender the receive times varied more between runs than the end-to-end ones "
        "(every run is in `results.json`).",
        "",
        "| payload | MB | backend | receiver | receive s | receiver +MiB | object MiB "
        "| receiver stall ms |",
        "|---|---:|---|---|---:|---:|---:|---:|",
    ]
    for row in sorted(rows, key=table_order):
        method = "aload" if row["method"] == "streampickle" else "readexactly + loads"
        lines.append(
            f"| {row['payload']} | {row['megabytes']:.0f} | {row['backend']} | {method} "
            f"| {row['receive_s']:.3f} | {row['receiver_rss_mib']:.1f} "
            f"| {row['object_mib']:.1f} | {row['receiver_stall_ms']:.1f} |"
        )
    return lines


#: The table of `bench_protocols` (a separate run: ``python benchmarks/bench_protocols.py
#: --markdown benchmarks/results/protocols-after.md``), included in the report when present.
PROTOCOL_TABLE = HERE / "results" / "protocols-after.md"


def protocol_lines(markdown_path: Path) -> list[str]:
    """The protocol x stream-kind table of the last `bench_protocols` run, if there is one."""
    return included_lines(PROTOCOL_TABLE, "Protocols and stream kinds", markdown_path)


#: The table of `bench_restricted` (a separate run: ``python benchmarks/bench_restricted.py
#: --markdown benchmarks/results/restricted.md``), included in the report when present.
RESTRICTED_TABLE = HERE / "results" / "restricted.md"


#: The table of `bench_engines` (a separate run: ``python benchmarks/bench_engines.py
#: --markdown benchmarks/results/engines.md``), included in the report when present.
ENGINES_TABLE = HERE / "results" / "engines.md"


def restricted_lines(markdown_path: Path) -> list[str]:
    """The restricted-loading table of the last `bench_restricted` run, if there is one."""
    return included_lines(RESTRICTED_TABLE, "Restricted loading (`allow=`)", markdown_path)


def included_lines(table_path: Path, title: str, markdown_path: Path) -> list[str]:
    """A section *title* with the markdown at *table_path* (its own title left out), if any."""
    if not table_path.exists():
        return []
    link = Path(os.path.relpath(table_path, markdown_path.parent)).as_posix()
    table = table_path.read_text().strip().splitlines()
    body = [line for line in table if not line.startswith("# ")]  # its own title
    return ["", f"## {title}", "", f"From [{link}]({link}):", *body]


def concurrency_lines(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    first = rows[0]
    lines = [
        "",
        "## Concurrency: server memory per in-flight stream",
        "",
        f"{first['clients']} clients in one process connect to one server process at once; "
        f"each streams a {first['pickle_kb']:.0f} KB pickle (rows of text), sends the first "
        f"{first['gate_kb']} KB and is then held by backpressure until every stream has "
        "delivered its first part. The server's RSS is read at that moment; every object is "
        "then checked against the one its client built (all arrived intact). At that moment "
        "streampickle's server holds each partly built object (text rows take more memory "
        "than their pickle); the naive server holds the partial pickle bytes and has built "
        "nothing yet.",
        "",
        "| backend | method | server RSS in flight MiB | per stream KiB | release to done s |",
        "|---|---|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['backend']} | {row['method']} | {row['server_rss_in_flight_mib']:.1f} "
            f"| {row['per_stream_kib']:.0f} | {row['release_to_done_s']:.2f} |"
        )
    return lines


NOTES = [
    "How to read these figures:",
    "",
    "- **Methods.** `streampickle`: `adump` into the socket, `aload` from it. `naive`: "
    "`pickle.dumps`, then an 8-byte length prefix and the pickle written with "
    "`write`+`drain` (asyncio, uvloop) or `send_all` (trio); the receiver reads the prefix, "
    "`readexactly` (a `receive_some` loop on trio) and `pickle.loads`. `naive-thread`: the "
    "same with `pickle.dumps` in `anyio.to_thread.run_sync`. Protocol 5, in-band buffers.",
    "- **Payloads.** `records`: a list of small dicts (5 fields). `arrays`: 8 numpy `uint8` "
    "arrays. MB is the pickle's size (10^6 bytes); *object MiB* is the memory the sender's "
    "object took when built.",
    "- **Wall** is from the sender starting to pickle to the receiver holding the whole "
    "object; *first byte* is from the same start to the receiver's first byte (both "
    "processes read CLOCK_MONOTONIC).",
    "- **Memory** is the `ru_maxrss` high-water mark after the transfer minus before it, in "
    "each process (built object, imports and warm-up excluded). The receiver's figure "
    "includes the received object, so compare it with *object MiB*: the difference is what "
    "receiving cost. For records it includes the unpickler's memo (a pointer per memoized "
    "object, held until the load ends), which every receiver of these bytes pays: the "
    "*floor*, `pickle.load` of the same pickle from a file in a fresh process, measures it, "
    'and the "object + a few frames" target is also checked against it.',
    "- **Stall** is the longest a task sleeping 1 ms in a loop was late: how long the event "
    "loop was blocked, in each process. This wall-clock figure also counts the process being "
    "preempted by other work on the shared machine (equal stalls in sender and receiver at "
    "once are that); the JSON also has `*_cpu_stall_ms`, the most CPU time the loop's thread "
    "spent in one such gap, which leaves preemption out (and also time spent waiting for the "
    "GIL, so it understates `naive-thread`). For records, streampickle's longest stalls grow "
    "with the graph although each frame is small: on the sender most likely the C pickler's "
    "memo table doubling (one resize rehashes every entry: millions for the largest graph), "
    "on the receiver the cyclic garbage collector walking the objects built so far (both "
    "inferred, not profiled).",
    "- **Plots** are log-log; a figure of 0 (below the measurement's resolution) is drawn at 0.01.",
    "- **Noise.** The machine is shared with other work (2 cores); times and stalls vary "
    "by 10-30% between runs, more for the sub-second cases, which also include process "
    "start-up effects; memory figures are stable to about a MiB. The targets allow 5% for "
    '"no slower".',
]


def render(report: dict[str, Any], args: argparse.Namespace) -> None:
    """Check the targets, draw the plots, write the JSON and the markdown from *report*."""
    floors = report.setdefault("floors", [])  # absent from reports made before it existed
    report["targets"] = targets(report["transfers"], floors)
    report["targets"] += receiver_targets(report["receivers"])
    report["plots"] = plot(report["transfers"], args.out)
    (args.out / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    args.markdown.write_text(markdown(report, args.markdown, args.out))
    log(f"wrote {args.out / 'results.json'}, {len(report['plots'])} plots, {args.markdown}")


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.render_only:
        return render(json.loads((args.out / "results.json").read_text()), args)
    started, load_before = time.monotonic(), os.getloadavg()[1]
    report: dict[str, Any] = {
        "config": {
            "argv": sys.argv[1:] if argv is None else argv,
            "quick": args.quick,
            "repeat": args.repeat,
            "backends": args.backends,
            "methods": args.methods,
            "payloads": args.payloads,
            "sizes_mb": {"records": args.sizes_records, "arrays": args.sizes_arrays},
            "protocol": 5,
        },
        "transfers": run_cases(transfer_cases(args), args),
        "receivers": run_cases(receiver_cases(args), args),
        "floors": run_floors(args),
        "concurrency": run_concurrency(args),
        "collector": run_collector(args),
        "clients": run_many_clients(args),
    }
    report["machine"] = machine() | {"load_average_5min": [load_before, os.getloadavg()[1]]}
    report["config"]["duration_s"] = time.monotonic() - started
    render(report, args)


if __name__ == "__main__":
    main()
