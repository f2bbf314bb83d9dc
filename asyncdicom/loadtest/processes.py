"""A load test spread over several worker processes, so that one generator can use every core.

:func:`run_in_processes` starts ``processes`` copies of ``python -m
asyncdicom.loadtest.worker``, gives each its share of the associations (and of the rate and
count), and starts them together once all have read their files.  Each reports progress lines
while it runs and its :class:`~.engine.LoadResult` at the end, histograms in HdrHistogram's
compressed encoding; the parent merges them into one result.  In an open-loop test the
processes' arrival schedules are interleaved (process ``j`` of ``P`` is offset by ``j / rate``)
so that together they follow the one schedule of the given rate.

The protocol on the worker's standard streams (one line each): parent -> worker the pickled
:class:`~.engine.LoadSpec` (base64) and the backend; worker -> parent ``ready``; parent ->
worker ``go SECONDS`` (a delay before the common start); worker -> parent ``progress OPS
ERRORS`` every 0.2 s, then ``result JSON`` (or ``error TEXT``).
"""

from __future__ import annotations

import base64
import json
import pickle
import sys
from collections.abc import Callable
from dataclasses import replace
from subprocess import PIPE
from typing import Any

import anyio
from anyio.abc import Process
from anyio.streams.text import TextReceiveStream

from ..errors import WorkerFailed
from .engine import LoadGenerator, LoadResult, LoadSpec, planned_operations

__all__ = ["WorkerFailed", "run_in_processes", "split", "worker_main"]

#: seconds between the last worker's ``ready`` and the common start
_START_DELAY = 0.1
_PROGRESS_EVERY = 0.2


def split(spec: LoadSpec, processes: int) -> list[tuple[LoadSpec, float]]:
    """Each worker's spec and schedule offset: associations (at least one each, so at most
    ``spec.associations`` workers), rate and count divided as evenly as whole numbers allow
    (an open-loop run with a duration gets its count from it first, see
    :func:`~.engine.planned_operations`)."""
    n = max(1, min(processes, spec.associations))
    total = spec.count
    duration = spec.duration
    if spec.rate is not None and spec.duration is not None:
        # open loop: the run's operations are counted once, then shared (a share's own
        # rate x duration would round on its own)
        planned = planned_operations(spec.rate, spec.duration)
        total = planned if total is None else min(total, planned)
        duration = None
    shares = []
    for j in range(n):
        associations = spec.associations // n + (1 if j < spec.associations % n else 0)
        count = None
        if total is not None:
            count = total // n + (1 if j < total % n else 0)
        rate = None if spec.rate is None else spec.rate / n
        offset = 0.0 if spec.rate is None else j / spec.rate
        if count == 0:
            continue
        share = replace(spec, associations=associations, count=count, rate=rate, duration=duration)
        shares.append((share, offset))
    return shares


async def _lines(process: Process) -> Any:
    assert process.stdout is not None
    buffer = ""
    async for text in TextReceiveStream(process.stdout):
        buffer += text
        while "\n" in buffer:
            line, buffer = buffer.split("\n", 1)
            yield line
    if buffer:
        yield buffer


async def run_in_processes(
    spec: LoadSpec,
    processes: int,
    *,
    backend: str = "asyncio",
    on_progress: Callable[[int, int], None] | None = None,
) -> LoadResult:
    """Run ``spec`` in ``processes`` worker processes and merge their results.

    ``on_progress(operations, errors)`` is called with the totals as the workers report them.
    Raises :class:`WorkerFailed` when a worker fails (e.g. a file it cannot read).
    """
    shares = split(spec, processes)
    results: list[LoadResult | None] = [None] * len(shares)
    progress = [(0, 0)] * len(shares)
    ready = [anyio.Event() for _ in shares]
    go = anyio.Event()
    failures: list[str] = []

    async def worker(j: int, share: LoadSpec, offset: float) -> None:
        payload = base64.b64encode(pickle.dumps((share, offset, backend))).decode("ascii")
        async with await anyio.open_process(
            [sys.executable, "-m", "asyncdicom.loadtest.worker"],
            stdin=PIPE,
            stdout=PIPE,
            stderr=None,
        ) as process:
            assert process.stdin is not None
            await process.stdin.send((payload + "\n").encode("ascii"))
            try:
                async for line in _lines(process):
                    word, _, rest = line.partition(" ")
                    if word == "ready":
                        ready[j].set()
                        await go.wait()
                        await process.stdin.send(f"go {_START_DELAY}\n".encode("ascii"))
                    elif word == "progress":
                        ops, errs = (int(x) for x in rest.split())
                        progress[j] = (ops, errs)
                        if on_progress is not None:
                            on_progress(sum(p[0] for p in progress), sum(p[1] for p in progress))
                    elif word == "result":
                        results[j] = LoadResult.decode(json.loads(rest))
                    elif word == "error":
                        failures.append(rest)
            finally:
                ready[j].set()  # a worker that failed early must not hold the others back
            await process.wait()
            if results[j] is None and not failures:
                failures.append(f"worker process {j + 1} ended with status {process.returncode}")

    async with anyio.create_task_group() as tg:
        for j, (share, offset) in enumerate(shares):
            tg.start_soon(worker, j, share, offset)
        for event in ready:
            await event.wait()
        go.set()
    if failures:
        raise WorkerFailed(failures[0])
    return LoadResult.merged([r for r in results if r is not None])


# ------------------------------------------------------------------------------------ worker


async def worker_main(spec: LoadSpec, offset: float) -> None:
    generator = LoadGenerator(spec, schedule_offset=offset)
    try:
        await anyio.to_thread.run_sync(generator.prepare)
    except Exception as exc:  # reported to the parent as one line
        print(f"error {exc}", flush=True)
        return
    print("ready", flush=True)
    line = await anyio.to_thread.run_sync(sys.stdin.readline)
    word, _, rest = line.partition(" ")
    if word != "go":
        return
    # a common start: the parent sent the same delay to every worker at (nearly) the same time
    start = anyio.current_time() + float(rest)

    async def report() -> None:
        while True:
            print(f"progress {generator.operations} {generator.errors}", flush=True)
            await anyio.sleep(_PROGRESS_EVERY)

    async with anyio.create_task_group() as tg:
        tg.start_soon(report)
        result = await generator.run(start=start)
        tg.cancel_scope.cancel()
    print(f"progress {result.operations} {result.errors}", flush=True)
    print(f"result {json.dumps(result.encode())}", flush=True)
