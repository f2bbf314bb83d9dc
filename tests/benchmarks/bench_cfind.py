"""C-FIND through DCMTK's findscu: asyncdicom qrscp vs DCMTK dcmqrscp, interleaved.

Run (from the repository root, with the project's venv)::

    python tests/benchmarks/bench_cfind.py --output bench-results/cfind.json

    # before/after in the same run: an earlier revision as a fourth server
    git archive REV | tar -x -C /tmp/before
    python tests/benchmarks/bench_cfind.py --base-tree /tmp/before

Three servers, all on 127.0.0.1 and up at the same time:

* ``dcmqrscp`` holding the small data set (default 125 patients x 4 studies x 2 series x 2
  instances = 2 000 instances, 500 studies), stored through its own C-STORE (it keeps its
  index in its storage folder, filled only by its storage SCP; at most 500 studies per storage
  area, which this shape fills exactly);
* ``asyncdicom qrscp`` holding the same 2 000 instances, stored through C-STORE too;
* ``asyncdicom qrscp`` holding the large data set (default 125 x 4 x 2 x 20 = 20 000 instances,
  the same 500 studies with ten times the instances), its index filled **through the index
  API** (:meth:`SQLiteIndex.add_many` on headers made in memory, with paths of files that do not
  exist: C-FIND reads the index only) before the server starts; sending 20 000 files would
  only time the ingest;
* with ``--base-tree DIR``, ``asyncdicom qrscp`` run from that source tree (an earlier
  revision) on the small data set, stored through C-STORE.

The data sets come from ``qr_data.py`` (the small one is written as files into ``--cache``
once, for C-STORE).  Queries (Study Root, STUDY level, the return keys of ``bench_qr.py``): a
Patient ID, a Study Date range (about a tenth of the studies, the same studies in both data
sets) and a Patient Name wildcard (``SMI*``: one patient in ten).  Each run is one ``findscu``
process, timed from start to exit (what a script calling findscu sees: process start,
association, query, responses, release); the runs alternate server by server and query by
query, ``--repeat`` rounds, and the table gives the best and the median per server and query.
Before timing, one run per server and query with ``--extract`` checks that the responses name
exactly the expected studies (from the data set's manifest, independently of any server).

DCMTK processes get ``TCP_NODELAY=1``; findscu and the servers announce a 131 072-byte
maximum PDU (dcmqrscp's maximum).  Every process started is stopped, temporary folders removed.
Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# run as a script: tests/ (the peer harness) and this folder (qr_data, bench_qr) on sys.path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_qr import (
    MAX_PDU,
    QR_AET,
    RETURN_KEYS,
    Config,
    Peer,
    find_cases,
    ingest,
    run_async,
)
from harness.peers import LOCALHOST, dcmtk_env, find_dcmtk_program, free_port, require_dcmtk
from pydicom.dataset import Dataset
from qr_data import (
    Patient,
    Shape,
    build_manifest,
    ensure_dataset,
    index_headers,
    iter_instances,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


class OtherTreePeer(Peer):
    """A peer; ``tree`` (when set) is a source tree of asyncdicom that ``ours`` runs from
    (an earlier revision, for before/after figures in the same run)."""

    tree: Path | None = None

    def _command(self, port: int) -> tuple[list[str], dict[str, str] | None]:
        cmd, env = super()._command(port)
        if self.tree is not None:
            env = dict(env if env is not None else os.environ)
            env["PYTHONPATH"] = os.fspath(self.tree)
        return cmd, env


def log(text: str) -> None:
    print(text, flush=True)


def parse_shape(text: str) -> Shape:
    parts = [int(p) for p in text.lower().split("x")]
    if len(parts) != 4 or min(parts) < 1:
        raise argparse.ArgumentTypeError("a shape is PATIENTSxSTUDIESxSERIESxINSTANCES")
    return Shape(*parts)


def load_index(folder: Path, shape: Shape, cache: Path) -> list[Patient]:
    """Fill ``folder``'s index through the index API with the headers of ``shape`` (no
    files, no pixel data); the index file is kept in ``cache`` and copied from there on the
    next run."""
    from asyncdicom.archive import DEFAULT_DB_NAME
    from asyncdicom.qr import SCHEMA_VERSION, SQLiteIndex

    patients = build_manifest(shape)
    folder.mkdir(parents=True, exist_ok=True)
    cached = cache / f"index-{shape.label}-v{SCHEMA_VERSION}.sqlite"
    if not cached.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        with SQLiteIndex(os.fspath(partial)) as index:
            batch: list[tuple[Dataset, str]] = []
            for item in index_headers(patients):
                batch.append(item)
                if len(batch) >= 2000:
                    index.add_many(batch)
                    batch.clear()
            if batch:
                index.add_many(batch)
            assert index.count() == shape.total_instances, index.count()
            index._con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        partial.replace(cached)
    shutil.copyfile(cached, folder / DEFAULT_DB_NAME)
    return patients


def findscu_args(port: int, keys: dict[str, str], extract: Path | None) -> list[str]:
    prog = find_dcmtk_program("findscu") or "findscu"
    cmd = [prog, "-S", "-aec", QR_AET, "-aet", "BENCHSCU", "--max-pdu", str(MAX_PDU)]
    cmd += ["-k", "QueryRetrieveLevel=STUDY"]
    for keyword in RETURN_KEYS:
        cmd += ["-k", f"{keyword}={keys.get(keyword, '')}"]
    if extract is not None:
        cmd += ["--extract", "--output-directory", os.fspath(extract)]
    cmd += [LOCALHOST, str(port)]
    return cmd


def run_findscu(port: int, keys: dict[str, str], extract: Path | None = None) -> float:
    """One findscu process; its wall time in ms.  Raises when it fails."""
    cmd = findscu_args(port, keys, extract)
    start = time.perf_counter()
    done = subprocess.run(
        cmd,
        capture_output=True,
        env=dcmtk_env(),
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    elapsed = (time.perf_counter() - start) * 1000
    if done.returncode != 0:
        raise RuntimeError(f"findscu failed ({done.returncode}): {done.stderr[-400:]!r}")
    return elapsed


def extracted_studies(port: int, keys: dict[str, str], folder: Path) -> tuple[int, set[str]]:
    from pydicom import dcmread

    folder.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        f.unlink()
    run_findscu(port, keys, folder)
    files = sorted(folder.iterdir())
    return len(files), {str(dcmread(f).StudyInstanceUID) for f in files}


def case_keys(identifier: Any) -> dict[str, str]:
    return {k: str(getattr(identifier, k)) for k in RETURN_KEYS if getattr(identifier, k, "")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=parse_shape, default=Shape(125, 4, 2, 2))
    parser.add_argument("--large", type=parse_shape, default=Shape(125, 4, 2, 20))
    parser.add_argument("--repeat", type=int, default=15, help="rounds of timed runs")
    parser.add_argument(
        "--cache", type=Path, default=Path.home() / ".cache" / "asyncdicom-bench" / "qr"
    )
    parser.add_argument(
        "--base-tree",
        type=Path,
        default=None,
        help="a source tree of an earlier revision (git archive REV | tar -x -C DIR): "
        "run a fourth server from it on the small data set, for before/after figures",
    )
    parser.add_argument("--output", type=Path, default=ROOT / "bench-results" / "cfind.json")
    args = parser.parse_args()
    require_dcmtk(("findscu", "dcmqrscp"))

    small, large = args.small, args.large
    data = args.cache / small.label
    log(f"data set {small.label} ({small.total_instances:,} instances) in {data}")
    patients = ensure_dataset(data, small)
    files = list(iter_instances(data, small))
    cfg = Config(
        shape=small,
        peers=[],
        block=1000,
        find_repeat=1,
        move_repeat=1,
        move_studies=1,
        verify="none",
        cache=args.cache,
        ingest_timeout=1800.0,
        phase_timeout=600.0,
        client_backend="asyncio",
    )
    problems: list[str] = []
    results: dict[str, Any] = {
        "small": small.label,
        "large": large.label,
        "repeat": args.repeat,
        "python": platform.python_version(),
        "uptime_before": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
    }
    with tempfile.TemporaryDirectory(prefix="bench-cfind-") as tmp_name:
        tmp = Path(tmp_name)
        dest_port = free_port()  # no C-MOVE here: a destination nobody listens on
        servers: dict[str, Peer] = {}
        try:
            small_servers = [("dcmqrscp 2k", "dcmqrscp", None), ("ours 2k", "ours", None)]
            if args.base_tree is not None:
                small_servers.append(("ours 2k before", "ours", args.base_tree))
            for name, kind, tree in small_servers:
                workdir = tmp / name.replace(" ", "-")
                workdir.mkdir()
                peer = OtherTreePeer(
                    kind, workdir, dest_port, ours_options=frozenset({"--host", "--max-pdu"})
                )
                peer.tree = tree
                servers[name] = peer.__enter__()
                log(f"{name}: C-STORE {len(files):,} instances")
                got = run_async(cfg, 1800.0, ingest, cfg, peer.port, files)
                if got["not_success"]:
                    problems.append(f"{name}: {got['not_success']} C-STOREs not Success")
            workdir = tmp / "ours-20k"
            workdir.mkdir()
            log(f"ours 20k: index API, {large.total_instances:,} instances")
            started = time.perf_counter()
            large_patients = load_index(workdir / "storage", large, args.cache)
            log(f"    indexed in {time.perf_counter() - started:.1f} s")
            peer = Peer("ours", workdir, dest_port, ours_options=frozenset({"--host", "--max-pdu"}))
            servers["ours 20k"] = peer.__enter__()

            cases = {"small": find_cases(patients), "large": find_cases(large_patients)}
            names = [c.name.split(" (")[0] for c in cases["small"]]
            plan = [
                (name, "small" if "2k" in name else "large") for name in servers
            ]  # server name, data set
            # correctness first (not timed)
            for i, query in enumerate(names):
                for server, which in plan:
                    case = cases[which][i]
                    count, studies = extracted_studies(
                        servers[server].port, case_keys(case.identifier), tmp / "extract"
                    )
                    ok = studies == case.expected and count == len(case.expected)
                    log(f"    check {server} {query}: {count} responses, ok={ok}")
                    if not ok:
                        problems.append(f"{server} {query}: {count} responses, not the expected")
            times: dict[str, dict[str, list[float]]] = {q: {s: [] for s, _ in plan} for q in names}
            for round_ in range(args.repeat):
                for i, query in enumerate(names):
                    for server, which in plan:
                        case = cases[which][i]
                        times[query][server].append(
                            run_findscu(servers[server].port, case_keys(case.identifier))
                        )
                log(f"    round {round_ + 1}/{args.repeat}")
            results["queries"] = {
                query: {
                    server: {
                        "best_ms": min(runs),
                        "median_ms": statistics.median(runs),
                        "runs_ms": runs,
                        "responses": len(cases[which][names.index(query)].expected),
                    }
                    for (server, which), runs in zip(plan, times[query].values(), strict=True)
                }
                for query in names
            }
        finally:
            for peer in servers.values():
                peer.stop()
    results["uptime_after"] = subprocess.run(
        ["uptime"], capture_output=True, text=True
    ).stdout.strip()
    results["problems"] = problems

    log("")
    log(
        f"| findscu wall time, ms: best / median of {args.repeat} | "
        + " | ".join(s for s, _ in plan)
        + " |"
    )
    log("|---|" + "---:|" * len(plan))
    for query in names:
        row = results["queries"][query]
        cells = [
            f"{row[s]['best_ms']:.1f} / {row[s]['median_ms']:.1f} ({row[s]['responses']})"
            for s, _ in plan
        ]
        log(f"| {query} | " + " | ".join(cells) + " |")
    log(f"\nload: before {results['uptime_before']}; after {results['uptime_after']}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))
    for p in problems:
        log(f"PROBLEM: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
