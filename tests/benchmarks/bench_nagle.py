"""A sender with Nagle's algorithm on: DCMTK ``storescu`` with and without ``TCP_NODELAY``.

Run: ``python tests/benchmarks/bench_nagle.py [--files 100] [--size 10000] [--repeat 3]``

DCMTK 3.6.7 leaves Nagle's algorithm on unless ``TCP_NODELAY=1`` is in its environment, as
many modalities do.  Such a sender holds back the small last segment of a PDU (storescu
writes each PDU's header and its body in two writes) until what it sent before is
acknowledged; a receiver that delays its acknowledgements (Linux does, once a connection has
answered a request) makes it wait one delayed-ACK timeout, at least 40 ms, per message.
asyncdicom acknowledges at once while a PDU or a message is incomplete
(:func:`asyncdicom.transport.quickack`).

One run sends the same ``--files`` synthetic CT instances of about ``--size`` bytes with DCMTK
``storescu +sd -R`` on one association, once with ``TCP_NODELAY`` absent from its environment
(Nagle on) and once with ``TCP_NODELAY=1``, into each receiver, alternating receivers and
senders in every round (best and all of ``--repeat`` rounds are reported):

* ``ours``: ``python -m asyncdicom storescp --ignore`` (asyncio), ``ours-trio`` the same on trio;
* ``qrscp``: ``python -m asyncdicom qrscp`` on a fresh storage folder each run (stores, indexes);
* ``dcmtk``: DCMTK ``storescp --ignore`` (its own ``TCP_NODELAY=1``, as the other benchmarks).

The figure is storescu's process wall time (start-up and association included).
``--compare-tree DIR`` runs our receivers a second time from another source tree (a checkout
of an older commit: its ``asyncdicom`` is found through ``PYTHONPATH``), in the same rounds, for
before/after comparisons; ``--only-nodelay`` and ``--only`` narrow the grid (e.g. 1 000 x 0.5 MB
with ``--only ours --only-nodelay --compare-tree`` measures what the immediate acknowledgements
cost a sender that has Nagle off).  Everything stays on 127.0.0.1; every process has a timeout.
Results: a table on stdout and ``bench-results/nagle.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from apps import running_app
from harness.peers import (
    LOCALHOST,
    DcmtkStoreSCP,
    find_dcmtk_program,
    require_dcmtk,
    storescu_command,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RECEIVERS = ("ours", "ours-trio", "qrscp", "dcmtk")
MAX_PDU = 131072


@contextlib.contextmanager
def our_server(kind: str, tree: Path, tmp: Path) -> Iterator[int]:
    """``python -m asyncdicom storescp|qrscp`` from ``tree`` on a port of its choosing."""
    if kind == "qrscp":
        storage = Path(tempfile.mkdtemp(prefix="qr-", dir=tmp))
        args = ["qrscp", "--storage", str(storage)]
    else:
        storage = None
        args = ["storescp", "--ignore"]
        if kind == "ours-trio":
            args += ["--backend", "trio"]
    args += ["--host", LOCALHOST, "--port", "0", "--max-pdu", str(MAX_PDU)]
    try:
        with running_app(args, tree=tree, cwd=tmp, timeout=30, stop_timeout=20) as app:
            yield app.port
    finally:
        if storage is not None:
            shutil.rmtree(storage, ignore_errors=True)


@contextlib.contextmanager
def receiver(kind: str, tree: Path, tmp: Path) -> Iterator[int]:
    if kind == "dcmtk":
        with DcmtkStoreSCP(max_pdu=MAX_PDU) as scp:
            yield scp.port
    else:
        with our_server(kind, tree, tmp) as port:
            yield port


def send(port: int, data: Path, *, nodelay: bool, timeout: float) -> float | None:
    """storescu's wall time for the folder, or None when it failed."""
    env = dict(os.environ)
    env.pop("TCP_NODELAY", None)
    if nodelay:
        env["TCP_NODELAY"] = "1"
    cmd = storescu_command(LOCALHOST, port, [data], required_only=True, timeout=timeout)
    start = time.perf_counter()
    try:
        done = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return None
    wall = time.perf_counter() - start
    if done.returncode != 0:
        print(f"  storescu failed ({done.returncode}): {done.stderr[-300:]}", flush=True)
        return None
    return wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--size", type=int, default=10000, help="bytes of pixel data per file")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", action="append", choices=RECEIVERS)
    parser.add_argument("--only-nodelay", action="store_true", help="skip the Nagle-on sender")
    parser.add_argument("--compare-tree", type=Path, help="run our receivers from this tree too")
    parser.add_argument("--output", type=Path, default=ROOT / "bench-results" / "nagle.json")
    args = parser.parse_args(argv)
    require_dcmtk(["storescu", "storescp"])
    find_dcmtk_program("storescu")
    from asyncdicom.storage.synthetic import write_ct_files

    kinds = tuple(args.only or RECEIVERS)
    trees: list[tuple[str, Path]] = [("", ROOT)]
    if args.compare_tree is not None:
        trees.append((f"@{args.compare_tree.name}", args.compare_tree.resolve()))
    senders = (True,) if args.only_nodelay else (False, True)
    runs: dict[str, list[float | None]] = {}
    timeout = max(60.0, args.files * 0.2)
    with tempfile.TemporaryDirectory(prefix="bench-nagle-") as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "data"
        write_ct_files(data, args.files, args.size)
        for round_no in range(args.repeat):
            for kind in kinds:
                for label, tree in trees if kind != "dcmtk" else [("", ROOT)]:
                    with receiver(kind, tree, tmp) as port:
                        for nodelay in senders:
                            key = f"{kind}{label} {'TCP_NODELAY=1' if nodelay else 'Nagle on'}"
                            wall = send(port, data, nodelay=nodelay, timeout=timeout)
                            runs.setdefault(key, []).append(wall)
                            shown = "failed" if wall is None else f"{wall:.3f} s"
                            print(f"round {round_no + 1}: {key}: {shown}", flush=True)
    print()
    print(f"{args.files} files x ~{args.size} B, storescu wall time, best of {args.repeat}")
    table: dict[str, Any] = {}
    for key, values in runs.items():
        good = [v for v in values if v is not None]
        best = min(good) if good else None
        table[key] = {"best_s": best, "runs_s": values}
        rate = f"{args.files / best:8.1f} inst/s" if best else ""
        print(f"  {key:40} {best if best is not None else float('nan'):8.3f} s {rate}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "files": args.files,
                "size": args.size,
                "repeat": args.repeat,
                "machine": platform.platform(),
                "load": os.getloadavg(),
                "results": table,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
