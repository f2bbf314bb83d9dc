"""Make tests/protocol/strategies.py importable.

Hypothesis settings profiles (HYPOTHESIS_PROFILE: "ci", the default, or "thorough") are set for
the whole suite in tests/conftest.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
