"""What the commands share: the one-line error and the argument types."""

from __future__ import annotations

import argparse

__all__ = ["CommandError", "one_line", "positive"]


class CommandError(Exception):
    """A failure to report as one line on stderr, with exit status 1."""


def one_line(exc: BaseException) -> str:
    """*exc* as one line of printable text (its message may quote a hostile pickle)."""
    return printable(" ".join(str(exc).split())) or type(exc).__name__


def printable(text: str) -> str:
    """*text* with every character that is not printable escaped as in ``repr`` (a name read
    from a pickle may hold terminal escape sequences)."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value
