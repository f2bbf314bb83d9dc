"""A DICOM router: receive C-STORE into a durable queue on disk and forward each instance to
destinations chosen by rules (``asyncdicom router``).

* :mod:`asyncdicom.router.rules`: destinations (``AET@HOST:PORT``) and the rules file;
* :mod:`asyncdicom.router.queue`: the queue folder, safe against ``kill -9`` by construction;
* :mod:`asyncdicom.router.core`: :class:`~asyncdicom.router.core.Router`, the AE that
  receives and the forwarders.
"""

from __future__ import annotations
