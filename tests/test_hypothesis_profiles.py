"""The Hypothesis settings profiles of tests/conftest.py are what CI runs under, on purpose.

``HYPOTHESIS_PROFILE`` chooses: ``ci`` (the default, also outside CI) replays the same examples
on every run; ``thorough`` draws new ones, more of them. Neither may depend on whether
Hypothesis detects a CI machine by itself (it then loads a derandomized profile of its own).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
ACTIVE = os.environ.get("HYPOTHESIS_PROFILE") or "ci"


def _draws_of_two_runs() -> tuple[list[int], list[int]]:
    """Run one property test twice (a test with its own @settings budget, like many in the
    suite) and return the examples each run drew."""
    runs: list[list[int]] = []

    @settings(max_examples=25)
    @given(st.integers(min_value=0, max_value=2**64))
    def prop(value: int) -> None:
        runs[-1].append(value)

    for _ in range(2):
        runs.append([])
        prop()
    return runs[0], runs[1]


def test_active_profile_behaves_as_named() -> None:
    current = settings.default
    first, second = _draws_of_two_runs()
    assert current.deadline is None
    if ACTIVE == "ci":
        assert current.derandomize is True
        assert current.database is None
        assert current.max_examples == 100
        assert len(first) == 25
        assert first == second, "the ci profile drew different examples on a second run"
    else:
        assert ACTIVE == "thorough"
        assert current.derandomize is False
        assert current.max_examples > 100
        assert first != second, "the thorough profile replayed the same examples"


def _run_this_file(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("CI", "HYPOTHESIS_PROFILE")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-n0",  # one test: no pytest-xdist workers to start
            f"{__file__}::test_active_profile_behaves_as_named",
        ],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "env",
    [
        {},  # a developer's machine: "ci", the same examples as CI
        {"CI": "true"},  # Hypothesis' own CI detection must not decide
        {"CI": "true", "HYPOTHESIS_PROFILE": "thorough"},
        {"HYPOTHESIS_PROFILE": "thorough"},
    ],
    ids=["plain", "ci-machine", "ci-machine-thorough", "thorough"],
)
def test_profile_selected_by_environment(env: dict[str, str]) -> None:
    """The child checks the profile its environment names (test above)."""
    proc = _run_this_file(**env)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "1 passed" in output, output


def test_unknown_profile_is_an_error() -> None:
    proc = _run_this_file(HYPOTHESIS_PROFILE="no-such-profile")
    assert proc.returncode != 0
    assert "no-such-profile" in proc.stdout + proc.stderr
