"""The python engine's pickling speed, against the standard library's pure-Python pickler
(``pickle._Pickler``, the floor it must beat) and the C engine (``pickle.dumps``).

    python benchmarks/bench_engines.py                 # 3 rounds: about 3 minutes on 2 cores
    python benchmarks/bench_engines.py --quick         # smaller graphs, 2 rounds
    python benchmarks/bench_engines.py --markdown benchmarks/results/engines.md \\
        --json benchmarks/results/engines.json

Graphs (all picklable by all three ways, so within the C pickler's depth):

- ``records``: ``--records`` (100,000) small dicts of an int, a str, a float, a list and a tuple.
- ``shared``: 20,000 groups (dicts), each referring to 4 of 20,000 leaf dicts chosen at random,
  so most leaves are saved once and referred to through the memo after.
- ``deep lists``: 200 lists nested 400 deep, each level holding an int.
- ``linked objects``: 300 linked lists of 300 instances of a plain class (``__dict__`` state).
- ``deep python only``: a 1,000,000-level nested list, on the python engine alone (the other
  two raise ``RecursionError``): its time, for the record.

How: each measurement is one fresh child process, which builds the graph, pickles it once
untimed (warm-up), runs ``gc.collect()``, then times one pickling (``time.perf_counter``) into
nothing (``b"".join`` of the python engine's chunks; ``pickle._Pickler`` and ``pickle.dumps``
into a ``BytesIO``/bytes). Each child checks that its bytes equal ``pickle.dumps``' (the
python engine) or reports them as its SHA-256. Rounds run the three ways in a rotating order;
a graph's ratio is the median over rounds of each round's ratio, with its min-max range.
Nothing here asserts a figure.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import pickle
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

WAYS = ("python", "_Pickler", "C")
GRAPHS = ("records", "shared", "deep lists", "linked objects")


class Plain:
    def __init__(self, value: int, link: Plain | None) -> None:
        self.value = value
        self.link = link


def build(graph: str, quick: bool) -> Any:
    scale = 10 if quick else 1
    if graph == "records":
        return [
            {"id": i, "name": f"user{i}", "score": i * 1.5, "tags": ["a", "b"], "t": (i, i + 1)}
            for i in range(100_000 // scale)
        ]
    if graph == "shared":
        rng = random.Random(7)
        leaves: list[dict[str, Any]] = [{"id": i} for i in range(20_000 // scale)]
        return [
            {"group": g, "members": [rng.choice(leaves) for _ in range(4)]}
            for g in range(20_000 // scale)
        ]
    if graph == "deep lists":
        roots = []
        for _ in range(200 // scale):
            deep: list[Any] = []
            for level in range(400):
                deep = [level, deep]
            roots.append(deep)
        return roots
    if graph == "linked objects":
        heads = []
        for _ in range(300 // scale):
            head = None
            for i in range(300):
                head = Plain(i, head)
            heads.append(head)
        return heads
    if graph == "deep python only":
        deep = []
        for _ in range(100_000 if quick else 1_000_000):
            deep = [deep]
        return deep
    raise ValueError(graph)


def pickle_once(obj: Any, way: str, protocol: int) -> bytes:
    if way == "python":
        import streampickle

        return b"".join(streampickle.iter_dumps(obj, protocol, engine="python"))
    if way == "_Pickler":
        f = io.BytesIO()
        pickle._Pickler(f, protocol).dump(obj)
        return f.getvalue()
    return pickle.dumps(obj, protocol)


def child(graph: str, way: str, protocol: int, quick: bool) -> dict[str, Any]:
    import gc

    sys.setrecursionlimit(10_000)  # _Pickler spends several Python frames per level
    obj = build(graph, quick)
    pickle_once(obj, way, protocol)
    gc.collect()
    start = time.perf_counter()
    data = pickle_once(obj, way, protocol)
    seconds = time.perf_counter() - start
    # _Pickler batches differently from the C pickler (a last batch of one): not compared.
    same = way != "python" or graph == "deep python only" or data == pickle.dumps(obj, protocol)
    return {"seconds": seconds, "bytes": len(data), "identical": same,
            "sha256": hashlib.sha256(data).hexdigest()}  # fmt: skip


def run_child(graph: str, way: str, protocol: int, quick: bool) -> dict[str, Any]:
    args = [sys.executable, __file__, "--child", graph, way, str(protocol)]
    out = subprocess.run(args + (["--quick"] if quick else []), check=True, capture_output=True)
    return dict(json.loads(out.stdout))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--protocols", default="2,5")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", nargs=3, metavar=("GRAPH", "WAY", "PROTOCOL"))
    options = parser.parse_args()
    if options.child:
        graph, way, protocol = options.child
        print(json.dumps(child(graph, way, int(protocol), options.quick)))
        return
    rounds = 2 if options.quick and options.rounds == 3 else options.rounds
    protocols = [int(p) for p in options.protocols.split(",")]
    runs: list[dict[str, Any]] = []
    for r in range(rounds):
        for protocol in protocols:
            for graph in GRAPHS:
                order = WAYS[r % 3 :] + WAYS[: r % 3]
                for way in order:
                    result = run_child(graph, way, protocol, options.quick)
                    runs.append({"round": r, "graph": graph, "way": way,
                                 "protocol": protocol, **result})  # fmt: skip
                    print(f"round {r} p{protocol} {graph:15} {way:9} {result['seconds']:.3f} s",
                          file=sys.stderr)  # fmt: skip
            result = run_child("deep python only", "python", protocol, options.quick)
            runs.append({"round": r, "graph": "deep python only", "way": "python",
                         "protocol": protocol, **result})  # fmt: skip
    table = render(runs, rounds, protocols, options.quick)
    print(table)
    if options.markdown:
        options.markdown.write_text(table)
    if options.json:
        options.json.write_text(json.dumps(runs, indent=1) + "\n")


def _seconds(runs: list[dict[str, Any]], graph: str, way: str, protocol: int, r: int) -> float:
    for run in runs:
        if (run["graph"], run["way"], run["protocol"], run["round"]) == (graph, way, protocol, r):
            return float(run["seconds"])
    raise KeyError((graph, way, protocol, r))


def render(runs: list[dict[str, Any]], rounds: int, protocols: list[int], quick: bool) -> str:
    lines = [
        f"# Pickling engines{' (quick sizes)' if quick else ''}",
        "",
        f"Median over {rounds} rounds [min-max], each a fresh process; "
        f"`python benchmarks/bench_engines.py{' --quick' if quick else ''}`.",
        "",
        "| graph | protocol | python engine s | `_Pickler` s | C s "
        "| `_Pickler` / python (goal >= 1, aim 1.5) | python / C |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for protocol in protocols:
        for graph in GRAPHS:
            t = {w: [_seconds(runs, graph, w, protocol, r) for r in range(rounds)] for w in WAYS}
            over_py = [t["_Pickler"][r] / t["python"][r] for r in range(rounds)]
            over_c = [t["python"][r] / t["C"][r] for r in range(rounds)]
            lines.append(
                f"| {graph} | {protocol} | {statistics.median(t['python']):.3f} "
                f"| {statistics.median(t['_Pickler']):.3f} | {statistics.median(t['C']):.3f} "
                f"| {statistics.median(over_py):.2f}x [{min(over_py):.2f}-{max(over_py):.2f}] "
                f"| {statistics.median(over_c):.1f}x [{min(over_c):.1f}-{max(over_c):.1f}] |"
            )
        deep = [_seconds(runs, "deep python only", "python", protocol, r) for r in range(rounds)]
        lines.append(
            f"| {'100,000' if quick else '1,000,000'}-level nested list (python only) "
            f"| {protocol} | {statistics.median(deep):.2f} | RecursionError | RecursionError | | |"
        )
    identical = all(run["identical"] for run in runs)
    lines += ["", f"Every python-engine pickle identical to `pickle.dumps`: {identical}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
