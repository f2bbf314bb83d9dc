"""Every core: ``storescp --workers N`` against DCMTK ``storescp --fork``, interleaved in one run.

Usage::

    python tests/benchmarks/bench_workers.py [--workers 2] [--rounds 3] [--assoc-clients 4]
        [--assoc-count 300] [--senders 4] [--files 100] [--size 500000] [--flood 1000]

Three measurements, each alternating ours / DCMTK ``--rounds`` times (best of the rounds):

* ``assoc``: associations per second: ``--assoc-clients`` load-generator processes
  (``loadgen.py assoc-echo``: associate, one C-ECHO, release, sequentially, asyncdicom's AE API;
  the same client for both servers) run at once, ``--assoc-count`` associations each; the rate
  is all associations / the wall time of the slowest.  Servers: ``asyncdicom storescp --ignore
  --workers N`` and ``storescp --fork --ignore``.
* ``store``: C-STORE receive to disk from ``--senders`` DCMTK ``storescu`` processes at once (one
  association each, ``--files`` files of ``--size`` bytes each, ``TCP_NODELAY=1`` in their
  environment); instances/s = all files / the wall time of the slowest sender.  Servers:
  ``asyncdicom storescp --output-dir --workers N`` and ``storescp --fork --output-directory``.
* ``flood``: ``--flood`` associations opened at once (``loadgen.py concurrent``: one C-ECHO and
  one C-STORE each) against ``storescp --workers N``: how many failed (must be 0).

Everything listens on 127.0.0.1.  The machine's load (``/proc/loadavg``) is printed before and
after: on a shared machine the figures are noisy; re-run on an idle one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LOADGEN = HERE / "loadgen.py"
MAX_PDU = "131072"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@contextlib.contextmanager
def server(kind: str, workers: int, out: Path | None, logs: Path) -> Iterator[int]:
    port = free_port()
    log = logs / f"{kind}-{time.monotonic_ns()}.log"
    env = dict(os.environ)
    if kind.startswith("ours"):
        if kind == "ours-1":
            workers = 1
        cmd = [sys.executable, "-m", "asyncdicom", "storescp", "--host", "127.0.0.1"]
        cmd += ["--port", str(port), "--max-pdu", MAX_PDU, "--workers", str(workers)]
        cmd += ["--max-associations", "5000"]
        cmd += ["--ignore"] if out is None else ["--output-dir", str(out)]
        ready = "listening on"
    else:
        cmd = ["storescp", "--fork", "--max-pdu", MAX_PDU]
        cmd += ["--ignore"] if out is None else ["--output-directory", str(out)]
        cmd += [str(port)]
        ready = ""
        # DCMTK leaves Nagle's algorithm on unless told: its best configuration is measured
        env["TCP_NODELAY"] = "1"
    with open(log, "ab") as f:
        proc = subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
    try:
        if ready:
            deadline = time.monotonic() + 60
            while ready not in log.read_text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{kind} did not start: {log.read_text()[-500:]}")
                time.sleep(0.05)
        else:
            wait_port(port)
        yield port
    finally:
        # the whole session: DCMTK's forked children and our workers
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def assoc_round(port: int, clients: int, count: int) -> dict[str, Any]:
    procs = [
        subprocess.Popen(
            [
                *(sys.executable, str(LOADGEN), "assoc-echo", "127.0.0.1", str(port)),
                *("--count", str(count), "--max-seconds", "120"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(clients)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        line = [x for x in out.splitlines() if x.startswith("{")]
        if not line:
            raise RuntimeError(f"loadgen failed: {err[-500:]}")
        results.append(json.loads(line[-1]))
    total = sum(r["associations"] for r in results)
    failed = sum(r["failed"] for r in results)
    wall = max(r["elapsed_s"] for r in results)
    return {"associations": total, "failed": failed, "wall_s": wall, "rate": total / wall}


def store_round(port: int, senders: int, shares: list[list[Path]]) -> dict[str, Any]:
    env = {**os.environ, "TCP_NODELAY": "1"}
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                *("storescu", "--max-pdu", MAX_PDU, "-aec", "STORESCP", "127.0.0.1", str(port)),
                *(str(p) for p in share),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for share in shares[:senders]
    ]
    codes = [p.wait(600) for p in procs]
    wall = time.perf_counter() - start
    files = sum(len(s) for s in shares[:senders])
    return {"instances": files, "exit_codes": codes, "wall_s": wall, "rate": files / wall}


def make_files(folder: Path, count: int, size: int) -> list[Path]:
    from asyncdicom.storage.synthetic import make_ct_instance

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"ct{i:05d}.dcm"
        make_ct_instance(size, patient_id=f"P{i % 7}", seed=i).save_as(
            path, enforce_file_format=True
        )
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--assoc-clients", type=int, default=4)
    parser.add_argument("--assoc-count", type=int, default=300)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--files", type=int, default=100, help="per sender")
    parser.add_argument("--size", type=int, default=500_000)
    parser.add_argument("--flood", type=int, default=1000)
    parser.add_argument("--only", choices=("assoc", "store", "flood"), action="append")
    parser.add_argument(
        "--single", action="store_true", help="also measure our storescp with one process"
    )
    args = parser.parse_args(argv)
    if shutil.which("storescp") is None or shutil.which("storescu") is None:
        print("DCMTK (storescp, storescu) is needed", file=sys.stderr)
        return 2
    only = set(args.only or ("assoc", "store", "flood"))
    report: dict[str, Any] = {"load_before": loadavg(), "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp_text:
        tmp = Path(tmp_text)
        log = tmp
        kinds = ["ours", "dcmtk", *(["ours-1"] if args.single else [])]
        if "assoc" in only:
            rates: dict[str, list[float]] = {k: [] for k in kinds}
            for r in range(args.rounds):
                for kind in kinds if r % 2 == 0 else kinds[::-1]:
                    with server(kind, args.workers, None, log) as port:
                        result = assoc_round(port, args.assoc_clients, args.assoc_count)
                    print(f"assoc {kind}: {result}", flush=True)
                    if result["failed"]:
                        raise RuntimeError(f"{kind}: failed associations {result}")
                    rates[kind].append(result["rate"])
            report["assoc_per_s"] = {k: round(max(v), 1) for k, v in rates.items()}
            report["assoc_all"] = {k: [round(x, 1) for x in v] for k, v in rates.items()}
            report["assoc_ratio"] = round(max(rates["ours"]) / max(rates["dcmtk"]), 2)
        if "store" in only:
            files = make_files(tmp / "data", args.senders * args.files, args.size)
            shares = [files[k :: args.senders] for k in range(args.senders)]
            rates = {k: [] for k in kinds}
            for r in range(args.rounds):
                for kind in kinds if r % 2 == 0 else kinds[::-1]:
                    out = tmp / f"out-{kind}-{r}"
                    out.mkdir()
                    with server(kind, args.workers, out, log) as port:
                        result = store_round(port, args.senders, shares)
                    received = sum(1 for _ in out.rglob("*") if _.is_file())
                    print(f"store {kind}: {result} received={received}", flush=True)
                    if any(result["exit_codes"]) or received != result["instances"]:
                        raise RuntimeError(f"{kind}: {result}, {received} files received")
                    rates[kind].append(result["rate"])
                    shutil.rmtree(out)
            report["store_per_s"] = {k: round(max(v), 1) for k, v in rates.items()}
            report["store_all"] = {k: [round(x, 1) for x in v] for k, v in rates.items()}
            report["store_ratio"] = round(max(rates["ours"]) / max(rates["dcmtk"]), 2)
            report["store_mb_per_s"] = {
                k: round(max(v) * args.size / 1e6, 1) for k, v in rates.items()
            }
        if "flood" in only:
            small = make_files(tmp / "small", 1, 2000)[0]
            with server("ours", args.workers, None, log) as port:
                p = subprocess.run(
                    [
                        *(sys.executable, str(LOADGEN), "concurrent", "127.0.0.1", str(port)),
                        *("--associations", str(args.flood), "--echoes", "1"),
                        *("--store", str(small), "--max-seconds", "300"),
                    ],
                    capture_output=True,
                    text=True,
                    timeout=400,
                )
            line = [x for x in p.stdout.splitlines() if x.startswith("{")]
            flood = json.loads(line[-1]) if line else {"error": p.stderr[-500:]}
            print(f"flood: {flood}", flush=True)
            report["flood"] = {
                k: flood.get(k) for k in ("associations", "succeeded", "failed", "wall_s", "errors")
            }
    report["load_after"] = loadavg()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
