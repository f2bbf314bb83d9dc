"""What the interop tests need from the machine, and what happens when it is missing.

A test declares the external peers it needs with the ``requires_peer`` marker (names from
:data:`REQUIREMENTS`; the marker closest to the test wins, so a test can narrow or clear its
module's list with its own marker). ``tests/conftest.py`` checks the marker before each test:

* by default a missing peer SKIPS the test, with a reason naming what to install, and the run
  ends with one summary line (:func:`summary_lines`), e.g.
  ``interop: 57 tests skipped: DCMTK not found (apt-get install dcmtk), Orthanc not found
  (apt-get install orthanc)``;
* with ``ASYNCDICOM_REQUIRE_PEERS=1`` (CI sets it) a missing peer FAILS the test with the same
  message, so a broken CI image cannot hide behind skips.

Fixtures that start peers call :func:`require` too, for tests that use them without the marker.
Availability is checked once per process.
"""

from __future__ import annotations

import functools
import importlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from .orthanc import ORTHANC_BINARY, ORTHANC_BINARY_ENV, OrthancNotFoundError, find_orthanc
from .peers import (
    DCMTK_BIN_ENV,
    DCMTK_PROGRAMS,
    ODIL_PYTHON_ENV,
    PIXELMED_JAR_ENV,
    missing_dcmtk_programs,
    odil_python,
    pixelmed_jar,
)

__all__ = [
    "MARKER",
    "REQUIREMENTS",
    "REQUIRE_PEERS_ENV",
    "Requirement",
    "missing",
    "peers_required",
    "require",
    "summary_lines",
]

#: Set to ``1`` to turn a missing peer into a test failure (CI does).
REQUIRE_PEERS_ENV = "ASYNCDICOM_REQUIRE_PEERS"

#: The marker naming the peers a test needs: ``@pytest.mark.requires_peer("dcmtk", ...)``.
MARKER = "requires_peer"


@dataclass(frozen=True, slots=True)
class Requirement:
    """An external program or optional package some tests need.

    ``problem`` is how it is reported when missing ("DCMTK not found (apt-get install dcmtk)");
    ``check`` returns None when it is available, else details for the test's message.
    """

    problem: str
    check: Callable[[], str | None]


def _check_dcmtk() -> str | None:
    absent = missing_dcmtk_programs(DCMTK_PROGRAMS)
    if not absent:
        return None
    names = ", ".join(absent)
    if where := os.environ.get(DCMTK_BIN_ENV):
        return f"no DCMTK {names} in {DCMTK_BIN_ENV}={where}"
    return f"no DCMTK {names} on PATH (or set {DCMTK_BIN_ENV} to DCMTK's bin folder)"


def _check_orthanc() -> str | None:
    try:
        find_orthanc()
    except OrthancNotFoundError:
        if where := os.environ.get(ORTHANC_BINARY_ENV):
            return f"no executable {ORTHANC_BINARY_ENV}={where}"
        return (
            f"no {ORTHANC_BINARY} and no Orthanc on PATH (or set {ORTHANC_BINARY_ENV} to "
            "the executable); its system service is not needed"
        )
    return None


def _check_odil() -> str | None:
    python = odil_python()
    if shutil.which(python) is None:
        return f"no interpreter {python} (set {ODIL_PYTHON_ENV} to one that can import odil)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    try:
        probe = subprocess.run(
            [python, "-c", "import odil"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{python} -c 'import odil' failed: {exc}"
    if probe.returncode != 0:
        lines = probe.stderr.strip().splitlines()
        return f"{python} cannot import odil: {lines[-1] if lines else probe.returncode}"
    return None


def _check_pixelmed() -> str | None:
    jar = pixelmed_jar()
    if not os.path.isfile(jar):
        return f"no {jar} (or set {PIXELMED_JAR_ENV} to PixelMed's jar)"
    java = shutil.which("java")
    if java is None:
        return "no java on PATH"
    # tests/harness/PixelmedGet.java runs as a source file: that needs a JDK's compiler module
    try:
        modules = subprocess.run(
            [java, "--list-modules"], capture_output=True, text=True, timeout=60, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"java --list-modules failed: {exc}"
    if "jdk.compiler@" not in modules:
        return f"{java} cannot run a Java source file (no jdk.compiler module: a JRE, not a JDK)"
    return None


def _check_module(name: str) -> Callable[[], str | None]:
    def check() -> str | None:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            return f"cannot import {name}: {exc}"
        return None

    return check


def _check_program(name: str) -> Callable[[], str | None]:
    def check() -> str | None:
        return None if shutil.which(name) else f"no {name} on PATH"

    return check


def _check_quickack() -> str | None:
    import socket

    if hasattr(socket, "TCP_QUICKACK"):
        return None
    return "this platform's socket module has no TCP_QUICKACK"


def _check_postgresql() -> str | None:
    from .postgres import missing_postgres

    return missing_postgres()


def _check_haproxy() -> str | None:
    from .haproxy import missing_haproxy

    return missing_haproxy()


REQUIREMENTS: Mapping[str, Requirement] = {
    "dcmtk": Requirement("DCMTK not found (apt-get install dcmtk)", _check_dcmtk),
    "orthanc": Requirement("Orthanc not found (apt-get install orthanc)", _check_orthanc),
    "pynetdicom": Requirement(
        "pynetdicom not installed (pip install pynetdicom)", _check_module("pynetdicom")
    ),
    "uvloop": Requirement("uvloop not installed (pip install uvloop)", _check_module("uvloop")),
    # pynetdicom's qrscp application keeps its index with SQLAlchemy
    "pynetdicom-qrscp": Requirement(
        "pynetdicom's qrscp cannot run (pip install pynetdicom sqlalchemy)",
        _check_module("pynetdicom.apps.qrscp.db"),
    ),
    "odil": Requirement("odil not found (apt-get install odil python3-odil)", _check_odil),
    "tcp-quickack": Requirement(
        "TCP_QUICKACK not available (immediate ACKs need Linux)", _check_quickack
    ),
    # dciodvfy, the validator of David Clunie's dicom3tools (media: DICOMDIR checks)
    "dicom3tools": Requirement(
        "dicom3tools not found (apt-get install dicom3tools)", _check_program("dciodvfy")
    ),
    "pixelmed": Requirement(
        "PixelMed not found (apt-get install pixelmed-apps default-jdk-headless)",
        _check_pixelmed,
    ),
    # a private cluster of Debian's server (tests/harness/postgres.py) and the psycopg driver
    "postgresql": Requirement(
        "PostgreSQL not found (apt-get install postgresql; pip install 'asyncdicom[postgresql]')",
        _check_postgresql,
    ),
    # a private HAProxy in the foreground (tests/harness/haproxy.py) in front of qrscp nodes
    "haproxy": Requirement("HAProxy not found (apt-get install haproxy)", _check_haproxy),
}


def peers_required() -> bool:
    """Whether a missing peer is a failure (``ASYNCDICOM_REQUIRE_PEERS=1``) or a skip."""
    return os.environ.get(REQUIRE_PEERS_ENV, "") == "1"


@functools.cache
def missing(name: str) -> str | None:
    """The full message for requirement ``name`` if it is missing, else None (cached)."""
    requirement = REQUIREMENTS[name]
    details = requirement.check()
    return None if details is None else f"{requirement.problem}: {details}"


def require(*names: str) -> None:
    """Skip the running test (or fail it, under ``ASYNCDICOM_REQUIRE_PEERS=1``) when one of
    the named requirements is missing."""
    unknown = [name for name in names if name not in REQUIREMENTS]
    if unknown:
        raise ValueError(f"unknown {MARKER} names {unknown}; known: {sorted(REQUIREMENTS)}")
    problems = [message for name in names if (message := missing(name)) is not None]
    if not problems:
        return
    message = "; ".join(problems)
    if peers_required():
        pytest.fail(f"{message} [{REQUIRE_PEERS_ENV}=1: missing peers fail]", pytrace=False)
    pytest.skip(message)


def _reason(report: Any) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])  # a skip: (path, line, "Skipped: reason")
    return str(getattr(report, "longreprtext", "") or "")


def _problems_in(reports: Iterable[Any]) -> tuple[int, list[str]]:
    """(number of tests, problems in order of appearance) among reports naming a problem."""
    nodeids: set[str] = set()
    problems: dict[str, None] = {}
    for report in reports:
        reason = _reason(report)
        found = [r.problem for r in REQUIREMENTS.values() if r.problem in reason]
        if found:
            nodeids.add(str(report.nodeid))
            problems.update(dict.fromkeys(found))
    return len(nodeids), list(problems)


def summary_lines(stats: Mapping[str, Sequence[Any]]) -> list[str]:
    """The end-of-run lines for pytest's terminal reporter ``stats``: how many tests a missing
    peer skipped (or failed), and what to install. Empty when nothing was missing."""
    lines = []
    count, problems = _problems_in(stats.get("skipped", ()))
    if count:
        lines.append(f"interop: {_tests(count)} skipped: {', '.join(problems)}")
    count, problems = _problems_in([*stats.get("failed", ()), *stats.get("error", ())])
    if count:
        lines.append(
            f"interop: {_tests(count)} failed ({REQUIRE_PEERS_ENV}=1): {', '.join(problems)}"
        )
    return lines


def _tests(count: int) -> str:
    return f"{count} test{'s' if count != 1 else ''}"
