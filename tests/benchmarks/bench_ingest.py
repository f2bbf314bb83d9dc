"""qrscp ingest: instances stored and indexed per second from concurrent senders.

Run: ``python tests/benchmarks/bench_ingest.py [--senders 4] [--preload 0 100000] [--repeat 3]
[--workers 1 2]``

The data set is ``bench_qr``'s (:mod:`qr_data`): small synthetic CT and MR instances (64 x 64,
16 bit, about 9 KiB as files), ``--patients`` patients x 2 studies x 2 series x 20 instances
(default 40 patients: 3 200 instances), cached in ``--cache``.  The patients are dealt out to
``--senders`` DCMTK ``storescu`` processes (``-R +sd +r``, one association each, with
``TCP_NODELAY=1``), started together against one ``python -m asyncdicom qrscp`` on a fresh
storage folder; the rate is the instances sent / the time from the first sender's start to the
last one's exit.  Afterwards the index must list every instance (counted in its SQLite file).

``--preload N`` fills the new archive's index with N other instances first, through the index
API (:meth:`asyncdicom.qr.SQLiteIndex.add_many`, headers of the same shape with other UIDs;
their files are not written, so qrscp reports them missing at start), to show the rate with
that many stored.  The preloaded index is built once per N and copied for each run.
``--compare-tree DIR`` runs qrscp from another source tree as well (before/after pairs in the
same rounds).  ``--sender ours`` uses ``asyncdicom storescu`` instead of DCMTK's.

Results: a table on stdout and ``bench-results/ingest.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import shutil
import sqlite3
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
from harness.peers import LOCALHOST, require_dcmtk, storescu_command
from qr_data import Shape, ensure_dataset

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PY = sys.executable


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "asyncdicom-bench" / "qr"


@contextlib.contextmanager
def qrscp(storage: Path, tree: Path, backend: str, workers: int = 1) -> Iterator[tuple[int, int]]:
    """``python -m asyncdicom qrscp`` from ``tree`` on ``storage``; yields its port and pid."""
    args = ["qrscp", "--storage", str(storage), "--host", LOCALHOST]
    args += ["--port", "0", "--max-pdu", "131072", "--backend", backend]
    if workers != 1:
        args += ["--workers", str(workers)]
    with running_app(args, tree=tree, timeout=120, stop_timeout=60) as app:
        yield app.port, app.pid


def preload(db: Path, count: int, tree: Path) -> None:
    """An index of ``count`` instances (125-instance studies of 20-instance series) built
    through the index API of ``tree``."""
    code = f"""
import sys
sys.path.insert(0, {str(tree)!r})
from pydicom.dataset import Dataset
from asyncdicom.qr import SQLiteIndex
sys.path.insert(0, {str(HERE)!r})
from qr_data import uid_for
index = SQLiteIndex({str(db)!r})
batch = []
for n in range({count}):
    p, rest = divmod(n, 80)
    s, rest = divmod(rest, 40)
    se, i = divmod(rest, 20)
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = uid_for("pre-instance", n)
    ds.StudyInstanceUID = uid_for("pre-study", p, s)
    ds.SeriesInstanceUID = uid_for("pre-series", p, s, se)
    ds.PatientID = f"PRE{{p:06d}}"
    ds.PatientName = f"PRELOADED^P{{p:06d}}"
    ds.StudyDate = f"20{{10 + p % 15:02d}}{{1 + p % 12:02d}}{{1 + p % 28:02d}}"
    ds.StudyTime = "120000"
    ds.AccessionNumber = f"PACC{{p:06d}}{{s}}"
    ds.Modality = "CT"
    ds.SeriesNumber = se + 1
    ds.InstanceNumber = i + 1
    batch.append((ds, f"/nonexistent/pre/{{n}}.dcm"))
    if len(batch) == 1000:
        index.add_many(batch)
        batch = []
if batch:
    index.add_many(batch)
index.close()
"""
    subprocess.run([PY, "-c", code], check=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and its living children (the workers of
    ``--workers N``), from Linux /proc."""
    import psutil

    total = 0.0
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def count_rows(db: Path) -> int:
    con = sqlite3.connect(db)
    try:
        (n,) = con.execute("SELECT count(*) FROM instance").fetchone()
    finally:
        con.close()
    return int(n)


def sender_command(kind: str, port: int, folders: list[Path]) -> list[str]:
    if kind == "dcmtk":
        return storescu_command(
            LOCALHOST, port, folders, called_aet="QRSCP", required_only=True, recurse=True,
            timeout=600,
        )  # fmt: skip
    return [
        PY, "-m", "asyncdicom", "storescu", "--called-aet", "QRSCP", LOCALHOST, str(port),
        *map(str, folders),
    ]  # fmt: skip


def run_senders(kind: str, port: int, groups: list[list[Path]]) -> float:
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            sender_command(kind, port, folders),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for folders in groups
    ]
    failures = []
    for proc in procs:
        _out, err = proc.communicate(timeout=900)
        if proc.returncode != 0:
            failures.append(err.decode(errors="replace")[-400:])
    wall = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"a sender failed: {failures[0]}")
    return wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--patients", type=int, default=40)
    parser.add_argument("--preload", type=int, nargs="+", default=[0, 100_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sender", choices=("dcmtk", "ours"), default="dcmtk")
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument("--compare-tree", type=Path)
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1], help="qrscp --workers values to run"
    )
    parser.add_argument("--cache", type=Path, default=default_cache())
    parser.add_argument("--output", type=Path, default=ROOT / "bench-results" / "ingest.json")
    args = parser.parse_args(argv)
    if args.senders < 1 or args.patients < args.senders:
        # each sender sends whole patients: a sender without one would fail with nothing to send
        parser.error("--patients must be at least --senders, and --senders at least 1")
    if args.sender == "dcmtk":
        require_dcmtk(["storescu"])
    shape = Shape(args.patients, 2, 2, 20)
    data = args.cache / f"ingest-{shape.label}"
    ensure_dataset(data, shape)
    folders = sorted(p for p in data.iterdir() if p.is_dir())
    groups = [folders[k :: args.senders] for k in range(args.senders)]
    total = shape.total_instances
    trees: list[tuple[str, Path, int]] = [
        ("" if w == 1 else f" --workers {w}", ROOT, w) for w in args.workers
    ]
    if args.compare_tree is not None:
        tree = args.compare_tree.resolve()
        trees += [
            (f"@{tree.name}" + ("" if w == 1 else f" --workers {w}"), tree, w) for w in args.workers
        ]
    runs: dict[str, list[float | None]] = {}
    #: server CPU (user + system) per instance, ms: less sensitive to other load than rates
    cpu_runs: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp_name:
        tmp = Path(tmp_name)
        preloaded: dict[int, Path] = {}
        serial = itertools.count()
        for n in args.preload:
            if n:
                db = tmp / f"preload-{n}.sqlite"
                started = time.perf_counter()
                preload(db, n, ROOT)
                print(f"preloaded {n:,} instances in {time.perf_counter() - started:.0f} s")
                preloaded[n] = db
        for round_no in range(args.repeat):
            for n in args.preload:
                for label, tree, workers in trees:
                    key = f"qrscp{label} at {n:,} stored"
                    storage = tmp / f"archive-{next(serial)}"
                    storage.mkdir()
                    if n:
                        shutil.copy(preloaded[n], storage / "index.sqlite")
                    rate: float | None = None
                    try:
                        with qrscp(storage, tree, args.backend, workers) as (port, pid):
                            cpu = cpu_seconds(pid)
                            wall = run_senders(args.sender, port, groups)
                            cpu = cpu_seconds(pid) - cpu
                        cpu_runs.setdefault(key, []).append(cpu * 1000 / total)
                        rows = count_rows(storage / "index.sqlite")
                        if rows != n + total:
                            print(f"  index lists {rows:,}, expected {n + total:,}")
                        else:
                            rate = total / wall
                    except Exception as exc:
                        print(f"  failed: {exc}")
                    runs.setdefault(key, []).append(rate)
                    shown = "failed" if rate is None else f"{rate:,.0f} instances/s"
                    if key in cpu_runs:
                        shown += f", server CPU {cpu_runs[key][-1]:.2f} ms/instance"
                    print(f"round {round_no + 1}: {key}: {shown}", flush=True)
                    shutil.rmtree(storage, ignore_errors=True)
    print()
    print(f"{total:,} instances from {args.senders} {args.sender} senders, best of {args.repeat}")
    table: dict[str, Any] = {}
    for key, values in runs.items():
        good = [v for v in values if v is not None]
        best = max(good) if good else None
        cpu = min(cpu_runs.get(key) or [float("nan")])
        table[key] = {
            "best_per_s": best,
            "runs_per_s": values,
            "server_cpu_ms_per_instance": cpu_runs.get(key),
        }
        print(
            f"  {key:40} {best or float('nan'):8,.0f} instances/s, "
            f"server CPU {cpu:.2f} ms/instance (least)"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "instances": total,
                "senders": args.senders,
                "sender": args.sender,
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
