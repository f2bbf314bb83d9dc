"""Make tests/protocol/strategies.py importable and set Hypothesis profiles.

Profiles (select with the HYPOTHESIS_PROFILE environment variable): ``asyncdicom`` (the
default here, 100 examples) and ``asyncdicom-thorough`` (1000 examples).  Both disable the
per-example deadline: timing on shared CI machines is noisy and these properties are about
correctness, not speed.  Tests that need a different budget use an explicit ``@settings``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

settings.register_profile(
    "asyncdicom", deadline=None, max_examples=100, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "asyncdicom-thorough",
    deadline=None,
    max_examples=1000,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "asyncdicom"))
