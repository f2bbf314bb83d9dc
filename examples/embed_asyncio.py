"""asyncdicom inside an existing asyncio program: its own tasks, queues and loop, and a DICOM
Storage SCP among them.

    python examples/embed_asyncio.py PORT FOLDER

The program already had a work queue and a worker (``report``, which here prints one line per
job) and a heartbeat; the SCP is one more task. It receives C-STOREs through an inbox spooling
to ``FOLDER/spool`` (each instance durably saved before Success is answered), keeps each file
in ``FOLDER/done`` and puts a job on the program's own ``asyncio.Queue`` for each. Prints
"listening on 127.0.0.1:PORT" once it accepts associations and "received <SOP Instance UID>
from <calling AE> (<modality>)" per instance; Ctrl-C stops it (exit status 0). Nothing here is
specific to asyncdicom but the two lines that serve and read the inbox: the rest is plain
asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

from asyncdicom import AE


async def heartbeat() -> None:
    """Something the program did before DICOM came along."""
    while True:
        await asyncio.sleep(3600)


async def report(jobs: asyncio.Queue[tuple[str, str, str]]) -> None:
    """The program's worker: takes jobs from its queue."""
    while True:
        uid, calling_ae, modality = await jobs.get()
        print(f"received {uid} from {calling_ae} ({modality})", flush=True)
        jobs.task_done()


async def dicom_in(port: int, folder: Path, jobs: asyncio.Queue[tuple[str, str, str]]) -> None:
    """The SCP: every instance received becomes a job on the program's queue."""
    ae = AE("EMBEDDED", accept_any_storage=True)
    async with ae.server("127.0.0.1", port) as server, ae.inbox(folder / "spool") as inbox:
        print(f"listening on 127.0.0.1:{server.port}", flush=True)
        async for instance in inbox:
            ds = await instance.dataset(stop_before_pixels=True)
            await instance.move_to(folder / "done")  # ours now: keep the file
            await jobs.put((instance.sop_instance_uid, instance.calling_ae_title, ds.Modality))


async def main(port: int, folder: Path) -> None:
    jobs: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue(maxsize=100)
    tasks = [
        asyncio.create_task(heartbeat()),
        asyncio.create_task(report(jobs)),
        asyncio.create_task(dicom_in(port, folder, jobs)),
    ]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} PORT FOLDER")
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: a normal way to stop
        asyncio.run(main(int(sys.argv[1]), Path(sys.argv[2])))
