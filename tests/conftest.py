"""Shared fixtures: every test that does I/O runs on both asyncio and trio."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(autouse=True)
def _no_internal_errors() -> Iterator[None]:
    """A server survives a connection that hits a bug in asyncdicom (it logs it and counts it in
    AE.internal_errors); such a bug must still fail the test that provoked it."""
    from asyncdicom.ae import AE

    before = AE.total_internal_errors
    yield
    assert AE.total_internal_errors == before, "a connection ended on an internal error"
