"""Server-side CPU cost of one request, without sockets: C-ECHO (or C-STORE) answered by an AE.

Run: ``python tests/benchmarks/bench_replay.py [--count 20000] [--repeat 7]
[--backend asyncio|trio] [--store KIB]``

A client association over an in-memory pipe records every byte it sends (A-ASSOCIATE-RQ,
``--count`` C-ECHO-RQs, A-RELEASE-RQ).  The recording is then replayed into a fresh SCP
(:meth:`AE.serve_stream`) through a stream whose ``receive()`` returns the next recorded write
at once and whose ``send()`` drops what the SCP answers.  What is timed is therefore only the
SCP's own work per request: PDU framing, the state machine, command decoding, DIMSE
bookkeeping, the dispatch decision, the response's encoding and queueing.  No network, no
peer, no scheduling noise: a change of a microsecond on this path shows here when the
network benchmark cannot resolve it.  Reported: microseconds per C-ECHO, best of
``--repeat`` runs, of wall time and of the thread's CPU time (``time.thread_time``: less
disturbed than the wall time when other processes share the cores).

``--store KIB`` records C-STOREs of a synthetic CT instance of about KIB kibibytes instead
(the SCP announces a 131 072-byte maximum PDU, as in ``bench_network.py``, and its handler
reads the data set and drops it, as ``storescp --ignore`` does): the receive path of C-STORE
per instance, PDV reassembly, the request's task and the data-set stream included.

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


def make_scp(store: bool) -> AE:
    """The SCP replayed into: C-ECHO's default answer, or a C-STORE handler that reads the
    data set and drops it."""
    if not store:
        return AE("SCP")
    scp = AE("SCP", accept_any_storage=True, max_pdu_length=131072)

    @scp.on_store
    async def on_store(request: Any) -> int:
        async for _chunk in request.chunks():
            pass
        return 0

    return scp


async def record(count: int, store_kib: int = 0) -> tuple[list[bytes], list[int]]:
    """The bytes a client writes for an association with ``count`` C-ECHOs (or C-STOREs of
    ``store_kib`` KiB)."""
    from asyncdicom.testing import memory_stream_pair

    client, server = memory_stream_pair()
    sent: list[bytes] = []
    answers = [0]  # writes of the SCP so far
    needed: list[int] = []  # per client write: how many SCP writes came before it
    real_send = client.send
    real_answer = server.send

    async def send(item: bytes) -> None:
        sent.append(bytes(item))
        needed.append(answers[0])
        await real_send(item)

    async def answer(item: bytes) -> None:
        answers[0] += 1
        await real_answer(item)

    client.send = send  # type: ignore[method-assign]
    server.send = answer  # type: ignore[method-assign]
    scp = make_scp(bool(store_kib))
    async with anyio.create_task_group() as tg:
        tg.start_soon(scp.serve_stream, server)
        if store_kib:
            import tempfile

            from asyncdicom.storage.synthetic import write_ct_files

            with tempfile.TemporaryDirectory() as folder:
                [path] = write_ct_files(folder, 1, store_kib * 1024)
                data = path.read_bytes()
            from pydicom import dcmread

            ds = dcmread(__import__("io").BytesIO(data))
            contexts = [(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])]
            async with AE("SCU").associate_over(
                client, called_aet="SCP", contexts=contexts
            ) as assoc:
                for _ in range(count):
                    await assoc.store(ds)
        else:
            async with AE("SCU").associate_over(client, called_aet="SCP") as assoc:
                for _ in range(count):
                    await assoc.echo()
        tg.cancel_scope.cancel()
    return sent, needed


class Replay(ByteStream):
    """Hands out the recorded writes one per receive; drops whatever is sent."""

    def __init__(self, items: list[bytes], needed: list[int] | None = None) -> None:
        self.items = items
        #: per item: the SCP writes that must have happened before it is handed out (a
        #: client waits for the response to one request before it sends the next)
        self.needed = needed
        self.answers = 0
        self.answered: anyio.Event | None = None
        self.index = 0
        self.started = self.ended = 0.0
        self.cpu_started = self.cpu_ended = 0.0

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self.index >= len(self.items):
            raise anyio.EndOfStream
        if self.needed is not None:
            while self.answers < self.needed[self.index]:
                self.answered = anyio.Event()
                await self.answered.wait()
        if self.index == 1:  # after the A-ASSOCIATE-RQ: the first request
            self.started = time.perf_counter()
            self.cpu_started = time.thread_time()
        elif self.index == len(self.items) - 1:  # the A-RELEASE-RQ
            self.ended = time.perf_counter()
            self.cpu_ended = time.thread_time()
        item = self.items[self.index]
        self.index += 1
        return item

    async def receive_before(self, deadline: float, max_bytes: int = 65536) -> bytes | None:
        """As the asyncio stream's: a receive under a deadline, which never passes here (the
        next write is always at hand once its answer is out)."""
        return await self.receive(max_bytes)

    def expire(self) -> None:
        pass

    async def send(self, item: bytes) -> None:
        self.answers += 1
        if self.answered is not None:
            self.answered.set()

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


async def main(args: Any) -> None:
    if args.load:
        with open(args.load, "rb") as f:
            saved = pickle.load(f)
        # a recording saved before --store existed is the bare list of C-ECHO writes (the
        # SCP answers each C-ECHO before it reads on: nothing to wait for)
        items, needed, count, store_kib = (
            (saved, None, len(saved) - 2, 0) if isinstance(saved, list) else saved
        )
    else:
        count, store_kib = args.count, args.store
        items, needed = await record(count, store_kib)
    if args.save:
        with open(args.save, "wb") as f:
            pickle.dump((items, needed, count, store_kib), f)
    best = best_cpu = float("inf")
    for _ in range(args.repeat):
        stream = Replay(items, needed)
        if args.backend == "trio":  # the reader uses a cancel scope there, as with trio's stream
            stream.receive_before = None  # type: ignore[method-assign,assignment]
        gc.collect()
        scp = make_scp(bool(store_kib))
        serve = getattr(scp, "serve_stream", None) or scp._handle_connection
        await serve(stream)
        best = min(best, (stream.ended - stream.started) / count)
        best_cpu = min(best_cpu, (stream.cpu_ended - stream.cpu_started) / count)
    what = f"C-STORE of {store_kib} KiB" if store_kib else "C-ECHO"
    print(
        f"{args.backend}: {best * 1e6:.2f} us per {what} (best of {args.repeat}); "
        f"thread CPU {best_cpu * 1e6:.2f} us"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument(
        "--store", type=int, default=0, metavar="KIB", help="C-STOREs of KIB KiB instead"
    )
    parser.add_argument("--save", metavar="FILE", help="save the recording (pickle)")
    parser.add_argument("--load", metavar="FILE", help="replay a saved recording")
    ns = parser.parse_args()
    anyio.run(main, ns, backend=ns.backend)
