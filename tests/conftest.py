"""Shared fixtures: every test that does I/O runs on both asyncio and trio."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pydicom.data.data_manager
import pydicom.data.download
import pytest

# the index back ends (SQLite, PostgreSQL) as fixtures: make_index, archive_db, ...
from harness.index_backends import (  # noqa: F401
    archive_db,
    index_backend,
    make_index,
    postgres_cluster,
    postgres_url,
)
from hypothesis import HealthCheck, settings

# ---------------------------------------------------------------------------------------------
# Child processes keep their bytecode
# ---------------------------------------------------------------------------------------------
#
# Hundreds of tests start `python -m asyncdicom ...` (and Python peers). Where
# PYTHONDONTWRITEBYTECODE is set, every one of them compiled asyncdicom's modules anew: measured
# on tests/test_cli_users.py, a quarter of the CPU time (101 s -> 77 s). The children (and
# pytest-xdist's workers) write their bytecode to a cache outside the source tree instead
# (PYTHONPYCACHEPREFIX), which keeps that setting's point: no __pycache__ in the checkout.
# Python writes each file atomically, so concurrent children share the cache safely. Set before
# any test module copies os.environ for its subprocesses.
if os.environ.get("PYTHONDONTWRITEBYTECODE") and not os.environ.get("PYTHONPYCACHEPREFIX"):
    del os.environ["PYTHONDONTWRITEBYTECODE"]
    os.environ["PYTHONPYCACHEPREFIX"] = os.path.join(
        tempfile.gettempdir(), "asyncdicom-tests-pycache"
    )


# ---------------------------------------------------------------------------------------------
# Apps forked from a pre-imported interpreter (tests/harness/appserver.py)
# ---------------------------------------------------------------------------------------------
#
# Every process that runs tests starts one app server (a pytest run inside a test uses its
# parent's); ``CLI`` (tests/harness/launch.py) then runs
# ``python -m asyncdicom ARGS`` through tests/harness/appshim.py, which the server answers with
# a forked child: the same app, signals and exit status, without 0.3-0.8 s of imports each.
# ASYNCDICOM_TEST_FRESH_APPS=1 runs every app in a fresh interpreter instead.
APPSERVER_ENV = "ASYNCDICOM_TEST_APPSERVER"
_appserver: subprocess.Popen[bytes] | None = None
_appserver_folder = ""


def _start_appserver() -> None:
    global _appserver, _appserver_folder
    if os.environ.get("ASYNCDICOM_TEST_FRESH_APPS") or _appserver is not None:
        return
    if os.environ.get(APPSERVER_ENV):  # a pytest run inside a test: its parent's server serves
        return
    folder = _appserver_folder = tempfile.mkdtemp(prefix="asyncdicom-apps-")
    path = os.path.join(folder, "server.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(256)
    # the environment the tests give their apps (tests/test_cli.py's ENV), so that the
    # interpreter's start-up settings agree with theirs
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop(APPSERVER_ENV, None)
    server = Path(__file__).parent / "harness" / "appserver.py"
    _appserver = subprocess.Popen(
        [sys.executable, str(server), str(listener.fileno())],
        stdin=subprocess.PIPE,  # the server ends when this process does
        stdout=subprocess.DEVNULL,
        pass_fds=[listener.fileno()],
        env=env,
    )
    listener.close()
    os.environ[APPSERVER_ENV] = path


def pytest_configure(config: pytest.Config) -> None:
    runs_tests = hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None)
    if runs_tests and not config.option.collectonly:
        _start_appserver()


def pytest_unconfigure(config: pytest.Config) -> None:
    global _appserver
    if _appserver is not None:
        assert _appserver.stdin is not None
        _appserver.stdin.close()
        try:
            _appserver.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _appserver.kill()
        _appserver = None
        shutil.rmtree(_appserver_folder, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Three pytest-xdist workers per two cores (`-n auto` in pyproject.toml's addopts)
# ---------------------------------------------------------------------------------------------
#
# Most tests wait more than they compute: for an app subprocess to start, for a peer (DCMTK,
# Orthanc, a JVM), for a timeout the test is about. With one worker per core a core idles
# through each wait. Measured on the 2-core machine, idle, whole suite, same CPU time: 4 min 45 s
# with 2 workers, 4 min 9 s with 3, 4 min 0-10 s with 4; with 4, peers with timing races of
# their own (pynetdicom's threads) failed now and then, so 3.
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        cores = os.cpu_count() or 1
    return max(2, cores + cores // 2)


# ---------------------------------------------------------------------------------------------
# Hypothesis settings profiles, chosen with HYPOTHESIS_PROFILE (default "ci")
# ---------------------------------------------------------------------------------------------
#
# "ci": derandomized (the same examples on every run, so a red CI means a regression, not a
# lucky draw), no example database, a fixed budget of examples; no per-example deadline, since
# timing on shared machines is noise. "thorough": new random examples on every run, five times
# the budget; .ci/run runs the property tests once with it (about two minutes), and a failure
# prints the @reproduce_failure blob to replay it. Both start from Hypothesis' own defaults,
# never from a profile Hypothesis loads by itself (it loads a derandomized one when it detects
# CI). A test's own @settings(max_examples=...) keeps its budget under both profiles.

HYPOTHESIS_PROFILE_ENV = "HYPOTHESIS_PROFILE"
_hypothesis_defaults = settings.get_profile("default")
settings.register_profile(
    "ci",
    parent=_hypothesis_defaults,
    derandomize=True,
    database=None,
    max_examples=100,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough",
    parent=_hypothesis_defaults,
    derandomize=False,
    max_examples=500,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get(HYPOTHESIS_PROFILE_ENV) or "ci")


# ---------------------------------------------------------------------------------------------
# No test downloads anything
# ---------------------------------------------------------------------------------------------
#
# pydicom fetches the sample files its wheel lacks on demand, retrying with back-off: on a
# machine without internet one get_testdata_files() call at collection slept for half an hour.
# Tests use tests/samples.py (the wheel's own files); this makes a download attempt fail at
# once, naming the file, instead of stalling the run. Installed before any test module is
# imported, so collection-time calls are covered too.


def _refuse_download(filename: str, *args: object, **kwargs: object) -> NoReturn:
    # pytest.fail raises a BaseException: pydicom's `except Exception` around its download
    # (which turns a failure into a warning and a missing file) cannot swallow it.
    pytest.fail(
        f"a test asked pydicom to download {filename!r}: tests never touch the network; "
        "use tests/samples.py (the files pydicom's wheel ships)"
    )


pydicom.data.download.data_path_with_download = _refuse_download  # type: ignore[assignment]
pydicom.data.data_manager.data_path_with_download = _refuse_download  # type: ignore[assignment]


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
# Peers a test needs (DCMTK, Orthanc, odil, PixelMed, ...): see tests/harness/requirements.py
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
