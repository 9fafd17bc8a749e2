"""``streampickle inspect``: what is inside a file of pickles."""

from __future__ import annotations

import argparse
import contextlib
import json
import pickle
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, BinaryIO

from .._inspect import LARGE_PAYLOAD, PickleReport, Stats, inspect_stream
from .common import one_line, printable

__all__ = ["add_parser", "run"]

_INSPECT_HELP = f"""\
Reads FILE (or stdin for "-") sequentially, one opcode at a time; bytes payloads of 1 MiB
or more are skipped over, never held, so files larger than memory can be inspected. For each
pickle, in order: its offset and size, its protocol, its frames (count, smallest, largest,
total), its large payloads (bytes, str or buffers of {LARGE_PAYLOAD:,} bytes or more, which a
protocol 4/5 pickler writes outside frames), its out-of-band buffers (protocol 5), its opcode
counts, and the globals it references: the Allowlist needed to load it with
streampickle.load(..., allow=...), printed as Python source to paste, and the limits it needs
raised above Limits' defaults (which allow= checks), as keywords. Nothing is imported or
unpickled.

--json prints {{"pickles": [...], "count", "total_bytes", "error"}}; each pickle has "offset",
"size", "protocol", "frames" and "large_payloads" ({{"count", "min", "max", "total"}}, and
"sizes" for payloads), "out_of_band_buffers", "opcodes" ({{name: count}}), "opcode_count",
"globals" ([[module, name], ...]), "dangerous_globals", "allowlist" and "limits_needed"
({{keyword: value}}).

A malformed, truncated or empty input prints what was read before the error (the JSON
document then has "error" set), the error as one line on stderr, and exits with status 1."""


def add_parser(commands: Any) -> None:
    """Add the command to *commands* (argparse subparsers)."""
    raw = argparse.RawDescriptionHelpFormatter
    sub = commands.add_parser(
        "inspect", help="show what is inside a pickle file", description=_INSPECT_HELP,
        formatter_class=raw,
    )  # fmt: skip
    sub.add_argument("file", metavar="FILE", help='a file of pickles, or "-" for stdin')
    sub.add_argument(
        "--no-fix-imports", dest="fix_imports", action="store_false",
        help="list Python 2 global names as written, not as pickle maps them",
    )  # fmt: skip
    sub.add_argument("--json", action="store_true", help="print the report as JSON")
    sub.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    with _open_input(args.file) as file:
        reports = inspect_stream(file, fix_imports=args.fix_imports)
        if args.json:
            return _inspect_json(reports)
        return _inspect_text(reports)


@contextlib.contextmanager
def _open_input(path: str) -> Iterator[BinaryIO]:
    """*path* opened for binary reading, or stdin's binary buffer (left open) for ``-``."""
    if path == "-":
        yield sys.stdin.buffer
        return
    with Path(path).open("rb") as file:
        yield file


def _inspect_text(reports: Iterator[PickleReport]) -> int:
    count = total = 0
    for count, report in enumerate(reports, 1):
        total += report.size
        print("\n".join(_describe(count, report)), flush=True)
    print(f"total: {count:,} pickle{'s' * (count != 1)}, {total:,} bytes")
    return 0


def _describe(number: int, report: PickleReport) -> Iterator[str]:
    yield (
        f"pickle {number}: offset {report.offset:,}, {report.size:,} bytes, "
        f"protocol {report.protocol}"
    )
    yield f"  frames: {_stats(report.frames)}"
    payloads = _stats(report.large_payloads)
    if report.payload_sizes:
        shown = ", ".join(f"{size:,}" for size in report.payload_sizes[:8])
        more = ", ..." if len(report.payload_sizes) > 8 else ""
        payloads += f"; sizes {shown}{more}"
    yield f"  large payloads: {payloads}"
    yield f"  out-of-band buffers: {report.out_of_band_buffers}"
    yield f"  opcodes: {sum(report.opcodes.values()):,}"
    width = max(map(len, report.opcodes))
    for name, times in report.opcodes.most_common():
        yield f"    {name:{width}}  {times:>12,}"
    if not report.globals:
        yield "  globals: none (allow=[] is enough for them)"
    else:
        yield f"  globals: {len(report.globals)}; the allowlist it needs:"
        yield f"    {report.allowlist_source()}"
    for module, name in report.dangerous_globals:
        yield (
            f"    warning: {printable(f'{module}.{name}')} is known to be dangerous (it can run "
            "code)"
        )
    needed = report.limits_needed()
    if not needed:
        yield "  limits: within Limits' defaults (what allow= checks)"
        return
    keywords = ", ".join(f"{name}={value}" for name, value in needed.items())
    yield f"  limits: beyond Limits' defaults; to load it under allow=, also pass {keywords}"


def _stats(stats: Stats) -> str:
    if not stats.count:
        return "none"
    sizes = f"smallest {stats.min:,}, largest {stats.max:,}, total {stats.total:,} bytes"
    return f"{stats.count:,} ({sizes})"


def _inspect_json(reports: Iterator[PickleReport]) -> int:
    pickles: list[dict[str, Any]] = []
    error: BaseException | None = None
    try:
        pickles.extend(_report_json(report) for report in reports)
    except pickle.UnpicklingError as exc:
        error = exc
    document = {
        "pickles": pickles,
        "count": len(pickles),
        "total_bytes": sum(item["size"] for item in pickles),
        "error": None if error is None else one_line(error),
    }
    print(json.dumps(document, indent=2))
    if error is not None:
        raise error
    return 0


def _report_json(report: PickleReport) -> dict[str, Any]:
    return {
        "offset": report.offset,
        "size": report.size,
        "protocol": report.protocol,
        "frames": asdict(report.frames),
        "large_payloads": {**asdict(report.large_payloads), "sizes": report.payload_sizes},
        "out_of_band_buffers": report.out_of_band_buffers,
        "opcodes": dict(report.opcodes.most_common()),
        "opcode_count": sum(report.opcodes.values()),
        "globals": [list(pair) for pair in report.globals],
        "dangerous_globals": [list(pair) for pair in report.dangerous_globals],
        "allowlist": report.allowlist_source(),
        "limits_needed": report.limits_needed(),
    }
