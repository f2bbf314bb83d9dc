"""Connection flood: our ``storescp`` (its own process) under 1 000 silent and 1 000 garbage
connections while a well-behaved client keeps associating.

Run: ``python tests/benchmarks/bench_flood.py [--connections N] [--associations A]
[--only silent|garbage] [--json FILE]``

For each kind of flood a fresh ``asyncdicom storescp --ignore`` is started on 127.0.0.1 and:

* ``silent``: N TCP connections opened (at most 200 connects in flight) and held without
  sending a byte, until the client is done (the server's ARTIM, 30 s by default, may close
  them first: that is the defence being measured);
* ``garbage``: N connections, each sending 2 KiB of random bytes and reading until the server
  closes (the server answers with an A-ABORT), all at once;

meanwhile the well-behaved client (asyncdicom's AE API, in this process) runs A sequential
associations (connect, A-ASSOCIATE, C-ECHO, A-RELEASE).  Reported per flood: the client's
association setup time (connect to A-ASSOCIATE-AC) p50/p99/max, its errors, the flood's own
outcome, and the server's RSS (psutil) before, peak during, and after the flood ended.

Everything talks to 127.0.0.1 only; every wait is bounded; the server is killed at the end.
Results: a table on stdout, and JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from subprocess import PIPE
from typing import Any

import anyio
import anyio.abc
import psutil

from asyncdicom import AE
from asyncdicom.ae import Timeouts
from asyncdicom.errors import DICOMError

HOST = "127.0.0.1"
CONNECT_CONCURRENCY = 200
#: bound for the whole of one flood run
RUN_BOUND = 600.0
SAMPLE_EVERY = 0.1


def raise_nofile_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def start_server(folder: Path) -> tuple[Any, int]:
    process = await anyio.open_process(
        [
            sys.executable,
            "-m",
            "asyncdicom",
            "storescp",
            "--host",
            HOST,
            "--port",
            "0",
            "--aet",
            "STORESCP",
            "--ignore",
        ],
        cwd=folder,
        env={**os.environ, "NO_COLOR": "1"},
        stdout=PIPE,
        stderr=PIPE,
    )
    pattern = re.compile(rb"listening on 127\.0\.0\.1:(\d+)")
    seen = b""
    assert process.stderr is not None
    with anyio.fail_after(60):
        while not (match := pattern.search(seen)):
            seen += await process.stderr.receive()
    return process, int(match.group(1))


def rss_mib(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 2**20


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


async def silent_flood(port: int, n: int, stop: anyio.Event, stats: dict[str, int]) -> None:
    limiter = anyio.CapacityLimiter(CONNECT_CONCURRENCY)

    async def one() -> None:
        try:
            async with limiter:
                stream = await anyio.connect_tcp(HOST, port)
        except OSError:
            stats["connect_failed"] += 1
            return
        stats["opened"] += 1
        async with stream:
            with anyio.move_on_after(RUN_BOUND):
                async with anyio.create_task_group() as tg:

                    async def closed_by_server() -> None:
                        try:
                            while await stream.receive():
                                pass
                        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                            pass
                        stats["closed_by_server"] += 1
                        tg.cancel_scope.cancel()

                    tg.start_soon(closed_by_server)
                    await stop.wait()
                    tg.cancel_scope.cancel()

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)


async def garbage_flood(port: int, n: int, stop: anyio.Event, stats: dict[str, int]) -> None:
    """``n`` workers, each connecting, sending 2 KiB of random bytes, reading the answer (an
    A-ABORT, or the close) and closing, again and again until ``stop``: a sustained flood of
    ``n`` garbage connections at a time."""
    limiter = anyio.CapacityLimiter(CONNECT_CONCURRENCY)
    rng = random.Random(1)

    async def worker() -> None:
        while not stop.is_set():
            data = bytearray(rng.randbytes(2048))
            data[0] = 0x80 | data[0]  # never a valid PDU type
            try:
                async with limiter:
                    stream = await anyio.connect_tcp(HOST, port)
            except OSError:
                stats["connect_failed"] += 1
                continue
            stats["opened"] += 1
            async with stream:
                with anyio.move_on_after(RUN_BOUND):
                    try:
                        await stream.send(bytes(data))
                        answer = b""
                        while len(answer) < 10:  # an A-ABORT PDU is 10 bytes
                            answer += await stream.receive()
                        stats["answered"] += 1
                    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                        stats["closed_by_server"] += 1

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(worker)


async def client(port: int, count: int) -> tuple[list[float], list[str]]:
    ae = AE("WELLBEHAVED", timeouts=Timeouts(connect=30.0, acse=30.0, dimse=30.0))
    setups: list[float] = []
    failures: list[str] = []
    for _ in range(count):
        started = time.perf_counter()
        try:
            async with ae.associate(HOST, port, called_aet="STORESCP") as assoc:
                setups.append(time.perf_counter() - started)
                await assoc.echo()
        except DICOMError as exc:
            failures.append(str(exc))
    return setups, failures


async def run_one(kind: str, connections: int, associations: int, folder: Path) -> dict[str, Any]:
    process, port = await start_server(folder)
    try:
        # warm-up: the server has served one association before the baseline is read
        await client(port, 1)
        rss_before = rss_mib(process.pid)
        peak = rss_before
        stats = {"opened": 0, "connect_failed": 0, "closed_by_server": 0, "answered": 0}
        stop = anyio.Event()
        flood_started = time.perf_counter()
        with anyio.fail_after(RUN_BOUND):
            async with anyio.create_task_group() as tg:

                async def sample() -> None:
                    nonlocal peak
                    while True:
                        peak = max(peak, rss_mib(process.pid))
                        await anyio.sleep(SAMPLE_EVERY)  # a sampling clock

                tg.start_soon(sample)
                flood = silent_flood if kind == "silent" else garbage_flood
                async with anyio.create_task_group() as flood_tg:
                    flood_tg.start_soon(flood, port, connections, stop, stats)
                    # the client starts once the flood is fully under way
                    while stats["opened"] + stats["connect_failed"] < connections:
                        await anyio.sleep(SAMPLE_EVERY)  # polling a counter, bounded above
                    setups, failures = await client(port, associations)
                    stop.set()
                flood_seconds = time.perf_counter() - flood_started
                peak = max(peak, rss_mib(process.pid))
                # after: the flood's sockets are closed; give the server a moment to free them
                await anyio.sleep(1.0)
                rss_after = rss_mib(process.pid)
                tg.cancel_scope.cancel()
        return {
            "flood": kind,
            "connections": connections,
            "flood_stats": stats,
            "flood_seconds": round(flood_seconds, 2),
            "associations": associations,
            "client_ok": len(setups),
            "client_errors": len(failures),
            "client_first_errors": failures[:3],
            "setup_ms_p50": round(statistics.median(setups) * 1000, 2) if setups else None,
            "setup_ms_p99": round(percentile(setups, 99) * 1000, 2) if setups else None,
            "setup_ms_max": round(max(setups) * 1000, 2) if setups else None,
            "rss_mib_before": round(rss_before, 1),
            "rss_mib_peak": round(peak, 1),
            "rss_mib_after": round(rss_after, 1),
        }
    finally:
        process.kill()
        with anyio.move_on_after(10):
            await process.wait()


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    raise_nofile_limit()
    kinds = [args.only] if args.only else ["silent", "garbage"]
    results = []
    for kind in kinds:
        with tempfile.TemporaryDirectory(prefix="bench-flood-") as folder:
            results.append(await run_one(kind, args.connections, args.associations, Path(folder)))
    return results


def print_table(results: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="storescp under a connection flood (127.0.0.1)")
    for column in (
        "flood",
        "conns",
        "client ok/err",
        "setup p50 ms",
        "setup p99 ms",
        "setup max ms",
        "RSS before/peak/after MiB",
        "flood answered/closed",
    ):
        table.add_column(column)
    for r in results:
        table.add_row(
            r["flood"],
            str(r["connections"]),
            f"{r['client_ok']}/{r['client_errors']}",
            str(r["setup_ms_p50"]),
            str(r["setup_ms_p99"]),
            str(r["setup_ms_max"]),
            f"{r['rss_mib_before']}/{r['rss_mib_peak']}/{r['rss_mib_after']}",
            str(r["flood_stats"]["closed_by_server"] + r["flood_stats"]["answered"]),
        )
    Console(width=160).print(table)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--associations", type=int, default=200)
    parser.add_argument("--only", choices=["silent", "garbage"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    results = anyio.run(main, args)
    print_table(results)
    print(f"total {time.perf_counter() - started:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
