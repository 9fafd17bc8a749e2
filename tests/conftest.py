from __future__ import annotations

import ssl
from collections.abc import Iterator

import pytest
import trustme

from leaks import GreenletLedger


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {}), id="asyncio"),
        pytest.param(("trio", {}), id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    """Every ``@pytest.mark.anyio`` test runs on asyncio and on trio."""
    backend: tuple[str, dict[str, object]] = request.param
    return backend


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


@pytest.fixture
def no_leaked_greenlets() -> Iterator[GreenletLedger]:
    """Fails the test if it leaves more greenlets running than there were when it began; the
    ledger it yields gives the baseline and the live count for checks inside the test."""
    ledger = GreenletLedger()
    yield ledger
    ledger.check()
