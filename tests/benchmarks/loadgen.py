"""Load generator for the network benchmarks: asyncdicom's AE API as the SCU, in its own process.

Usage (one JSON object on stdout, except ``idle`` which prints two lines)::

    python tests/benchmarks/loadgen.py echo HOST PORT --count N [--max-seconds T]
    python tests/benchmarks/loadgen.py assoc-echo HOST PORT --count N [--max-seconds T]
    python tests/benchmarks/loadgen.py concurrent HOST PORT --associations N --echoes E
        --store FILE [--max-seconds T]
    python tests/benchmarks/loadgen.py idle HOST PORT --associations N [--connect-concurrency C]
        [--max-seconds T] [--hold-seconds H]

* ``echo``: one association, C-ECHO requests one after the other until ``--count`` were
  answered or ``--max-seconds`` passed; ``elapsed_s`` covers the echoes only.
* ``assoc-echo``: associate, one C-ECHO, release, sequentially, same bounds; ``elapsed_s`` covers
  everything (connect, A-ASSOCIATE, C-ECHO, A-RELEASE, close).
* ``concurrent``: ``N`` associations started at once, each doing ``E`` C-ECHOs and a C-STORE of
  ``FILE``; prints how many succeeded, the failures (first messages) and the wall time.
* ``idle``: opens ``N`` associations (at most ``C`` being set up at a time), prints
  ``OPEN {json}`` once all are established (or failed), then holds them until a line (or end of
  file) arrives on stdin or ``--hold-seconds`` passed, releases them all and prints
  ``DONE {json}``.

The same script is used against every server (asyncdicom, pynetdicom, DCMTK), so the client side
of a comparison never changes.  The soft RLIMIT_NOFILE is raised to the hard limit first.
All traffic goes where HOST says; the benchmark only ever passes 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import anyio

from asyncdicom import AE
from asyncdicom.ae import Timeouts
from asyncdicom.errors import DICOMError
from asyncdicom.protocol import uids


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the (soft, hard) now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _ae(args: argparse.Namespace) -> AE:
    return AE(
        "LOADGEN",
        timeouts=Timeouts(connect=60.0, acse=120.0, dimse=60.0),
    )


def _emit(prefix: str, payload: dict[str, Any]) -> None:
    print(f"{prefix}{json.dumps(payload)}", flush=True)


async def run_echo(args: argparse.Namespace) -> dict[str, Any]:
    ae = _ae(args)
    failed = 0
    done = 0
    async with ae.associate(args.host, args.port, called_aet=args.called_aet) as assoc:
        start = time.perf_counter()
        stop_at = start + args.max_seconds
        while done < args.count:
            if (await assoc.echo()).status != 0x0000:
                failed += 1
            done += 1
            if time.perf_counter() >= stop_at:
                break
        elapsed = time.perf_counter() - start
    return {
        "operation": "echo",
        "requests": done,
        "failed": failed,
        "elapsed_s": elapsed,
        "rate_per_s": done / elapsed if elapsed > 0 else None,
        "time_bound_hit": done < args.count,
    }


async def run_assoc_echo(args: argparse.Namespace) -> dict[str, Any]:
    ae = _ae(args)
    failed = 0
    done = 0
    start = time.perf_counter()
    stop_at = start + args.max_seconds
    while done < args.count:
        try:
            async with ae.associate(args.host, args.port, called_aet=args.called_aet) as assoc:
                if (await assoc.echo()).status != 0x0000:
                    failed += 1
        except DICOMError:
            failed += 1
        done += 1
        if time.perf_counter() >= stop_at:
            break
    elapsed = time.perf_counter() - start
    return {
        "operation": "assoc-echo",
        "associations": done,
        "failed": failed,
        "elapsed_s": elapsed,
        "rate_per_s": done / elapsed if elapsed > 0 else None,
        "time_bound_hit": done < args.count,
    }


async def run_concurrent(args: argparse.Namespace) -> dict[str, Any]:
    ae = _ae(args)
    store_file = Path(args.store)
    ok = 0
    echoes_ok = 0
    stores_ok = 0
    errors: list[str] = []

    async def one(index: int) -> None:
        nonlocal ok, echoes_ok, stores_ok
        try:
            async with ae.associate(
                args.host,
                args.port,
                called_aet=args.called_aet,
                contexts=[uids.VERIFICATION, uids.CT_IMAGE_STORAGE],
            ) as assoc:
                good = True
                for _ in range(args.echoes):
                    if (await assoc.echo()).status == 0x0000:
                        echoes_ok += 1
                    else:
                        good = False
                if (await assoc.store(store_file)).status == 0x0000:
                    stores_ok += 1
                else:
                    good = False
            if good:
                ok += 1
            else:
                errors.append(f"association {index}: a status other than success")
        except (DICOMError, OSError) as exc:
            errors.append(f"association {index}: {type(exc).__name__}: {exc}")

    start = time.perf_counter()
    with anyio.move_on_after(args.max_seconds) as scope:
        async with anyio.create_task_group() as tg:
            for i in range(args.associations):
                tg.start_soon(one, i)
    wall = time.perf_counter() - start
    return {
        "operation": "concurrent",
        "associations": args.associations,
        "succeeded": ok,
        "failed": args.associations - ok,
        "echoes_ok": echoes_ok,
        "stores_ok": stores_ok,
        "errors": errors[:10],
        "error_count": len(errors),
        "timed_out": scope.cancelled_caught,
        "wall_s": wall,
    }


async def run_idle(args: argparse.Namespace) -> dict[str, Any]:
    ae = _ae(args)
    total = args.associations
    opened = 0
    failed = 0
    released = 0
    errors: list[str] = []
    setup = anyio.Semaphore(args.connect_concurrency)
    all_settled = anyio.Event()
    all_ended = anyio.Event()
    let_go = anyio.Event()
    ended = 0

    def settled() -> None:
        if opened + failed == total:
            all_settled.set()

    async def hold(index: int) -> None:
        nonlocal opened, failed, released, ended
        await setup.acquire()
        holding_slot = True
        try:
            async with ae.associate(args.host, args.port, called_aet=args.called_aet) as assoc:
                setup.release()
                holding_slot = False
                opened += 1
                settled()
                await let_go.wait()
                if not assoc.is_established:
                    raise DICOMError("association ended while idle")
            released += 1
        except (DICOMError, OSError) as exc:
            if holding_slot:  # failed during set-up
                failed += 1
                settled()
            if len(errors) < 10:
                errors.append(f"association {index}: {type(exc).__name__}: {exc}")
        finally:
            if holding_slot:
                setup.release()
            ended += 1
            if ended == total:
                all_ended.set()

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(total):
            tg.start_soon(hold, i)
        with anyio.move_on_after(args.max_seconds):
            await all_settled.wait()
        open_s = time.perf_counter() - start
        _emit("OPEN ", {"opened": opened, "failed": failed, "open_s": open_s, "errors": errors})
        # Hold until the benchmark says so (a line or EOF on stdin), bounded in time.
        with anyio.move_on_after(args.hold_seconds):
            await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
        release_start = time.perf_counter()
        let_go.set()
        with anyio.move_on_after(args.max_seconds) as release_scope:
            await all_ended.wait()
        if release_scope.cancelled_caught:
            tg.cancel_scope.cancel()
    return {
        "operation": "idle",
        "associations": total,
        "opened": opened,
        "failed": failed,
        "released": released,
        "open_s": open_s,
        "release_s": time.perf_counter() - release_start,
        "errors": errors,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loadgen.py", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("host")
    common.add_argument("port", type=int)
    common.add_argument("--called-aet", default="ANY-SCP")
    common.add_argument("--max-seconds", type=float, default=30.0)
    common.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    sub = parser.add_subparsers(dest="operation", required=True)
    p = sub.add_parser("echo", parents=[common])
    p.add_argument("--count", type=int, required=True)
    p = sub.add_parser("assoc-echo", parents=[common])
    p.add_argument("--count", type=int, required=True)
    p = sub.add_parser("concurrent", parents=[common])
    p.add_argument("--associations", type=int, required=True)
    p.add_argument("--echoes", type=int, default=3)
    p.add_argument("--store", required=True, metavar="FILE")
    p = sub.add_parser("idle", parents=[common])
    p.add_argument("--associations", type=int, required=True)
    p.add_argument("--connect-concurrency", type=int, default=200)
    p.add_argument("--hold-seconds", type=float, default=120.0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    soft, hard = raise_nofile_limit()
    runners = {
        "echo": run_echo,
        "assoc-echo": run_assoc_echo,
        "concurrent": run_concurrent,
        "idle": run_idle,
    }
    try:
        result = anyio.run(runners[args.operation], args, backend=args.backend)
    except (DICOMError, OSError) as exc:
        _emit("DONE " if args.operation == "idle" else "", {"error": f"{exc}"})
        return 2
    result["nofile_limit"] = [soft, hard]
    _emit("DONE " if args.operation == "idle" else "", result)
    return 0 if not result.get("failed") else 1


if __name__ == "__main__":
    sys.exit(main())
