"""No test skips silently: a missing peer skips with a counted reason, or fails in CI.

Tests that need an external peer declare it with ``@pytest.mark.requires_peer(...)``
(:mod:`harness.requirements`). These tests check that mechanism end to end on a real test
module (the pynetdicom codec cross-check, with pynetdicom made unimportable), and that no test
module bypasses it with a skip of its own.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness.requirements import REQUIRE_PEERS_ENV, REQUIREMENTS

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
#: the one place allowed to skip: it turns a missing peer into a skip or a failure
SKIP_OWNER = TESTS / "harness" / "requirements.py"
CODEC_INTEROP = TESTS / "protocol" / "test_codec_interop.py"


def _skip_calls(path: Path) -> list[str]:
    """``pytest.importorskip(...)``, ``pytest.skip(...)`` and ``skip``/``skipif`` markers in a
    file, as "line: code"."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Attribute) and node.attr in ("importorskip", "skip", "skipif"):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_only_the_requirements_module_skips() -> None:
    offenders = {}
    for path in sorted(TESTS.rglob("*.py")):
        if path == SKIP_OWNER or "benchmarks" in path.parts:
            continue
        if calls := _skip_calls(path):
            offenders[str(path.relative_to(ROOT))] = calls
    assert offenders == {}, (
        "skips outside harness/requirements.py (declare the peer with "
        f"@pytest.mark.requires_peer(...) instead): {offenders}"
    )


def test_optional_imports_come_with_requires_peer() -> None:
    """A module guarding an import of an optional peer package declares that peer."""
    optional = {"pynetdicom", "uvloop"}
    missing = []
    for path in sorted(TESTS.rglob("test_*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        guarded = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id == "ImportError" for h in node.handlers
            ):
                for inner in ast.walk(ast.Module(body=node.body, type_ignores=[])):
                    if isinstance(inner, ast.Import):
                        guarded.update(a.name.split(".")[0] for a in inner.names)
                    elif isinstance(inner, ast.ImportFrom) and inner.module:
                        guarded.add(inner.module.split(".")[0])
        for name in sorted(guarded & optional):
            if f'requires_peer("{name}")' not in path.read_text():
                missing.append(f"{path.relative_to(ROOT)}: {name}")
    assert missing == []


def _run_codec_interop_without_pynetdicom(
    tmp_path: Path, *, require: bool, workers: str
) -> subprocess.CompletedProcess[str]:
    """pytest on test_codec_interop.py in a child where ``import pynetdicom`` fails, in
    ``workers`` pytest-xdist workers ("0": in the child itself). Under xdist the summary is
    written by the controller from the workers' reports, which crossed a process boundary."""
    blocker = tmp_path / "blocker" / "pynetdicom"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text('raise ImportError("pynetdicom blocked by the test")\n')
    env = {k: v for k, v in os.environ.items() if k != REQUIRE_PEERS_ENV}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(blocker.parent), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    if require:
        env[REQUIRE_PEERS_ENV] = "1"
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-n", workers]
    return subprocess.run(
        [*command, str(CODEC_INTEROP)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _count(output: str, *words: str) -> int:
    """The sum of the numbers before ``words`` in pytest's final line ("8 skipped in 0.2s",
    "2 failed, 6 errors in 0.3s"); 0 for a word that is absent."""
    final = [line for line in output.splitlines() if " in " in line and line[:1].isdigit()]
    assert final, output
    total = 0
    for part in final[-1].split(" in ")[0].split(","):
        number, word = part.split()
        if word in words:
            total += int(number)
    return total


PROBLEM = REQUIREMENTS["pynetdicom"].problem

#: the summary line must be right in one process and under pytest-xdist (the default)
WORKERS = pytest.mark.parametrize("workers", ["0", "2"], ids=["one-process", "xdist"])


@WORKERS
def test_missing_pynetdicom_skips_codec_cross_check_with_a_summary(
    tmp_path: Path, workers: str
) -> None:
    proc = _run_codec_interop_without_pynetdicom(tmp_path, require=False, workers=workers)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    skipped = _count(output, "skipped")
    assert skipped > 0, output
    assert _count(output, "passed", "failed", "error", "errors") == 0, output
    assert f"interop: {skipped} tests skipped: {PROBLEM}" in output, output


@WORKERS
def test_missing_pynetdicom_fails_codec_cross_check_when_peers_are_required(
    tmp_path: Path, workers: str
) -> None:
    proc = _run_codec_interop_without_pynetdicom(tmp_path, require=True, workers=workers)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    # pytest counts a failure before the test body (the requirement check) as an error
    failed = _count(output, "failed", "error", "errors")
    assert failed > 0, output
    assert _count(output, "skipped", "passed") == 0, output
    assert f"interop: {failed} tests failed ({REQUIRE_PEERS_ENV}=1): {PROBLEM}" in output, output
