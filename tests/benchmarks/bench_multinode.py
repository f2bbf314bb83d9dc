"""Two qrscp nodes on one PostgreSQL database and one folder behind HAProxy: 10 000 instances
from 4 DCMTK senders through the balancer, one node killed and started again in the middle.

Run (from the repository root, with the project's venv, ``asyncdicom[postgresql]``, DCMTK,
Debian's postgresql and haproxy)::

    PYTHONPATH=$PWD python tests/benchmarks/bench_multinode.py --output bench-results/multinode.json
    # a quick run:
    PYTHONPATH=$PWD python tests/benchmarks/bench_multinode.py --instances 400

What it does (tests/test_multinode.py does the same with 192 instances and our own senders):

* a private PostgreSQL cluster (tests/harness/postgres.py, no fsync), two ``asyncdicom qrscp``
  nodes (``--aet QRSCP``, one ``--storage`` folder, one ``--db``) and HAProxy in front of them
  (tests/harness/haproxy.py: mode tcp, leastconn, TCP health checks every second);
* ``--instances`` CT instances written as files first (``--senders`` patients' studies of 2
  series of 50 instances), sent by ``--senders`` DCMTK ``storescu`` processes at once through the
  balancer, ``--chunk`` files an association; a file counts as acknowledged when storescu
  says its C-STORE got a Success response; a chunk not wholly acknowledged is sent again (whole:
  an instance sent twice keeps one index row);
* once half of the instances are acknowledged, node A is killed (SIGKILL) and started again on
  its port;
* then the checks: the index holds every instance exactly once (rows via the index API against
  the acknowledged set) and each row's file exists; C-FIND at PATIENT, STUDY, SERIES and IMAGE
  level through each node directly gives the expected counts; a C-MOVE through node B of a
  study stored directly through node A delivers all of it, to an in-process Storage SCP;
  storage commitment through each node of what the other stored.

Printed: the ingest time and rate through the balancer, the chunks that failed and were sent
again, the time node A was away, the C-FIND latency per level and node, and the checks.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import anyio
from pydicom.dataset import Dataset

from asyncdicom import AE, presets
from asyncdicom.protocol import uids
from asyncdicom.qr import PostgreSQLIndex
from asyncdicom.services.commitment import STORAGE_COMMITMENT
from asyncdicom.storage.synthetic import make_ct_instance
from tests.harness.haproxy import running_haproxy
from tests.harness.postgres import running_cluster

#: the repository (the nodes run its asyncdicom)
ROOT = Path(__file__).resolve().parents[2]
CT = (uids.CT_IMAGE_STORAGE, [uids.EXPLICIT_VR_LITTLE_ENDIAN])
SERIES, PER_SERIES = 2, 50


class Node:
    """One qrscp subprocess; its stderr goes to a file."""

    def __init__(self, name: str, args: list[str], folder: Path) -> None:
        self.name, self.args, self.folder = name, args, folder
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, port: int = 0) -> None:
        self.starts += 1
        log = self.folder / f"qrscp-{self.name}-{self.starts}.log"
        command = [sys.executable, "-m", "asyncdicom", *self.args]
        command += ["--host", "127.0.0.1", "--port", str(port)]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
        self.proc = subprocess.Popen(command, stderr=subprocess.PIPE, env=env)
        assert self.proc.stderr is not None
        pattern = re.compile(rb"listening on 127\.0\.0\.1:(\d+)")
        out = open(log, "wb")  # noqa: SIM115 (the node's stderr while it runs)
        for line in self.proc.stderr:
            out.write(line)
            if match := pattern.search(line):
                self.port = int(match.group(1))
                break
        else:
            raise RuntimeError(f"qrscp {self.name} did not start: see {log}")
        stderr = self.proc.stderr

        def drain() -> None:
            with out:
                for line in stderr:
                    out.write(line)

        threading.Thread(target=drain, daemon=True).start()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=120)


def write_files(folder: Path, senders: int, instances: int) -> dict[int, list[Path]]:
    """The files of each sender: its patients' studies, SERIES x PER_SERIES instances each."""
    per_sender = instances // senders
    files: dict[int, list[Path]] = {}
    for s in range(senders):
        made = files[s] = []
        for n in range(per_sender):
            study, rest = divmod(n, SERIES * PER_SERIES)
            series = rest // PER_SERIES
            study_uid = f"1.2.826.0.1.3680043.10.1022.{s + 1}.{study + 1}"
            ds = make_ct_instance(
                512,
                patient_id=f"S{s}P{study // 5}",
                study_instance_uid=study_uid,
                series_instance_uid=f"{study_uid}.{series + 1}",
                instance_number=rest % PER_SERIES + 1,
                seed=n,
            )
            path = folder / f"{s}-{n:05d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            made.append(path)
    return files


class Sender(threading.Thread):
    """One DCMTK storescu after the other, ``chunk`` files each, until every file is
    acknowledged."""

    def __init__(self, name: str, port: int, files: list[Path], chunk: int, state: Any) -> None:
        super().__init__(daemon=True)
        self.name_, self.port, self.files, self.chunk, self.state = name, port, files, chunk, state
        self.acknowledged: set[Path] = set()
        self.failed_chunks = 0

    def run(self) -> None:
        waiting = list(self.files)
        while waiting:
            chunk = waiting[: self.chunk]
            result = subprocess.run(
                ["storescu", "-v", "-aet", self.name_, "-aec", "QRSCP",
                 "127.0.0.1", str(self.port), *map(str, chunk)],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            current: Path | None = None
            done: set[Path] = set()
            for line in (result.stdout + result.stderr).splitlines():
                if "Sending file: " in line:
                    current = Path(line.split("Sending file: ", 1)[1].strip())
                elif "Received Store Response (Success)" in line and current is not None:
                    done.add(current)
            self.acknowledged |= done
            with self.state["lock"]:
                self.state["acknowledged"] += len(done - self.state["seen"])
                self.state["seen"] |= done
                if self.state["acknowledged"] >= self.state["kill_at"]:
                    self.state["kill_now"].set()
            if done >= set(chunk) and result.returncode == 0:
                waiting = waiting[len(chunk) :]
            else:
                self.failed_chunks += 1


async def query(port: int, level: str, model: str = "study", **keys: str) -> tuple[int, float]:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    for keyword in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        setattr(identifier, keyword, keys.get(keyword, ""))
    async with AE("FINDSCU").associate(
        "127.0.0.1", port, called_aet="QRSCP", contexts=presets.QR_FIND
    ) as assoc:
        start = time.perf_counter()
        async with assoc.find(identifier, model=model) as results:
            n = len([m async for m in results])
        return n, (time.perf_counter() - start) * 1000


async def checks(
    port_a: int, port_b: int, senders: int, per_sender: int, via_a: list[Dataset], dest: Any
) -> dict[str, Any]:
    studies_per_sender = -(-per_sender // (SERIES * PER_SERIES))
    patients = senders * -(-studies_per_sender // 5) + 1
    out: dict[str, Any] = {"find": {}}
    ok = True
    for name, port in (("A", port_a), ("B", port_b)):
        found = {
            "PATIENT": await query(port, "PATIENT", model="patient"),
            "STUDY": await query(port, "STUDY"),
        }
        uid = "1.2.826.0.1.3680043.10.1022.1.1"
        found["SERIES"] = await query(port, "SERIES", StudyInstanceUID=uid)
        found["IMAGE"] = await query(
            port, "IMAGE", StudyInstanceUID=uid, SeriesInstanceUID=f"{uid}.1"
        )
        expected = {
            "PATIENT": patients,
            "STUDY": senders * studies_per_sender + 1,
            "SERIES": SERIES,
            "IMAGE": PER_SERIES,
        }
        for level, (count, ms) in found.items():
            good = count == expected[level]
            ok &= good
            out["find"][f"{name} {level}"] = {"count": count, "expected": expected[level], "ms": ms}
    moved: list[str] = dest["moved"]
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = str(via_a[0].StudyInstanceUID)
    async with AE("MOVESCU").associate(
        "127.0.0.1", port_b, called_aet="QRSCP", contexts=presets.retrieve_contexts("move")
    ) as assoc:
        async with assoc.move(identifier, destination="DEST") as retrieval:
            await retrieval.wait()
    move_ok = retrieval.status == 0 and sorted(moved) == sorted(
        str(d.SOPInstanceUID) for d in via_a
    )
    out["move_through_B_of_study_stored_through_A"] = {"delivered": len(moved), "ok": move_ok}
    refs = [(str(d.SOPClassUID), str(d.SOPInstanceUID)) for d in via_a]
    async with AE("MODALITY").associate(
        "127.0.0.1", port_b, called_aet="QRSCP", contexts=[STORAGE_COMMITMENT]
    ) as assoc:
        result = await assoc.commit(refs, timeout=60)
    commit_ok = sorted(result.committed) == sorted(refs) and not result.failed
    out["commitment_by_B_of_instances_stored_through_A"] = commit_ok
    out["find_ok"] = ok
    out["ok"] = ok and move_ok and commit_ok
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--chunk", type=int, default=50, help="files per storescu association")
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    parser.add_argument("--output", type=Path, default=None, help="write the figures as JSON")
    options = parser.parse_args()
    senders, per_sender = options.senders, options.instances // options.senders
    total = senders * per_sender
    report: dict[str, Any] = {
        "instances": total,
        "senders": senders,
        "load_before": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="bench-multinode-") as tmp, running_cluster() as pg:
        work = Path(tmp)
        (work / "files").mkdir()
        started = time.perf_counter()
        files = write_files(work / "files", senders, total)
        print(f"wrote {total} files in {time.perf_counter() - started:.1f} s", flush=True)
        url = pg.database()
        via_a = [
            make_ct_instance(
                512, patient_id="DIRECT", study_instance_uid="1.2.826.0.1.3680043.10.1022.99",
                series_instance_uid="1.2.826.0.1.3680043.10.1022.99.1", seed=n,
            )
            for n in range(10)
        ]  # fmt: skip
        dest_state: dict[str, Any] = {"moved": []}
        return anyio.run(
            run_all, work, url, files, via_a, dest_state, options, report, backend="asyncio"
        )


async def run_all(
    work: Path,
    url: str,
    files: dict[int, list[Path]],
    via_a: list[Dataset],
    dest_state: dict[str, Any],
    options: argparse.Namespace,
    report: dict[str, Any],
) -> int:
    destination = AE("DEST", accept_any_storage=True)

    @destination.on_store
    async def on_store(request: Any) -> int:
        dest_state["moved"].append(request.message.affected_sop_instance_uid)
        await request.discard()
        return 0x0000

    total = report["instances"]
    async with destination.server() as dest:
        args = ["qrscp", "--storage", str(work / "archive"), "--db", url, "--aet", "QRSCP",
                "--move-destination", f"DEST=127.0.0.1:{dest.port}",
                "--backend", options.backend]  # fmt: skip
        node_a, node_b = Node("A", args, work), Node("B", args, work)
        try:
            await anyio.to_thread.run_sync(node_a.start)
            await anyio.to_thread.run_sync(node_b.start)
            port_a, port_b = node_a.port, node_b.port
            async with AE("SENDER").associate(
                "127.0.0.1", port_a, called_aet="QRSCP", contexts=[CT]
            ) as assoc:
                for ds in via_a:
                    assert (await assoc.store(ds)).status == 0
            servers = [("a", "127.0.0.1", port_a), ("b", "127.0.0.1", port_b)]
            with running_haproxy(servers, work / "haproxy") as proxy:
                state: dict[str, Any] = {
                    "lock": threading.Lock(), "acknowledged": 0, "seen": set(),
                    "kill_at": total // 2, "kill_now": threading.Event(),
                }  # fmt: skip
                threads = [
                    Sender(f"SENDER{s}", proxy.port, paths, options.chunk, state)
                    for s, paths in files.items()
                ]
                started = time.perf_counter()
                for t in threads:
                    t.start()
                await anyio.to_thread.run_sync(state["kill_now"].wait)
                killed_at = time.perf_counter() - started
                node_a.kill()
                down = time.perf_counter()
                await anyio.to_thread.run_sync(node_a.start, port_a)
                away = time.perf_counter() - down
                print(f"node A killed after {killed_at:.1f} s, back after {away:.1f} s", flush=True)
                for t in threads:
                    await anyio.to_thread.run_sync(t.join)
                elapsed = time.perf_counter() - started
            acknowledged = {p for t in threads for p in t.acknowledged}
            report["ingest_s"] = elapsed
            report["instances_per_s"] = total / elapsed
            report["failed_chunks_sent_again"] = sum(t.failed_chunks for t in threads)
            report["node_a_killed_after_s"] = killed_at
            report["node_a_away_s"] = away
            report["acknowledged"] = len(acknowledged)
            index = PostgreSQLIndex(url)
            try:
                rows = index.paths()
                count = index.count()
            finally:
                index.close()
            expected = total + len(via_a)
            report["index_rows"] = count
            report["index_exactly_once"] = count == expected and len(set(rows.values())) == count
            report["index_files_exist"] = all(os.path.isfile(p) for p in rows)
            report.update(
                await checks(port_a, port_b, options.senders, total // options.senders, via_a,
                             dest_state)
            )  # fmt: skip
        finally:
            node_a.stop()
            node_b.stop()
    report["load_after"] = os.getloadavg()
    report["ok"] = bool(
        report["ok"] and report["index_exactly_once"] and report["index_files_exist"]
        and report["acknowledged"] == total
    )  # fmt: skip
    print(json.dumps(report, indent=2, default=str))
    if options.output is not None:
        options.output.parent.mkdir(parents=True, exist_ok=True)
        options.output.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
