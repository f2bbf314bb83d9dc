"""A DICOM gateway: instances are checked, stored and forwarded to the review workstation.

python examples/tutorial_gateway.py PORT FOLDER REVIEW_AET@HOST:PORT
"""

import contextlib
import sys
from pathlib import Path

import anyio

from asyncdicom import AE, presets


async def main(port: int, folder: Path, review: str) -> None:
    review_aet, address = review.split("@")
    host, review_port = address.rsplit(":", 1)
    gateway = AE("GATEWAY", accept_any_storage=True)
    contexts = presets.contexts_for(presets.COMMON_STORAGE)
    async with (
        gateway.server("127.0.0.1", port) as server,
        gateway.inbox(folder / "spool") as inbox,
        gateway.associate(host, int(review_port), called_aet=review_aet, contexts=contexts) as out,
    ):
        print(f"listening on 127.0.0.1:{server.port}", flush=True)
        async for instance in inbox:
            ds = await instance.dataset(stop_before_pixels=True)
            # checked: this site wants a Patient ID and a known modality
            if not ds.get("PatientID") or ds.get("Modality") not in ("CT", "MR", "US"):
                await instance.move_to(folder / "quarantine")
                print(f"quarantined {instance.sop_instance_uid}", flush=True)
                continue
            # stored: one folder per study
            stored = await instance.move_to(folder / "archive" / ds.StudyInstanceUID)
            # forwarded: on the association held open to the review workstation
            status = (await out.store(stored)).status
            print(f"forwarded {instance.sop_instance_uid}: 0x{status:04X}", flush=True)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C stops it
        anyio.run(main, int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])
