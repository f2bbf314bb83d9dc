"""The router's ingest rate against ``asyncdicom storescp`` receiving the same load, and the
issue's end-to-end check: every instance at both destinations, with a ``kill -9`` optional.

Run: ``python tests/benchmarks/bench_router.py [--instances 2000] [--senders 4] [--rounds 3]
[--kill]``

Load: ``--instances`` small synthetic CT files (``--size`` bytes of pixel data, default 2 000)
dealt out to ``--senders`` DCMTK ``storescu`` processes started together (one association
each, ``TCP_NODELAY=1``).  The rate is the instances / the time from the first sender's start
to the last one's exit, i.e. until every instance was acknowledged.

Each round runs, one after the other (interleaved, so that all see the same machine load):

* ``storescp``: ``python -m asyncdicom storescp --output-dir`` receives the load;
* ``router, destinations down``: the router receives it while both its destinations are down
  (the queue fills, nothing is forwarded): the cost of the durable queue alone;
* ``router``: ``python -m asyncdicom router`` receives the same load and forwards it to two
  destinations: DCMTK ``storescp`` (up from the start) and ``python -m asyncdicom storescp``,
  which is started only once half of the instances are queued for it (down for the first
  half).  The round then waits until both destinations have every instance (the drain time is
  reported too).  With ``--kill`` the router is killed (SIGKILL) once half of the instances
  are acknowledged, restarted on the same queue, and the senders send again what they have no
  Success for (DCMTK ``storescu -v`` says which); duplicates at the destinations are counted.

The ratios reported are router rate / storescp rate, best round of each.  Results: a table on
stdout and ``bench-results/router.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from apps import ROOT, start_app, stop_app
from harness.peers import DcmtkStoreSCP, dcmtk_env, require_dcmtk, storescu_command

from asyncdicom.storage.synthetic import write_ct_files


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(args: list[str], cwd: Path) -> tuple[subprocess.Popen[bytes], int]:
    """``python -m asyncdicom ARGS`` from this tree and the port it says it listens on."""
    app = start_app(args, cwd=cwd, timeout=30)
    return app.proc, app.port


def acknowledged(log: str) -> set[str]:
    done, current = set(), None
    for line in log.splitlines():
        if line.startswith("I: Sending file: "):
            current = line.removeprefix("I: Sending file: ").strip()
        elif line.startswith("I: Received Store Response (Success)") and current:
            done.add(current)
            current = None
    return done


def send(port: int, batches: list[list[Path]]) -> tuple[float, set[str]]:
    """Run the senders together; (seconds until the last one exits, files acknowledged)."""
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            storescu_command(
                "127.0.0.1", port, batch, called_aet="ROUTER", timeout=600, extra_args=["-v"]
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dcmtk_env(True),
        )
        for batch in batches
        if batch
    ]
    acked: set[str] = set()
    for proc in procs:
        out, _ = proc.communicate()
        acked |= acknowledged(out.decode(errors="replace"))
    return time.perf_counter() - started, acked


def count(folder: Path, pattern: str = "*") -> int:
    return sum(1 for p in folder.glob(pattern) if p.is_file()) if folder.is_dir() else 0


def stop(proc: subprocess.Popen[bytes]) -> None:
    stop_app(proc, sig=signal.SIGTERM, timeout=30)


def round_storescp(work: Path, batches: list[list[Path]], backend: str) -> dict[str, Any]:
    out = work / "storescp-out"
    proc, port = start(
        ["storescp", "--port", "0", "--host", "127.0.0.1", "--output-dir", str(out),
         "--backend", backend],
        work,
    )  # fmt: skip
    try:
        seconds, acked = send(port, batches)
    finally:
        stop(proc)
    total = sum(len(b) for b in batches)
    assert len(acked) == total and count(out) == total, (len(acked), count(out))
    shutil.rmtree(out)
    return {"seconds": seconds, "rate": total / seconds}


def round_router_ingest(work: Path, batches: list[list[Path]], backend: str) -> dict[str, Any]:
    """The router receiving the load with both destinations down: what durability costs
    (the queue fills; nothing is forwarded)."""
    total = sum(len(b) for b in batches)
    queue = work / "queue-ingest"
    shutil.rmtree(queue, ignore_errors=True)
    proc, port = start(
        ["router", "--port", "0", "--host", "127.0.0.1", "--queue", str(queue),
         "--forward", f"DOWN1@127.0.0.1:{free_port()}",
         "--forward", f"DOWN2@127.0.0.1:{free_port()}",
         "--retry-delay", "600", "--backend", backend],
        work,
    )  # fmt: skip
    try:
        seconds, acked = send(port, batches)
    finally:
        stop(proc)
    assert len(acked) == total and count(queue / "instances") == total
    shutil.rmtree(queue)
    return {"seconds": seconds, "rate": total / seconds}


def round_router(work: Path, batches: list[list[Path]], backend: str, kill: bool) -> dict[str, Any]:
    total = sum(len(b) for b in batches)
    files = {str(f) for b in batches for f in b}
    queue, d1, d2 = work / "queue", work / "dest-dcmtk", work / "dest-ours"
    for folder in (queue, d1, d2):
        shutil.rmtree(folder, ignore_errors=True)
    d2_port = free_port()
    with DcmtkStoreSCP(output_dir=d1, accept_all_transfer_syntaxes=False) as scp:
        args = [
            "router", "--port", "0", "--host", "127.0.0.1", "--queue", str(queue),
            "--forward", f"STORESCP@127.0.0.1:{scp.port}", "--forward", f"OURS@127.0.0.1:{d2_port}",
            "--retry-delay", "0.1", "--retry-delay-max", "1", "--retry-max", "1000000",
            "--backend", backend,
        ]  # fmt: skip
        router, port = start(args, work)
        dest2: subprocess.Popen[bytes] | None = None
        started = time.perf_counter()
        d2_key = f"OURS@127.0.0.1%3A{d2_port}"
        result: dict[str, Any] = {}
        stop_watch = threading.Event()

        def watch() -> None:
            # destination 2 comes up once half of the instances are queued for it
            nonlocal dest2
            out = queue / "out" / d2_key
            while not stop_watch.is_set():
                if count(out) >= total // 2:
                    dest2, _ = start(
                        ["storescp", "--port", str(d2_port), "--host", "127.0.0.1",
                         "--aet", "OURS", "--output-dir", str(d2), "--backend", backend],
                        work,
                    )  # fmt: skip
                    result["dest2_up_after"] = time.perf_counter() - started
                    return
                time.sleep(0.02)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            if kill:
                killer = threading.Thread(
                    target=lambda: (
                        _wait(lambda: count(queue / "out" / d2_key) + count(d2) >= total // 2),
                        router.kill(),
                    )
                )
                killer.start()
                seconds, acked = send(port, batches)
                killer.join()
                router.wait()
                result["acknowledged_before_kill"] = len(acked)
                router, port = start(args, work)
                rest = [[f for f in b if str(f) not in acked] for b in batches]
                more, acked2 = send(port, rest)
                seconds += more
                acked |= acked2
            else:
                seconds, acked = send(port, batches)
            assert acked == files, f"{len(files - acked)} not acknowledged"
            result["seconds"] = seconds
            result["rate"] = total / seconds
            watcher.join()
            uids = {Path(f).stem for f in files}
            _wait(
                lambda: (
                    {p.name.removeprefix("CT.") for p in d1.glob("CT.*")} >= uids
                    and {p.stem.split("_")[0] for p in d2.glob("*.dcm")} >= uids
                ),
                timeout=600,
            )
            result["drained_after"] = time.perf_counter() - started
            result["duplicates_dcmtk"] = scp.log_text().count("already exists")
            result["duplicates_ours"] = count(d2, "*_*.dcm")
        finally:
            stop_watch.set()
            watcher.join()
            stop(router)
            if dest2 is not None:
                stop(dest2)
    return result


def _wait(condition: Any, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--size", type=int, default=2000, help="pixel data bytes per instance")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kill", action="store_true", help="kill -9 the router mid-run")
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    options = parser.parse_args()
    require_dcmtk()
    work = Path(tempfile.mkdtemp(prefix="bench-router-"))
    try:
        files = write_ct_files(work / "src", options.instances, options.size, seed=1)
        n = options.senders
        batches = [files[i::n] for i in range(n)]
        rows: list[dict[str, Any]] = []
        for r in range(options.rounds):
            a = round_storescp(work, batches, options.backend)
            i = round_router_ingest(work, batches, options.backend)
            b = round_router(work, batches, options.backend, options.kill)
            rows.append({"round": r + 1, "storescp": a, "router_ingest": i, "router": b})
            print(
                f"round {r + 1}: storescp {a['rate']:.0f}/s, router with the destinations down "
                f"{i['rate']:.0f}/s (ratio {i['rate'] / a['rate']:.2f}), router forwarding "
                f"{b['rate']:.0f}/s (ratio {b['rate'] / a['rate']:.2f}); both destinations "
                "complete after "
                f"{b['drained_after']:.1f} s; duplicates {b['duplicates_dcmtk']}/"
                f"{b['duplicates_ours']}"
                + (f"; killed after {b['acknowledged_before_kill']} acks" if options.kill else "")
            )
        best_a = max(row["storescp"]["rate"] for row in rows)
        best_i = max(row["router_ingest"]["rate"] for row in rows)
        best_b = max(row["router"]["rate"] for row in rows)
        print(
            f"best: storescp {best_a:.0f}/s; router, destinations down {best_i:.0f}/s "
            f"(ratio {best_i / best_a:.2f}); router forwarding {best_b:.0f}/s "
            f"(ratio {best_b / best_a:.2f})"
        )
        out = ROOT / "bench-results" / "router.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(
            json.dumps(
                {
                    "options": vars(options),
                    "rounds": rows,
                    "best_ratio": best_b / best_a,
                    "best_ratio_destinations_down": best_i / best_a,
                    "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout,
                    "machine": platform.platform(),
                },
                indent=1,
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
