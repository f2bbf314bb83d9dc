"""Test and benchmark support: real DICOM peers (DCMTK, pynetdicom, Orthanc) on 127.0.0.1.

Nothing here is used by the library itself. :mod:`asyncdicom.testing.peers` starts external
programs with :mod:`subprocess`; ``python -m asyncdicom.testing.pynetdicom_scp`` and
``python -m asyncdicom.testing.pynetdicom_scu`` are the pynetdicom peers it runs (pynetdicom is
needed only by those two, and only in the child process).  :mod:`asyncdicom.testing.orthanc`
runs Debian's Orthanc with its own configuration and talks to it over its REST API.
"""

from __future__ import annotations

from asyncdicom.testing.orthanc import (
    OrthancModality,
    OrthancNotFoundError,
    OrthancPeer,
    OrthancRestError,
    OrthancStoreError,
    find_orthanc,
)
from asyncdicom.testing.peers import (
    DCMTK_MAX_PDU_RANGE,
    DCMTK_PROGRAMS,
    LOCALHOST,
    STORESCU_PROPOSE_FLAGS,
    DcmtkNotFoundError,
    DcmtkStoreSCP,
    PeerStartError,
    ProposeOption,
    PynetdicomSCP,
    dcmtk_echoscu,
    dcmtk_env,
    dcmtk_storescu,
    echoscu_command,
    free_port,
    instance_differences,
    missing_dcmtk_programs,
    pynetdicom_scu_command,
    require_dcmtk,
    storescu_command,
    wait_for_port,
)

__all__ = [
    "DCMTK_MAX_PDU_RANGE",
    "DCMTK_PROGRAMS",
    "LOCALHOST",
    "STORESCU_PROPOSE_FLAGS",
    "DcmtkNotFoundError",
    "DcmtkStoreSCP",
    "OrthancModality",
    "OrthancNotFoundError",
    "OrthancPeer",
    "OrthancRestError",
    "OrthancStoreError",
    "PeerStartError",
    "ProposeOption",
    "PynetdicomSCP",
    "dcmtk_echoscu",
    "dcmtk_env",
    "dcmtk_storescu",
    "echoscu_command",
    "find_orthanc",
    "free_port",
    "instance_differences",
    "missing_dcmtk_programs",
    "pynetdicom_scu_command",
    "require_dcmtk",
    "storescu_command",
    "wait_for_port",
]
