"""The archive index on SQLite vs PostgreSQL: ingest rate and C-FIND latency, interleaved.

Run (from the repository root, with the project's venv and ``asyncdicom[postgresql]``)::

    python tests/benchmarks/bench_index.py --shape 125x4x2x20 --output bench-results/index.json
    # 100 000 instances:
    python tests/benchmarks/bench_index.py --shape 125x4x2x100

What is timed is the index alone, through its API, in this process (no network, no files):

* **ingest**: the headers of ``--shape`` (``qr_data.py``'s data set: 125 x 4 x 2 x 20 = 20 000
  instances by default, built in memory without pixel data) added in batches of 512 with
  ``add_many``, as the archive's index writer commits them, into a new SQLite file and a new
  PostgreSQL database; ``--rounds`` rounds, SQLite and PostgreSQL alternating, instances per
  second, best and median;
* **C-FIND**: on the last round's indexes, each query run ``--repeat`` times, the back ends
  alternating query by query, the time to get every response encoded in Explicit VR Little
  Endian (``find_encoded``, what qrscp's C-FIND does), milliseconds, best and median.  Queries
  (Study Root): a Patient ID at STUDY level, a Study Date range (about a tenth of the studies),
  a Patient Name wildcard (``SMI*``: one patient in ten), and every instance of one series at
  IMAGE level; the number of matches is checked against the data set's manifest.

PostgreSQL is a private cluster of the Debian server (tests/harness/postgres.py: no fsync, so
the figures are the index's own cost, not the disk's; SQLite runs with its usual settings, WAL
and synchronous=NORMAL) unless ``--postgresql-url`` names a server to use (an empty database
per round is created in it with ``CREATE DATABASE``).  The machine's load (``os.getloadavg``)
is recorded before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pydicom.dataset import Dataset
from qr_data import Patient, Shape, build_manifest, index_headers

from asyncdicom.protocol.uids import EXPLICIT_VR_LITTLE_ENDIAN
from asyncdicom.qr import Index, PostgreSQLIndex, SQLiteIndex, parse_query

BATCH = 512


def parse_shape(text: str) -> Shape:
    parts = text.lower().split("x")
    if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError("a shape is PATIENTSxSTUDIESxSERIESxINSTANCES")
    return Shape(*(int(p) for p in parts))


def ingest(index: Index, items: list[tuple[Dataset, str]]) -> float:
    """Instances per second."""
    start = time.perf_counter()
    for n in range(0, len(items), BATCH):
        index.add_many(items[n : n + BATCH])
    return len(items) / (time.perf_counter() - start)


def queries(patients: list[Patient]) -> dict[str, tuple[Dataset, int]]:
    """name -> (identifier, expected number of responses), from the manifest."""
    studies = [study for patient in patients for study in patient.studies]
    dates = sorted(study.date for study in studies)
    span = max(1, len(dates) // 10)  # about a tenth of the studies
    low, high = dates[len(dates) // 2], dates[len(dates) // 2 + span - 1]

    def ident(level: str, **keys: str) -> Dataset:
        ds = Dataset()
        ds.QueryRetrieveLevel = level
        ds.StudyInstanceUID = ""
        for keyword, value in keys.items():
            setattr(ds, keyword, value)
        return ds

    first = patients[len(patients) // 2]
    series = first.studies[0].series[0]
    image = ident("IMAGE", SOPInstanceUID="", InstanceNumber="")
    image.StudyInstanceUID = first.studies[0].uid
    image.SeriesInstanceUID = series.uid
    return {
        "Patient ID": (
            ident("STUDY", PatientID=first.patient_id, StudyDate=""),
            len(first.studies),
        ),
        "Study Date range": (
            ident("STUDY", StudyDate=f"{low}-{high}", PatientID=""),
            sum(low <= s.date <= high for s in studies),
        ),
        "Patient Name SMI*": (
            ident("STUDY", PatientName="SMI*", PatientID=""),
            sum(len(p.studies) for p in patients if p.name.startswith("SMI")),
        ),
        "IMAGE level, one series": (image, series.instances),
    }


def find_ms(index: Index, identifier: Dataset) -> tuple[float, int]:
    start = time.perf_counter()
    query = parse_query(identifier, "study")
    n = sum(1 for _ in index.find_encoded(query, EXPLICIT_VR_LITTLE_ENDIAN))
    return (time.perf_counter() - start) * 1000, n


def summary(values: list[float]) -> dict[str, float]:
    return {"best": max(values), "median": statistics.median(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=parse_shape, default=Shape(125, 4, 2, 20))
    parser.add_argument("--rounds", type=int, default=2, help="ingest rounds per back end")
    parser.add_argument("--repeat", type=int, default=15, help="runs of each query")
    parser.add_argument("--postgresql-url", default=None, help="a server to use (admin URL)")
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()

    import psycopg

    patients = build_manifest(args.shape)
    items = list(index_headers(patients))
    print(f"{len(items)} instances ({args.shape}); load {os.getloadavg()}", flush=True)
    result: dict[str, Any] = {
        "instances": len(items),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "load_before": os.getloadavg(),
    }
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        if args.postgresql_url:
            admin = args.postgresql_url
        else:
            from harness.postgres import running_cluster

            admin = stack.enter_context(running_cluster()).url()
        counter = iter(range(1_000_000))

        def new_pg() -> Index:
            name = f"bench_index_{os.getpid()}_{next(counter)}"
            with psycopg.connect(admin, autocommit=True) as con:
                con.execute(f"DROP DATABASE IF EXISTS {name}")
                con.execute(f"CREATE DATABASE {name}")
            return PostgreSQLIndex(admin.rsplit("/", 1)[0] + "/" + name, pool_size=2)

        def new_sqlite() -> Index:
            return SQLiteIndex(str(tmp / f"index-{next(counter)}.sqlite"))

        makers: dict[str, Callable[[], Index]] = {"sqlite": new_sqlite, "postgresql": new_pg}
        rates: dict[str, list[float]] = {name: [] for name in makers}
        last: dict[str, Index] = {}
        for round_ in range(args.rounds):
            for name, make in makers.items():
                if name in last:
                    last.pop(name).close()
                index = make()
                stack.callback(index.close)
                rates[name].append(ingest(index, items))
                assert index.count() == len(items)
                last[name] = index
                print(f"round {round_ + 1}: {name} {rates[name][-1]:.0f} instances/s", flush=True)
        result["ingest_instances_per_s"] = {name: summary(r) for name, r in rates.items()}
        timings: dict[str, dict[str, list[float]]] = {}
        for qname, (identifier, expected) in queries(patients).items():
            timings[qname] = {name: [] for name in last}
            for _ in range(args.repeat):
                for name, index in last.items():
                    ms, n = find_ms(index, identifier)
                    if n != expected:
                        print(f"{name}: {qname} gave {n} responses, expected {expected}")
                        return 1
                    timings[qname][name].append(ms)
        result["cfind_ms"] = {
            q: {name: {"best": min(v), "median": statistics.median(v)} for name, v in t.items()}
            for q, t in timings.items()
        }
    result["load_after"] = os.getloadavg()
    print(json.dumps(result, indent=2))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
