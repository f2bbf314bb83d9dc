"""Test and benchmark support: real DICOM peers (DCMTK, pynetdicom, Orthanc) on 127.0.0.1.

Not part of the installed package; tests import it as ``harness`` (``tests/`` is on pytest's
``pythonpath``), benchmark scripts put ``tests/`` on ``sys.path`` themselves.

* :mod:`harness.peers` starts external programs with :mod:`subprocess`: DCMTK, and the
  pynetdicom peers ``tests/harness/pynetdicom_scp.py`` and ``tests/harness/pynetdicom_scu.py``,
  run as scripts by path (pynetdicom is needed only by those two, and only in the child).
* :mod:`harness.orthanc` runs Debian's Orthanc with its own configuration and talks to it over
  its REST API.
* :mod:`harness.requirements` decides what a test that needs a missing peer does: skip, or
  fail under ``ASYNCDICOM_REQUIRE_PEERS=1``.
"""

from __future__ import annotations
