"""The measurements ``asyncdicom bench`` must show (issue: load-testing node).

Run on a quiet machine: ``python tests/benchmarks/bench_loadgen.py [--tiny] [--only NAME ...]``
(``--tiny``: seconds-long runs with few associations, to check the script itself works).

Measurements (names for ``--only``):

* ``overhead``: C-ECHO on one association against DCMTK ``storescp``, closed loop: ``asyncdicom
  bench`` vs a minimal generator (``raw-echo`` below, its own process) that sends one
  pre-encoded P-DATA-TF PDU and reads the response PDU, nothing else.  Target: bench >= 0.5x.
* ``many``: 200 associations for 5 s against our ``storescp``: zero errors.
* ``rate``: ``--rate 300 --duration 5`` against our ``storescp``: 1 500 operations +- 10 %.
* ``processes``: ``--processes 2`` vs ``--processes 1`` (8 associations, closed loop, echo)
  against DCMTK ``storescp --fork``: more echoes per second with 2.
* ``compare``: echo at 1, 10, 100 and 1 000 associations against our ``storescp``, the
  pynetdicom SCP and DCMTK ``storescp --fork``: ops/s and p99 latency, and a latency-percentile
  chart of each run (``--plot``).
* ``newuids``: the cost of ``--new-uids`` per instance (patching the encoded bytes) against
  re-encoding the data set with pydicom, for a 0.5 MB CT instance (in this process).

Each bench run is ``python -m asyncdicom bench ... --json``: the generator is always the same
command, its own process.  Results: a table on stdout and ``bench-results/loadgen.json`` (the
charts next to it).  The full run takes about 5 minutes (``compare`` most of it: 12 runs of
5 s plus setting up 1 000 associations three times); ``--tiny`` about 1 minute.
All traffic goes to 127.0.0.1; servers are stopped and temporary folders removed.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_network import OurSCP, _raise_nofile
from harness.peers import LOCALHOST, DcmtkStoreSCP, PynetdicomSCP

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PY = sys.executable
OUT = ROOT / "bench-results"
NAMES = ("overhead", "many", "rate", "processes", "compare", "newuids")


# --------------------------------------------------------------------------- generators


def bench(port: int, *args: str, called_aet: str, timeout: float) -> dict[str, Any]:
    """``asyncdicom bench`` against 127.0.0.1:port; its --json summary (``{}`` on failure)
    with ``exit`` (its status) and ``wall_s`` added."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        cmd = [PY, "-m", "asyncdicom", "bench", LOCALHOST, str(port), "--called-aet", called_aet]
        cmd += [*args, "--json", os.fspath(out)]
        start = time.perf_counter()
        try:
            done = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False
            )
            code: int | None = done.returncode
            stderr = done.stderr
        except subprocess.TimeoutExpired:
            code, stderr = None, "timed out"
        summary: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    summary["exit"] = code
    summary["wall_s"] = round(time.perf_counter() - start, 2)
    if code != 0:
        summary["stderr"] = stderr.strip().splitlines()[-3:]
    return summary


def _read_pdu(sock: socket.socket) -> bytes:
    head = b""
    while len(head) < 6:
        chunk = sock.recv(6 - len(head))
        if not chunk:
            raise ConnectionError("peer closed")
        head += chunk
    length = int.from_bytes(head[2:6], "big")
    body = bytearray()
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            raise ConnectionError("peer closed")
        body += chunk
    return head + bytes(body)


def raw_echo(port: int, seconds: float) -> dict[str, Any]:
    """The minimal generator: one association, one pre-encoded C-ECHO-RQ PDU sent again and
    again, each response PDU read (no decoding) before the next is sent."""
    from asyncdicom.config import AEConfig
    from asyncdicom.protocol import encode_pdu, messages, uids
    from asyncdicom.protocol.dimse import command_pdus
    from asyncdicom.protocol.negotiation import ContextRequest, RequestorConfig, build_associate_rq

    rq = build_associate_rq(
        RequestorConfig(
            calling_ae_title="RAWGEN",
            called_ae_title="STORESCP",
            implementation_class_uid=AEConfig().implementation_class_uid,
        ),
        [ContextRequest(uids.VERIFICATION, (uids.IMPLICIT_VR_LITTLE_ENDIAN,))],
    )
    echo = b"".join(
        command_pdus(
            1,
            messages.CEchoRQ(message_id=1, affected_sop_class_uid=uids.VERIFICATION),
            16384,
        )
    )
    with socket.create_connection((LOCALHOST, port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(encode_pdu(rq))
        if _read_pdu(sock)[0] != 0x02:
            raise RuntimeError("association not accepted")
        count = 0
        start = time.perf_counter()
        stop = start + seconds
        while time.perf_counter() < stop:
            sock.sendall(echo)
            _read_pdu(sock)
            count += 1
        elapsed = time.perf_counter() - start
        sock.sendall(bytes([0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0]))  # A-RELEASE-RQ
        _read_pdu(sock)
    return {"echoes": count, "elapsed_s": elapsed, "ops_per_s": count / elapsed}


def run_raw_echo(port: int, seconds: float) -> dict[str, Any]:
    done = subprocess.run(
        [PY, os.fspath(Path(__file__)), "raw-echo", str(port), str(seconds)],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        cwd=ROOT,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    return json.loads(lines[-1]) if done.returncode == 0 and lines else {"error": done.stderr}


# --------------------------------------------------------------------------- measurements


def m_overhead(cfg: argparse.Namespace) -> dict[str, Any]:
    best_bench = best_raw = 0.0
    with DcmtkStoreSCP(max_pdu=131072) as scp:
        for _ in range(cfg.repeat):
            r = bench(
                scp.port,
                "--duration",
                str(cfg.seconds),
                called_aet="STORESCP",
                timeout=cfg.seconds + 60,
            )
            best_bench = max(best_bench, r.get("ops_per_s", 0.0))
            raw = run_raw_echo(scp.port, cfg.seconds)
            best_raw = max(best_raw, raw.get("ops_per_s", 0.0))
    ratio = best_bench / best_raw if best_raw else None
    return {
        "bench_ops_per_s": best_bench,
        "raw_ops_per_s": best_raw,
        "ratio": ratio,
        "target": ">= 0.5",
        "met": ratio is not None and ratio >= 0.5,
    }


def m_many(cfg: argparse.Namespace) -> dict[str, Any]:
    n = cfg.many
    with OurSCP(None, max_associations=n + 10, log_dir=cfg.log_dir) as scp:
        r = bench(
            scp.port,
            "--associations",
            str(n),
            "--duration",
            str(cfg.seconds),
            called_aet="STORESCP",
            timeout=cfg.seconds + 120,
        )
    return {"associations": n, **_brief(r), "met": r.get("exit") == 0 and r.get("errors") == 0}


def m_rate(cfg: argparse.Namespace) -> dict[str, Any]:
    rate = cfg.rate
    with OurSCP(None, log_dir=cfg.log_dir) as scp:
        r = bench(
            scp.port,
            "--rate",
            str(rate),
            "--duration",
            str(cfg.seconds),
            "--associations",
            "4",
            called_aet="STORESCP",
            timeout=cfg.seconds + 60,
        )
    expected = rate * cfg.seconds
    ops = r.get("operations", 0)
    return {
        "expected": expected,
        **_brief(r),
        "met": abs(ops - expected) <= 0.1 * expected and r.get("errors") == 0,
    }


def m_processes(cfg: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with DcmtkStoreSCP(max_pdu=131072, extra_args=["--fork"]) as scp:
        for p in (1, 2):
            best: dict[str, Any] = {}
            for _ in range(cfg.repeat):
                r = bench(
                    scp.port,
                    "--associations",
                    "8",
                    "--processes",
                    str(p),
                    "--duration",
                    str(cfg.seconds),
                    called_aet="STORESCP",
                    timeout=cfg.seconds + 60,
                )
                if r.get("ops_per_s", 0) > best.get("ops_per_s", -1):
                    best = r
            out[f"processes_{p}"] = _brief(best)
    one = out["processes_1"].get("ops_per_s", 0)
    two = out["processes_2"].get("ops_per_s", 0)
    out["met"] = two > one
    return out


def m_compare(cfg: argparse.Namespace) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    servers: dict[str, Any] = {
        "asyncdicom storescp": lambda n: OurSCP(None, max_associations=n + 10, log_dir=cfg.log_dir),
        "pynetdicom SCP": lambda n: PynetdicomSCP(max_pdu=131072, max_associations=n + 10),
        "DCMTK storescp --fork": lambda n: DcmtkStoreSCP(max_pdu=131072, extra_args=["--fork"]),
    }
    for name, make in servers.items():
        for n in cfg.sizes:
            plot = OUT / f"loadgen-{name.split()[0].lower()}-{n}.png"
            try:
                with make(n) as scp:
                    aet = getattr(scp, "aet", "STORESCP")
                    r = bench(
                        scp.port,
                        "--associations",
                        str(n),
                        "--duration",
                        str(cfg.seconds),
                        "--plot",
                        os.fspath(plot),
                        called_aet=aet,
                        timeout=cfg.seconds + 300,
                    )
            except Exception as exc:  # a server that cannot start: reported, the rest goes on
                r = {"error": f"{type(exc).__name__}: {exc}"}
            rows.append({"server": name, "associations": n, **_brief(r), "chart": plot.name})
            print(f"  {name:<24} {n:>5}  {rows[-1]}", flush=True)
    return {"rows": rows}


def m_newuids(cfg: argparse.Namespace) -> dict[str, Any]:
    import pydicom

    from asyncdicom.loadtest.newuids import UIDSource, locate_uids, patch_uids
    from asyncdicom.storage.codec import encode_dataset
    from asyncdicom.storage.reader import read_part10_for_send
    from asyncdicom.storage.synthetic import write_ct_files

    with tempfile.TemporaryDirectory() as tmp:
        path = write_ct_files(tmp, 1, 512 * 1024)[0]
        source = read_part10_for_send(path, read_limit=1 << 30)
        ds = pydicom.dcmread(path)
    assert source.data is not None
    data, ts = source.data, source.transfer_syntax_uid
    where = locate_uids(data, ts)
    uids = UIDSource()
    n = 200 if cfg.tiny else 2000
    start = time.perf_counter()
    for i in range(n):
        patch_uids(data, where, uids.new_uids(where, 0, i))
    patched_us = (time.perf_counter() - start) / n * 1e6
    start = time.perf_counter()
    for i in range(n // 10):
        ds.SOPInstanceUID = f"1.2.3.{i}"
        encode_dataset(ds, ts)
    reencode_us = (time.perf_counter() - start) / (n // 10) * 1e6
    return {
        "instance_bytes": len(data),
        "patch_us": round(patched_us, 1),
        "pydicom_reencode_us": round(reencode_us, 1),
    }


def _brief(r: dict[str, Any]) -> dict[str, Any]:
    keys = ("operations", "errors", "errors_by_kind", "ops_per_s", "exit", "error", "stderr")
    out = {k: r[k] for k in keys if k in r}
    if "latency_ms" in r:
        out["p99_ms"] = r["latency_ms"]["p99"]
        out["setup_p99_ms"] = r["association_setup_ms"]["p99"]
    return out


MEASUREMENTS = {
    "overhead": m_overhead,
    "many": m_many,
    "rate": m_rate,
    "processes": m_processes,
    "compare": m_compare,
    "newuids": m_newuids,
}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "raw-echo":
        print(json.dumps(raw_echo(int(sys.argv[2]), float(sys.argv[3]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="short runs, few associations")
    parser.add_argument("--only", nargs="+", choices=NAMES, default=list(NAMES))
    parser.add_argument(
        "--repeat", type=int, default=3, help="best of R runs (overhead, processes)"
    )
    cfg = parser.parse_args()
    _raise_nofile()
    cfg.seconds = 0.5 if cfg.tiny else 5.0
    cfg.many = 10 if cfg.tiny else 200
    cfg.rate = 100 if cfg.tiny else 300
    cfg.sizes = (1, 4) if cfg.tiny else (1, 10, 100, 1000)
    if cfg.tiny:
        cfg.repeat = 1
    OUT.mkdir(exist_ok=True)
    results: dict[str, Any] = {"tiny": cfg.tiny}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as logs:
        cfg.log_dir = Path(logs)
        for name in cfg.only:
            t0 = time.perf_counter()
            print(f"{name} ...", flush=True)
            results[name] = MEASUREMENTS[name](cfg)
            results[name]["seconds"] = round(time.perf_counter() - t0, 1)
            print(f"{name}: {json.dumps(results[name])}", flush=True)
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    (OUT / "loadgen.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"total {results['total_seconds']} s; results in {OUT / 'loadgen.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
