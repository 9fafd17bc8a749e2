"""The public API, pinned: ``__all__`` and the signature of every public callable and method.

A refactor must leave this file's snapshot unchanged; a deliberate API change updates it with
``python tests/test_api.py --update`` and says so in its commit.
"""

from __future__ import annotations

import inspect
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import streampickle

SNAPSHOT = Path(__file__).parent / "snapshots" / "api.txt"


def _signature(obj: Any) -> str:
    """Parameter names, kinds and defaults; annotations are left to mypy (they spell the
    private modules' names, which a refactor may change)."""
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(?)"
    parameters = [p.replace(annotation=p.empty) for p in signature.parameters.values()]
    return str(signature.replace(parameters=parameters, return_annotation=signature.empty))


def _is_ours(obj: Any) -> bool:
    return str(getattr(obj, "__module__", "")).startswith("streampickle")


def describe() -> list[str]:
    """One line per public name, and one per public method of the classes defined here.

    Names re-exported from ``pickle`` are listed by name only: their signatures are the
    standard library's, which vary between Python versions.
    """
    lines = []
    for name in sorted(streampickle.__all__):
        obj = getattr(streampickle, name)
        if not _is_ours(obj):
            origin = "pickle" if isinstance(obj, type) else type(obj).__name__
            lines.append(f"{name}: from {origin}")
            continue
        if isinstance(obj, type):
            bases = ", ".join(base.__qualname__ for base in obj.__bases__)
            lines.append(f"class {name}({bases}){_signature(obj)}")
            for attr in sorted(vars(obj)):
                if attr.startswith("_"):
                    continue
                member = inspect.getattr_static(obj, attr)
                if isinstance(member, (classmethod, staticmethod)):
                    kind = type(member).__name__
                    lines.append(f"    {attr}{_signature(getattr(obj, attr))}  [{kind}]")
                elif callable(member):
                    lines.append(f"    {attr}{_signature(member)}")
                elif isinstance(member, property):
                    lines.append(f"    {attr}  [property]")
        elif callable(obj):
            lines.append(f"{name}{_signature(obj)}")
        else:
            lines.append(f"{name}: {type(obj).__name__}")
    return lines


def test_public_api_matches_the_snapshot() -> None:
    assert "\n".join(describe()) + "\n" == SNAPSHOT.read_text()


def test_all_names_exist_and_are_unique() -> None:
    assert len(set(streampickle.__all__)) == len(streampickle.__all__)
    for name in streampickle.__all__:
        assert hasattr(streampickle, name), name


def test_the_package_introduces_itself() -> None:
    assert streampickle.__version__ == metadata.version("streampickle")
    intro = (streampickle.__doc__ or "").split("Sync API")[0]  # the async API comes first
    for name in ("adump", "aiter_dumps", "aload", "aiter_load", "PickleStream", "allow="):
        assert name in intro, name


if __name__ == "__main__":
    if sys.argv[1:] == ["--update"]:
        SNAPSHOT.write_text("\n".join(describe()) + "\n")
