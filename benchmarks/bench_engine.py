"""The sync engine against the standard library, in one run: median of N timings each.

    python benchmarks/bench_engine.py [--records 300000] [--repeat 5]

Prints the time of ``pickle.dumps`` vs ``b"".join(iter_dumps(...))`` (C pickler on a greenlet)
and of ``pickle.loads`` vs the sans-IO loader driven from a ``BytesIO``, as ratios.
"""

from __future__ import annotations

import argparse
import io
import pickle
import statistics
import time
from collections.abc import Callable

import streampickle


def median_seconds(func: Callable[[], object], repeat: int) -> float:
    timings = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--protocol", type=int, default=5)
    args = parser.parse_args()
    obj = [
        {"id": i, "name": f"record {i}", "score": i / 7, "tags": ["a", "b"]}
        for i in range(args.records)
    ]
    data = pickle.dumps(obj, args.protocol)
    rows = [
        ("dumps", lambda: pickle.dumps(obj, args.protocol),
         lambda: b"".join(streampickle.iter_dumps(obj, args.protocol))),
        ("loads", lambda: pickle.loads(data),
         lambda: streampickle.drive_load(streampickle.iter_loads(), io.BytesIO(data))),
    ]  # fmt: skip
    print(f"{args.records} records, {len(data) / 1e6:.1f} MB pickle, protocol {args.protocol}")
    for name, baseline, ours in rows:
        base, mine = median_seconds(baseline, args.repeat), median_seconds(ours, args.repeat)
        ratio = mine / base
        print(
            f"{name}: pickle {base * 1e3:.0f} ms, streampickle {mine * 1e3:.0f} ms ({ratio:.2f}x)"
        )


if __name__ == "__main__":
    main()
