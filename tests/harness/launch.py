"""Commands that start the tests' Python processes: through the app server when there is one.

``CLI`` is ``python -m asyncdicom`` and :func:`python_script` is ``python SCRIPT ARGS``, both
forked by tests/harness/appserver.py (same program, output, signals and exit status, without
the imports of a fresh interpreter); ``REAL_CLI`` is always a fresh interpreter, for tests that
SIGKILL an app and look at what it left or need its pid.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["CLI", "REAL_CLI", "SERVED", "python_script"]

SHIM = Path(__file__).resolve().with_name("appshim.py")
#: whether this process has an app server (tests/conftest.py starts one)
SERVED = bool(os.environ.get("ASYNCDICOM_TEST_APPSERVER"))
REAL_CLI = [sys.executable, "-m", "asyncdicom"]
CLI = [sys.executable, "-S", str(SHIM)] if SERVED else REAL_CLI


def python_script(script: str | os.PathLike[str], *args: str) -> list[str]:
    """``python SCRIPT ARGS`` (through the app server when there is one)."""
    if SERVED:
        return [sys.executable, "-S", str(SHIM), "--script", os.fspath(script), *args]
    return [sys.executable, os.fspath(script), *args]
