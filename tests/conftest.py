from __future__ import annotations

import gc
import importlib.util
import ssl
from collections.abc import Generator, Iterable, Iterator
from typing import Any

import pytest
import trustme

from leaks import GreenletLedger, freeze_the_collected

# ---------------------------------------------------------------------------------------------
# Backends: the one way to say where an async test runs (the mark is registered in
# pyproject.toml).
#
# Every ``@pytest.mark.anyio`` test gets an ``anyio_backend`` parameter per backend it runs on.
# ``@pytest.mark.backends("trio")`` (on a test, class or module, or on one ``pytest.param``
# of a parametrized test, e.g. a stream kind that exists on trio only) narrows that: the other
# backends' items are not generated at all, rather than generated and skipped. Several marks
# intersect. Unmarked tests run on `DEFAULT_BACKENDS`.

#: The ``anyio_backend`` values, by the names the ``backends`` mark takes.
BACKENDS: dict[str, tuple[str, dict[str, Any]]] = {
    "asyncio": ("asyncio", {}),
    "uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}
#: Where an unmarked async test runs: asyncio, asyncio on uvloop and trio, as in anyio's own
#: suite (measured on 2 cores: running every async test on uvloop too costs about 16% of the
#: suite's time).
DEFAULT_BACKENDS = ("asyncio", "uvloop", "trio")
#: uvloop has no Windows build: its items are not generated where it is not installed.
AVAILABLE = [name for name in BACKENDS if name != "uvloop" or importlib.util.find_spec("uvloop")]


def backend_name(anyio_backend: object) -> str:
    """The `BACKENDS` name of an ``anyio_backend`` value."""
    assert isinstance(anyio_backend, tuple), anyio_backend
    library, options = anyio_backend
    return "uvloop" if options.get("use_uvloop") else str(library)


def allowed_backends(marks: Iterable[pytest.Mark]) -> tuple[str, ...]:
    """The backends the ``backends`` marks allow (their intersection), or the default."""
    allowed: set[str] | None = None
    for mark in marks:
        unknown = set(mark.args) - set(BACKENDS)
        if unknown or not mark.args:
            raise pytest.UsageError(f"backends mark {mark.args}: names are among {list(BACKENDS)}")
        allowed = set(mark.args) if allowed is None else allowed & set(mark.args)
        if not allowed:
            raise pytest.UsageError(f"backends marks leave no backend (last: {mark.args})")
    return DEFAULT_BACKENDS if allowed is None else tuple(sorted(allowed))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``anyio_backend`` over every available backend; `pytest_pycollect_makeitem`
    then drops the items the ``backends`` marks (or the default) exclude, because a mark on a
    ``pytest.param`` is only known once the items exist."""
    if "anyio_backend" not in metafunc.fixturenames:
        return
    for mark in metafunc.definition.iter_markers("parametrize"):
        if "anyio_backend" in str(mark.args[0]):
            raise pytest.UsageError(
                f"{metafunc.definition.nodeid}: mark backends with @pytest.mark.backends(...), "
                "not by parametrizing anyio_backend"
            )
    metafunc.parametrize(
        "anyio_backend",
        [pytest.param(BACKENDS[name], id=name) for name in AVAILABLE],
        indirect=True,
    )


@pytest.hookimpl(wrapper=True)
def pytest_pycollect_makeitem(
    collector: pytest.Module | pytest.Class, name: str, obj: object
) -> Generator[None, object, object]:
    """The items of a test function, less those on a backend their marks exclude: filtered
    before they are reported, so they are neither collected nor skipped nor deselected."""
    made = yield
    if not isinstance(made, list):
        return made
    return [item for item in made if not isinstance(item, pytest.Function) or applies(item)]


def applies(item: pytest.Function) -> bool:
    """Whether *item* runs on its ``anyio_backend`` (True for a test without one)."""
    marks = list(item.iter_markers("backends"))
    callspec = getattr(item, "callspec", None)
    if callspec is None or "anyio_backend" not in callspec.params:
        if marks:
            raise pytest.UsageError(f"{item.nodeid}: a backends mark on a sync test")
        return True
    return backend_name(callspec.params["anyio_backend"]) in allowed_backends(marks)


def pytest_report_header(config: pytest.Config) -> str:
    return (
        f"backends: {', '.join(DEFAULT_BACKENDS)} by default; "
        f"available for backends marks: {', '.join(AVAILABLE)}"
    )


@pytest.fixture
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """The backend `pytest_generate_tests` gave this item (overrides anyio's fixture, which
    would parametrize over asyncio and trio by itself)."""
    backend: tuple[str, dict[str, Any]] = request.param
    return backend


# ---------------------------------------------------------------------------------------------
# Shared fixtures.


@pytest.fixture(scope="session")
def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) SSL contexts: a certificate for ``localhost`` from a throwaway CA
    (trustme) that the client context trusts."""
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


def pytest_collection_finish(session: pytest.Session) -> None:
    freeze_the_collected()  # see leaks.py: cheap leak checks


def pytest_sessionfinish(session: pytest.Session) -> None:
    gc.unfreeze()  # before the terminal summary, where plugins may import (and scan) lazily


@pytest.fixture
def no_leaked_greenlets() -> Iterator[GreenletLedger]:
    """Fails the test if it leaves more greenlets running than there were when it began; the
    ledger it yields gives the baseline and the live count for checks inside the test."""
    ledger = GreenletLedger()
    yield ledger
    ledger.check()


@pytest.fixture
def checkpoint_every_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    """The drivers checkpoint at every decision point (each write, each frame loaded), as on
    trio, instead of only when they have run `streampickle._turns.RUN_FOR` without the event
    loop having had a turn: for the tests of the checkpoints themselves."""
    from streampickle import _turns

    monkeypatch.setattr(_turns, "RUN_FOR", 0.0)
