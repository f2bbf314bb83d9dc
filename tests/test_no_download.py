"""Tests never download: pydicom's on-demand sample fetch fails at once, and no test module
calls it (tests/samples.py gives the files pydicom's wheel ships)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pydicom.data.download import get_url_map
from samples import SAMPLES

TESTS = Path(__file__).parent


def test_a_download_fails_at_once_instead_of_retrying() -> None:
    online = sorted(set(get_url_map()) - {p.name for p in SAMPLES.rglob("*")})
    assert online, "pydicom lists no sample outside its wheel: nothing to check"
    start = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="tests never touch the network"):
        get_testdata_file(online[0])
    assert time.monotonic() - start < 5


def test_no_test_module_asks_pydicom_for_its_online_samples() -> None:
    call = re.compile(r"get_testdata_files?\(")
    offenders = [
        str(path.relative_to(TESTS))
        for path in TESTS.rglob("*.py")
        if path.name not in {Path(__file__).name, "samples.py", "conftest.py"}
        and call.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == [], f"use tests/samples.py instead in: {offenders}"
