"""pydicom's sample files, from the copy its wheel installs: never downloaded.

pydicom keeps some of its test files outside its wheel and fetches them on demand
(``pydicom.data.get_testdata_file(s)``); on a machine without internet each such fetch retries
with back-off for minutes. Tests take samples from here instead: ``sample(name)`` names a file
that must exist (a missing one fails the test loudly), ``all_samples()`` lists every ``.dcm`` the
wheel ships. ``tests/conftest.py`` makes any download attempt an error.
"""

from __future__ import annotations

from pathlib import Path

import pydicom.data

SAMPLES = Path(pydicom.data.__file__).parent / "test_files"


def sample(name: str) -> Path:
    """The path of one of pydicom's bundled sample files; AssertionError if it is not there."""
    path = SAMPLES / name
    assert path.is_file(), f"pydicom's wheel has no sample {name!r} (looked in {SAMPLES})"
    return path


def all_samples(pattern: str = "*.dcm") -> list[Path]:
    """Every bundled sample matching ``pattern`` (recursively), sorted; never empty."""
    found = sorted(SAMPLES.rglob(pattern))
    assert found, f"no {pattern} under {SAMPLES}: is pydicom installed whole?"
    return found
