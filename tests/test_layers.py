"""The import rules of the package, read from the source with ``ast``.

1. No import cycles (lazy imports inside functions count too).
2. Bottom-up layers: a module imports only modules of its own layer or lower ones.
3. The sans-IO layers (shared types, opcodes, limits, policy, engines) import no anyio,
   asyncio or trio, even through another module of the package.
4. Adapters know streams, not pickles: they import no pickler, unpickler, policy or engine.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "src" / "streampickle"

#: Bottom up; a module's layer is that of the longest prefix of its dotted name listed here.
LAYERS: list[set[str]] = [
    {"_exceptions", "_sansio", "_opcodes", "_collector"},
    {"_limits"},
    {"_policy", "_globals", "_inspect"},
    {"_cengine", "_pyengine"},
    {"_adapters"},
    {"_dump", "_load", "_ownership", "_turns"},
    {"_pickler", "_unpickler"},
    {"_async", "_auth"},
    {"_stream"},
    {"_cli", "__main__"},
    {"__init__"},
]
SANS_IO_LAYERS = 4  # the first four layers
ASYNC_LIBRARIES = {"anyio", "asyncio", "trio", "sniffio", "uvloop"}
NOT_FOR_ADAPTERS = {"_pickler", "_unpickler", "_policy", "_cengine", "_limits", "_globals"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def python_imports(path: Path) -> str:
    """The source of *path*, or for a Cython module (``.pyx``) its Python import lines (its
    ``cimport`` lines import C declarations, not modules of the package)."""
    text = path.read_text()
    if path.suffix != ".pyx":
        return text
    lines = text.splitlines()
    return "\n".join(line for line in lines if re.match(r"(from\s+\S+\s+)?import\s", line))


def imports_of(path: Path) -> tuple[set[str], set[str]]:
    """(modules of the package, top-level external modules) that *path* imports."""
    name = module_name(path)
    package = (
        name.split(".")
        if path.name == "__init__.py" and name != "__init__"
        else (name.split(".")[:-1])
    )
    internal: set[str] = set()
    external: set[str] = set()
    for node in ast.walk(ast.parse(python_imports(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")
                if top[0] == "streampickle":
                    internal.add(".".join(top[1:]) or "__init__")
                else:
                    external.add(top[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                top = (node.module or "").split(".")
                if top[0] == "streampickle":
                    base = top[1:]
                else:
                    external.add(top[0])
                    continue
            else:
                base = package[: len(package) - node.level + 1] + (
                    node.module.split(".") if node.module else []
                )
            if node.module is None or not base:  # from . import a, b: submodules
                internal.update(".".join([*base, alias.name]) for alias in node.names)
            else:
                internal.add(".".join(base))
    return {module for module in internal if module}, external


GRAPH = {
    module_name(path): imports_of(path)
    for path in [*PACKAGE.rglob("*.py"), *PACKAGE.rglob("*.pyx")]
    if "__pycache__" not in path.parts
}


def resolve(module: str) -> str:
    """*module*, or the nearest package of it that exists (``from .x import name``)."""
    while module not in GRAPH and "." in module:
        module = module.rsplit(".", 1)[0]
    return module


def layer(module: str) -> int:
    top = module.split(".")[0]
    for index, names in enumerate(LAYERS):
        if top in names:
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def internal_imports(module: str) -> set[str]:
    return {resolve(target) for target in GRAPH[module][0]} - {module}


def test_every_module_has_a_layer() -> None:
    for module in GRAPH:
        layer(module)


def test_no_import_cycles() -> None:
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = [*path[path.index(module) :], module]
            pytest.fail(f"import cycle: {' -> '.join(cycle)}")
        if module in done:
            return
        for target in sorted(internal_imports(module)):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(GRAPH):
        visit(module, [])


def test_imports_go_down_the_layers() -> None:
    wrong = [
        f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})"
        for module in GRAPH
        for target in internal_imports(module)
        if layer(target) > layer(module)
    ]
    assert not wrong


def reachable(module: str) -> set[str]:
    seen = {module}
    todo = [module]
    while todo:
        for target in internal_imports(todo.pop()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_sans_io_layers_import_no_async_library() -> None:
    for module in GRAPH:
        if layer(module) >= SANS_IO_LAYERS:
            continue
        for dependency in reachable(module):
            found = GRAPH[dependency][1] & ASYNC_LIBRARIES
            assert not found, f"{module} imports {found} (through {dependency})"


def test_adapters_know_streams_not_pickles() -> None:
    for module in GRAPH:
        if module.split(".")[0] != "_adapters":
            continue
        for dependency in reachable(module):
            assert dependency.split(".")[0] not in NOT_FOR_ADAPTERS, (module, dependency)


def test_the_checks_see_the_imports() -> None:
    """The parser finds what the rules rest on (so a rule cannot pass by reading nothing)."""
    assert "_adapters" in internal_imports("_load")
    assert "anyio" in GRAPH["_turns"][1]
    assert {"_policy.model", "_limits"} <= internal_imports("_policy.rules")
    assert "_cli.demo" in internal_imports("_cli")
    assert layer("_adapters._asyncio") == layer("_adapters")


def test_no_module_is_too_long() -> None:
    long = {
        module: lines
        for path in PACKAGE.rglob("*.py")
        if (lines := len(path.read_text().splitlines())) > 600
        for module in [module_name(path)]
    }
    assert not long
