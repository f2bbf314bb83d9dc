"""Server-side CPU cost of one request, without sockets: C-ECHO answered by an AE.

Run: ``python tests/benchmarks/bench_replay.py [--count 20000] [--repeat 7]
[--backend asyncio|trio]``

A client association over an in-memory pipe records every byte it sends (A-ASSOCIATE-RQ,
``--count`` C-ECHO-RQs, A-RELEASE-RQ).  The recording is then replayed into a fresh SCP
(:meth:`AE.serve_stream`) through a stream whose ``receive()`` returns the next recorded write
at once and whose ``send()`` drops what the SCP answers.  What is timed is therefore only the
SCP's own work per request: PDU framing, the state machine, command decoding, DIMSE
bookkeeping, the dispatch decision, the response's encoding and queueing.  No network, no
peer, no scheduling noise: a change of a microsecond on this path shows here when the
network benchmark cannot resolve it.  Reported: microseconds per C-ECHO, best of
``--repeat`` runs.

To compare two commits, save a recording once (``--save rec.pickle``) and replay it with
``--load rec.pickle`` from each checkout (``PYTHONPATH`` pointing at it); replaying needs only
``AE`` and ``AE.serve_stream`` (before the service layer: ``AE._handle_connection``).
"""

from __future__ import annotations

import argparse
import gc
import pickle
import time
from typing import Any

import anyio
from anyio.abc import ByteStream

from asyncdicom import AE


async def record(count: int) -> list[bytes]:
    """The bytes a client writes for an association with ``count`` C-ECHOs."""
    from asyncdicom.testing import memory_stream_pair

    client, server = memory_stream_pair()
    sent: list[bytes] = []
    real_send = client.send

    async def send(item: bytes) -> None:
        sent.append(bytes(item))
        await real_send(item)

    client.send = send  # type: ignore[method-assign]
    scp = AE("SCP")
    async with anyio.create_task_group() as tg:
        tg.start_soon(scp.serve_stream, server)
        async with AE("SCU").associate_over(client, called_aet="SCP") as assoc:
            for _ in range(count):
                await assoc.echo()
        tg.cancel_scope.cancel()
    return sent


class Replay(ByteStream):
    """Hands out the recorded writes one per receive; drops whatever is sent."""

    def __init__(self, items: list[bytes]) -> None:
        self.items = items
        self.index = 0
        self.started = self.ended = 0.0

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self.index >= len(self.items):
            raise anyio.EndOfStream
        if self.index == 1:  # after the A-ASSOCIATE-RQ: the first C-ECHO-RQ
            self.started = time.perf_counter()
        elif self.index == len(self.items) - 1:  # the A-RELEASE-RQ
            self.ended = time.perf_counter()
        item = self.items[self.index]
        self.index += 1
        return item

    async def send(self, item: bytes) -> None:
        pass

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


async def main(args: Any) -> None:
    if args.load:
        with open(args.load, "rb") as f:
            items = pickle.load(f)
    else:
        items = await record(args.count)
    if args.save:
        with open(args.save, "wb") as f:
            pickle.dump(items, f)
    best = float("inf")
    for _ in range(args.repeat):
        stream = Replay(items)
        gc.collect()
        scp = AE("SCP")
        serve = getattr(scp, "serve_stream", None) or scp._handle_connection
        await serve(stream)
        best = min(best, (stream.ended - stream.started) / (len(items) - 2))
    print(f"{args.backend}: {best * 1e6:.2f} us per C-ECHO (best of {args.repeat})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument("--save", metavar="FILE", help="save the recording (pickle)")
    parser.add_argument("--load", metavar="FILE", help="replay a saved recording")
    ns = parser.parse_args()
    anyio.run(main, ns, backend=ns.backend)
