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


# ---------------------------------------------------------------------------------------------
# Peers a test needs (DCMTK, Orthanc, pynetdicom, uvloop): see tests/harness/requirements.py
# ---------------------------------------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before any fixture runs: skip (or, under ASYNCDICOM_REQUIRE_PEERS=1, fail) a test whose
    ``requires_peer`` marker names something this machine lacks."""
    from harness.requirements import MARKER, require

    marker = item.get_closest_marker(MARKER)
    if marker is not None:
        require(*marker.args)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line at the end of the run: how many tests missing peers skipped, what to install."""
    from harness.requirements import summary_lines

    for line in summary_lines(terminalreporter.stats):
        terminalreporter.write_line(line, yellow=True, bold=True)
