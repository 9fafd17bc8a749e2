"""The command line: ``streampickle demo`` and ``streampickle inspect`` (`main`).

Output contract, for scripts: results go to stdout (a table, or one JSON document with
``--json``); progress and errors go to stderr. An error is one line,
``streampickle <command>: error: <what>``, and exit status 1; a usage error is argparse's, with
status 2.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from collections.abc import Sequence

from . import demo, inspect
from .common import CommandError, one_line

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with *argv* (``sys.argv[1:]`` by default); return the exit status:
    0 on success, 1 on an error (reported as one line on stderr), 2 on a usage error."""
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2): already printed
        return exc.code if isinstance(exc.code, int) else 2
    try:
        status: int = args.run(args)
    except (CommandError, OSError, pickle.UnpicklingError) as exc:
        print(f"streampickle {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return status


# ---------------------------------------------------------------------------------------------
# Arguments

_DESCRIPTION = """\
streampickle streams pickles through async byte streams (asyncio, uvloop, trio) frame by
frame, with backpressure and memory bounded by a frame.

commands:
  demo     stream a large object over loopback TCP with adump/aload, then the naive way, and
           compare wall time, peak memory, event-loop stalls and time to first byte
  inspect  show what is inside a pickle file (or pickles back to back): protocol, frames,
           large payloads, opcodes, and the Allowlist of globals it needs to load

Results go to stdout (--json for one JSON document), progress and errors to stderr. Errors
are one line and exit with status 1; usage errors exit with status 2."""


def parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="streampickle", description=_DESCRIPTION, formatter_class=raw
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo.add_parser(commands)
    inspect.add_parser(commands)
    return parser
