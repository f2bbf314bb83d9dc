"""asyncdicom inside an existing trio program: its nursery, its memory channels, and a DICOM
Storage SCP among its tasks.

    python examples/embed_trio.py PORT FOLDER

The same program as ``embed_asyncio.py``, written for trio: the SCP receives C-STOREs through
an inbox spooling to ``FOLDER/spool``, keeps each file in ``FOLDER/done`` and sends a job down
the program's own memory channel for each. Prints "listening on 127.0.0.1:PORT" once it accepts
associations and "received <SOP Instance UID> from <calling AE> (<modality>)" per instance;
Ctrl-C stops it (exit status 0).
"""

from __future__ import annotations

import contextlib
import signal
import sys
from pathlib import Path

import trio

from asyncdicom import AE

Job = tuple[str, str, str]


async def report(jobs: trio.MemoryReceiveChannel[Job]) -> None:
    """The program's worker: takes jobs from its channel."""
    async for uid, calling_ae, modality in jobs:
        print(f"received {uid} from {calling_ae} ({modality})", flush=True)


async def dicom_in(port: int, folder: Path, jobs: trio.MemorySendChannel[Job]) -> None:
    """The SCP: every instance received becomes a job on the program's channel."""
    ae = AE("EMBEDDED", accept_any_storage=True)
    async with ae.server("127.0.0.1", port) as server, ae.inbox(folder / "spool") as inbox:
        print(f"listening on 127.0.0.1:{server.port}", flush=True)
        async for instance in inbox:
            ds = await instance.dataset(stop_before_pixels=True)
            await instance.move_to(folder / "done")  # ours now: keep the file
            await jobs.send((instance.sop_instance_uid, instance.calling_ae_title, ds.Modality))


async def main(port: int, folder: Path) -> None:
    send, receive = trio.open_memory_channel[Job](100)
    with trio.open_signal_receiver(signal.SIGINT) as interrupts:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(report, receive)
            nursery.start_soon(dicom_in, port, folder, send)
            async for _ in interrupts:  # Ctrl-C: stop every task, the SCP's included
                nursery.cancel_scope.cancel()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} PORT FOLDER")
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: a normal way to stop
        trio.run(main, int(sys.argv[1]), Path(sys.argv[2]))
