"""The apps of the ``asyncdicom`` command, by name (no imports: the command line is parsed
before any app's module is loaded)."""

from __future__ import annotations

__all__ = ["APPS"]

#: the apps, in the order ``--help`` lists them: name -> one line of help.  Each lives in the
#: module ``asyncdicom.cli.NAME`` (``add_parser(sub)`` and ``run(args)``), imported only when
#: its command runs (or when :func:`build_parser` is asked for every app).
APPS: dict[str, str] = {
    "echoscu": "send C-ECHO (verification)",
    "storescu": "send DICOM files with C-STORE",
    "storescp": "receive DICOM files with C-STORE",
    "findscu": "send C-FIND (query)",
    "getscu": "retrieve instances with C-GET",
    "movescu": "have instances sent to an AE with C-MOVE",
    "qrscp": "a small archive: C-STORE, C-FIND, C-GET, C-MOVE, storage commitment",
    "router": "receive with C-STORE into a durable queue and forward by rules",
    "stgcmtscu": "ask a peer to commit to storing instances (storage commitment)",
    "bench": "load-test a DICOM node (latency percentiles, rates)",
    "dicomdir": "write DIR/DICOMDIR for the DICOM files under DIR (media, STD-GEN-CD)",
    "users": "manage a users file (user identity for storescp/qrscp --users)",
    "demo": "SCP and SCU in one process: echo, store, commit, find, get and move samples",
}
