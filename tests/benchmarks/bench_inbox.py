"""Inbox under a slow consumer: 1 000 x 0.5 MB from DCMTK storescu, the consumer sleeping 10 ms
per instance; the receiving process's memory (RSS) and what was lost when the consumer fails.

Run: ``python tests/benchmarks/bench_inbox.py [--count 1000] [--size 500000] [--rounds 2]``

Each round runs, each in a fresh Python process (so that each peak RSS is its own), in turn:

* ``inbox``: an AE serving on 127.0.0.1 with ``ae.inbox(spool)`` (``"saved"`` mode), one DCMTK
  ``storescu`` (one association, ``TCP_NODELAY=1``) sending the ``--count`` files, the consumer
  reading each instance's header from its file and sleeping ``--sleep`` seconds; all must
  arrive;
* ``raise``: the same, the consumer raising at instance ``--count // 2``; afterwards an inbox is
  opened on the folder again and drained.  Every instance the server answered Success (counted
  from the C-STORE-RSPs it sent, a hook) must be one the consumer finished or one the second
  inbox yields;
* ``hold``: as ``inbox``, the consumer starting only once the sender has finished (all
  ``--count`` instances queued at once);
* ``verdict``: as ``inbox`` in ``"verdict"`` mode (each answer waits for the consumer);
* ``handler``: the baseline, ``@ae.on_store`` with ``request.save_to(folder)`` and no consumer.

Each reports the peak RSS (``VmHWM``), its growth over the RSS once serving (before the first
association), the most records queued and the most bytes they held (``inbox.queued_memory``),
and the elapsed time.  The files are generated once (synthetic CT, ``--cache``).  Results: a
table on stdout and ``bench-results/inbox.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def _status(field: str) -> int:
    """A ``/proc/self/status`` value in bytes (``VmRSS``, ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def files(cache: Path, count: int, size: int) -> Path:
    from asyncdicom.storage.synthetic import write_ct_files

    folder = cache / f"ct-{count}-{size}"
    if len(list(folder.glob("*.dcm"))) != count:
        for old in folder.glob("*.dcm"):
            old.unlink()
        write_ct_files(folder, count, size)
    return folder


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One run, in this process."""
    import anyio
    from harness.peers import dcmtk_env, storescu_command

    from asyncdicom import AE, HookEvent

    source = Path(args.source)
    count = len(list(source.glob("*.dcm")))
    work = Path(tempfile.mkdtemp(prefix="bench-inbox-"))
    spool = work / "spool"
    result: dict[str, Any] = {"mode": args.mode, "count": count}

    async def main() -> None:
        ae = AE("INBOX-SCP", accept_any_storage=True)
        acknowledged: set[str] = set()

        def sent(_event: Any, _assoc: Any, message: Any) -> None:
            if message.NAME == "C-STORE-RSP" and message.status == 0:
                acknowledged.add(message.affected_sop_instance_uid)

        ae.hooks.add(HookEvent.DIMSE_SENT, sent)
        if args.mode == "handler":

            @ae.on_store
            async def on_store(request: Any) -> int:
                await request.save_to(work / "handler")
                return 0

        consumed: list[str] = []
        most = {"queued": 0, "memory": 0}
        async with ae.server("127.0.0.1", 0) as server:
            command = storescu_command(
                "127.0.0.1", server.port, [source], called_aet="INBOX-SCP", timeout=600
            )
            baseline = _status("VmRSS")
            started = time.perf_counter()

            async def send() -> None:
                await anyio.run_process(command, check=False, env=dcmtk_env())

            if args.mode == "handler":
                await send()
            else:
                answer = "verdict" if args.mode == "verdict" else "saved"
                inbox = await ae.inbox(spool, answer=answer).__aenter__()
                async with anyio.create_task_group() as tg:
                    if args.mode == "hold":
                        await send()  # the consumer starts once every instance is queued
                    else:
                        tg.start_soon(send)
                    failed = False
                    async for item in inbox:
                        most["queued"] = max(most["queued"], inbox.queued + 1)
                        most["memory"] = max(most["memory"], inbox.queued_memory)
                        if args.mode == "raise" and len(consumed) == count // 2:
                            failed = True  # as if the consumer raised here
                            break
                        await item.dataset(stop_before_pixels=True)
                        consumed.append(item.sop_instance_uid)
                        await anyio.sleep(args.sleep)
                        if len(consumed) == count:
                            break
                    await inbox.aclose(failed=failed)
            elapsed = time.perf_counter() - started
            result["elapsed_s"] = round(elapsed, 2)
            result["baseline_rss_mib"] = round(baseline / 2**20, 1)
            result["peak_rss_mib"] = round(_status("VmHWM") / 2**20, 1)
            result["growth_mib"] = round((_status("VmHWM") - baseline) / 2**20, 1)
            result["most_queued"] = most["queued"]
            result["most_queued_memory_kib"] = round(most["memory"] / 1024, 1)
            result["acknowledged"] = len(acknowledged)
            result["consumed"] = len(consumed)
            if args.mode == "raise":
                on_disk: list[str] = []
                async with ae.inbox(spool) as again:
                    for _ in range(again.queued):
                        on_disk.append((await again.__anext__()).sop_instance_uid)
                result["on_disk_after"] = len(on_disk)
                lost = acknowledged - set(consumed) - set(on_disk)
                result["lost"] = len(lost)
            elif args.mode != "handler":
                result["lost"] = count - len(consumed)

    anyio.run(main, backend=args.backend)
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--size", type=int, default=500_000)
    parser.add_argument("--sleep", type=float, default=0.01)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--backend", default="asyncio", choices=("asyncio", "trio"))
    parser.add_argument("--modes", default="inbox,raise,verdict,handler")
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "asyncdicom-bench-inbox"
    )
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print("RESULT" + json.dumps(child(args)))
        return
    from harness.peers import require_dcmtk

    require_dcmtk(("storescu",))
    source = files(args.cache, args.count, args.size)
    rows: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        for mode in args.modes.split(","):
            done = subprocess.run(
                [sys.executable, __file__, "--mode", mode, "--source", str(source),
                 "--sleep", str(args.sleep), "--backend", args.backend],
                capture_output=True, text=True, check=False,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )  # fmt: skip
            line = [x for x in done.stdout.splitlines() if x.startswith("RESULT")]
            if not line:
                sys.exit(f"{mode} failed:\n{done.stdout}\n{done.stderr}")
            row = json.loads(line[0][len("RESULT") :])
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    meta = {
        "python": platform.python_version(),
        "backend": args.backend,
        "load": os.getloadavg(),
        "count": args.count,
        "size": args.size,
        "sleep": args.sleep,
    }
    (out / "inbox.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
