"""A small application to be tested: a Storage SCP that sorts what it receives by modality.

An instance without a Patient ID is refused (0xA900, "data set does not match SOP class":
this site requires one); the others end up as ``FOLDER/<Modality>/<SOP Instance UID>.dcm``.
Its tests, in ``test_triage.py``, run with pytest-asyncio and :mod:`asyncdicom.testing`: no
socket, no port, the real protocol stack on both ends.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio.to_thread

from asyncdicom import AE, ServiceRequest

#: Status: Error, Data Set does not match SOP Class (PS3.4 Table B.2-1)
REFUSED = 0xA900


def build_scp(folder: Path) -> AE:
    """The application's AE: accepts any storage class, sorts by modality."""
    scp = AE("TRIAGE", accept_any_storage=True)
    incoming = folder / ".incoming"
    incoming.mkdir(parents=True, exist_ok=True)

    @scp.on_store
    async def on_store(request: ServiceRequest) -> int:
        stored = await request.save_to(incoming)  # complete, or not there at all
        header = await anyio.to_thread.run_sync(stored.header)  # pixel data not read
        if not header.get("PatientID"):
            stored.unlink()
            return REFUSED
        modality = str(header.get("Modality") or "OT")
        target = folder / (modality if modality.isalnum() else "OT")
        target.mkdir(exist_ok=True)
        os.replace(stored, target / stored.name)
        return 0x0000

    return scp
