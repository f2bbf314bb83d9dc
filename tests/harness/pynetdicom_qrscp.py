"""Run pynetdicom's own ``qrscp`` application, with one threading race of pynetdicom 2.x closed.

Usage: ``python tests/harness/pynetdicom_qrscp.py [qrscp options]`` (those of ``python -m
pynetdicom qrscp``).

The race and its remedy: :mod:`pynetdicom_race`.
"""

from __future__ import annotations

import sys

from pynetdicom.apps.qrscp import qrscp
from pynetdicom_race import close_reactor_race

if __name__ == "__main__":
    close_reactor_race()
    sys.exit(qrscp.main(sys.argv[1:]))
