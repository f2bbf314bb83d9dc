"""Query/Retrieve benchmark: asyncdicom qrscp vs DCMTK dcmqrscp vs pynetdicom qrscp.

Run (from the repository root, with the project's venv)::

    # validate the script in about a minute (5 patients x 2 studies x 2 series x 5 instances)
    python tests/benchmarks/bench_qr.py --patients 5 --studies 2 --series 2 --instances 5

    # docs/performance.md: the three peers side by side on 20 000 instances (default shape
    # 125 x 4 x 2 x 20 = 500 studies), then asyncdicom alone on 100 000 (625 x 4 x 2 x 20)
    python tests/benchmarks/bench_qr.py --output bench-results/qr-20k.json
    python tests/benchmarks/bench_qr.py --peers ours --scale 100000 \
        --output bench-results/qr-100k.json

The data set (small 64 x 64 CT and MR instances, see ``qr_data.py``) is generated once into
``--cache`` (default ``~/.cache/asyncdicom-bench/qr``) and reused.  For every peer of
``--peers`` (``ours,dcmqrscp,pynetdicom``), on a fresh storage folder:

* **ingest**: every instance is sent with C-STORE on one association by asyncdicom's SCU API,
  in this process, the same client for every peer (it times each response exactly, costs the
  same for every peer, and leaves the CPU to the server between two requests); instances/s
  overall, per block of 1000 (first and last reported), then a C-FIND count checks that the
  peer indexed every instance (``--verify full``: studies, then the series of each study, then
  the instances of each series), so that dcmqrscp's quota (at most 500 studies per storage
  area, the oldest study deleted silently beyond it) cannot skew a result unnoticed;
* **C-FIND** latency, Study Root, STUDY level, on one open association, asyncdicom's
  ``assoc.find`` as the client: a Patient ID, a Study Date range (about a tenth of the studies)
  and a Patient Name wildcard (``SMI*``: one patient in ten); one warm-up run, then
  ``--find-repeat`` runs, median and p90 in ms from the C-FIND-RQ to the final response;
  the number of responses and of distinct studies, checked against the data set's manifest;
* **C-MOVE** to DCMTK ``storescp`` started here (single process, writing to a temporary
  folder: a move destination that stores is what a PACS meets; the same destination for every
  peer, and the files it wrote are counted as an independent check): one study (Study Root),
  one patient (Patient Root, PATIENT level), and ``--move-studies`` Study Instance UIDs in one
  request (backslash-separated list); instances/s from the C-MOVE-RQ to the final response,
  best of ``--move-repeat``; the final response's completed count must equal the expected
  number, with nothing failed.  The client sends C-MOVE-RQ with the generic ``assoc.invoke``.

Fairness: every listener announces a maximum PDU of 131072 bytes (dcmqrscp's and storescp's
maximum), and so does the client; DCMTK processes get ``TCP_NODELAY=1``, pynetdicom's qrscp
runs through ``qr_pynetdicom.py`` which sets TCP_NODELAY on its sockets (pynetdicom never
does), asyncdicom sets it always.  pynetdicom's qrscp needs SQLAlchemy, which neither
pynetdicom nor asyncdicom depends on: it is installed with pip into the cache folder (not into
the venv) on first use and put on that process's PYTHONPATH only.  dcmqrscp runs with its
default settings (a process forked per association).  Everything listens and connects on
127.0.0.1 (dcmqrscp and storescp have no option to bind one address: they listen on all);
every phase is bounded in time; every process started here is stopped and temporary folders
are removed.

Results: a markdown table on stdout, ready for docs/performance.md, and JSON (``--output``,
default ``bench-results/qr.json``).  Exit status 1 when something failed or did not check out.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

import anyio
from pydicom.dataset import Dataset

# The peer harness lives in tests/harness (not in the installed package): run as a script,
# this file puts tests/ on sys.path itself; qr_data.py sits beside this file.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.peers import (
    LOCALHOST,
    DcmtkStoreSCP,
    dcmtk_env,
    find_dcmtk_program,
    free_port,
    require_dcmtk,
    wait_for_port,
)
from qr_data import (
    CT_IMAGE_STORAGE,
    MR_IMAGE_STORAGE,
    SURNAMES,
    Patient,
    Shape,
    ensure_dataset,
    iter_instances,
)

from asyncdicom import AE, Association, Timeouts
from asyncdicom.protocol import messages, uids
from asyncdicom.storage.codec import encode_dataset

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PY = sys.executable
PYNETDICOM_LAUNCHER = HERE / "qr_pynetdicom.py"

PEERS = ("ours", "dcmqrscp", "pynetdicom")
LABEL = {
    "ours": "asyncdicom qrscp",
    "dcmqrscp": "DCMTK dcmqrscp",
    "pynetdicom": "pynetdicom qrscp",
}
QR_AET = "QRSCP"
DEST_AET = "STORESCP"
SCU_AET = "BENCHSCU"
MAX_PDU = 131072
#: dcmqrscp keeps at most this many studies per storage area (DCMTK's compiled-in maximum);
#: beyond its quota it deletes the oldest study silently
DCMQRSCP_MAX_STUDIES = 500
RETURN_KEYS = (
    "PatientName",
    "PatientID",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
)

T = TypeVar("T")


# --------------------------------------------------------------------------- configuration


@dataclass
class Config:
    shape: Shape
    peers: list[str]
    block: int
    find_repeat: int
    move_repeat: int
    move_studies: int
    verify: str
    cache: Path
    ingest_timeout: float
    phase_timeout: float
    client_backend: str
    keep_logs: Path | None = None


@dataclass
class PeerResult:
    """Everything measured on one peer."""

    peer: str
    label: str
    skipped: str | None = None
    ingest: dict[str, Any] = field(default_factory=dict)
    verify: dict[str, Any] = field(default_factory=dict)
    find: list[dict[str, Any]] = field(default_factory=list)
    move: list[dict[str, Any]] = field(default_factory=list)
    phase_seconds: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def log(text: str) -> None:
    print(text, flush=True)


# --------------------------------------------------------------------------- processes


def _tail(path: Path, chars: int = 1500) -> str:
    try:
        return path.read_text("utf-8", "replace")[-chars:]
    except OSError:
        return ""


class Peer:
    """One Q/R SCP in its own process group on a fresh storage folder; ``port`` once started."""

    def __init__(
        self,
        kind: str,
        workdir: Path,
        dest_port: int,
        *,
        deps: Path | None = None,
        ours_options: frozenset[str] = frozenset(),
    ) -> None:
        self.kind = kind
        self.workdir = workdir
        self.storage = workdir / "storage"
        self.log_path = workdir / f"{kind}.log"
        self.dest_port = dest_port
        self.deps = deps
        self.ours_options = ours_options
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    # -- command lines ------------------------------------------------------------------------

    def _command(self, port: int) -> tuple[list[str], dict[str, str] | None]:
        dest = f"{DEST_AET}={LOCALHOST}:{self.dest_port}"
        if self.kind == "ours":
            cmd = [PY, "-m", "asyncdicom", "qrscp", "--port", str(port), "--aet", QR_AET]
            cmd += ["--storage", os.fspath(self.storage), "--move-destination", dest]
            if "--host" in self.ours_options:
                cmd += ["--host", LOCALHOST]
            if "--max-pdu" in self.ours_options:
                cmd += ["--max-pdu", str(MAX_PDU)]
            return cmd, None
        if self.kind == "dcmqrscp":
            config = self.workdir / "dcmqrscp.cfg"
            config.write_text(
                "\n".join(
                    [
                        f"NetworkTCPPort  = {port}",
                        f"MaxPDUSize      = {MAX_PDU}",
                        "MaxAssociations = 16",
                        "HostTable BEGIN",
                        f"storescp = ({DEST_AET}, {LOCALHOST}, {self.dest_port})",
                        "HostTable END",
                        "VendorTable BEGIN",
                        "VendorTable END",
                        "AETable BEGIN",
                        # AE title, storage area, access, (max studies, max bytes per study),
                        # peers
                        f"{QR_AET} {self.storage} RW ({DCMQRSCP_MAX_STUDIES}, 1024mb) ANY",
                        "AETable END",
                        "",
                    ]
                )
            )
            prog = find_dcmtk_program("dcmqrscp") or "dcmqrscp"
            return [prog, "-c", os.fspath(config), str(port)], dcmtk_env()
        if self.kind == "pynetdicom":
            config = self.workdir / "qrscp.ini"
            config.write_text(
                "\n".join(
                    [
                        "[DEFAULT]",
                        f"ae_title: {QR_AET}",
                        f"port: {port}",
                        f"max_pdu: {MAX_PDU}",
                        "acse_timeout: 60",
                        "dimse_timeout: 600",
                        "network_timeout: 600",
                        f"bind_address: {LOCALHOST}",
                        f"instance_location: {self.storage}",
                        f"database_location: {self.workdir / 'index.sqlite'}",
                        "log_identifier: False",
                        f"[{DEST_AET}]",
                        f"address: {LOCALHOST}",
                        f"port: {self.dest_port}",
                        "",
                    ]
                )
            )
            env = dict(os.environ)
            if self.deps is not None:
                env["PYTHONPATH"] = os.pathsep.join(
                    p for p in (os.fspath(self.deps), env.get("PYTHONPATH", "")) if p
                )
            return [PY, os.fspath(PYNETDICOM_LAUNCHER), "-c", os.fspath(config)], env
        raise ValueError(self.kind)

    # -- life cycle ---------------------------------------------------------------------------

    def __enter__(self) -> Peer:
        self.storage.mkdir(parents=True, exist_ok=True)
        for _attempt in range(5):
            port = free_port()
            cmd, env = self._command(port)
            with self.log_path.open("ab") as out:
                self.proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=self.workdir,
                    start_new_session=True,  # its own process group: dcmqrscp forks children
                )
            try:
                wait_for_port(LOCALHOST, port, timeout=60.0, proc=self.proc)
            except Exception:
                self.stop()
                if "in use" not in _tail(self.log_path).lower():
                    raise RuntimeError(
                        f"{LABEL[self.kind]} did not start: {_tail(self.log_path)}"
                    ) from None
                continue
            self.port = port
            # on SIGTERM our client's association stays open, and pynetdicom waits for it
            _ON_TERMINATE.append(partial(self.stop, grace=1.0))
            return self
        raise RuntimeError(f"{LABEL[self.kind]} did not start: no free port")

    def stop(self, grace: float = 15.0) -> None:
        """SIGINT (SIGTERM for dcmqrscp) to the peer's process group, ``grace`` seconds to
        leave, then SIGKILL."""
        proc = self.proc
        if proc is None:
            return
        polite = signal.SIGTERM if self.kind == "dcmqrscp" else signal.SIGINT
        for sig, wait in ((polite, grace), (signal.SIGKILL, 10.0)):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=wait)
        # children forked by dcmqrscp may outlive the parent: end the rest of its group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        self.proc = None

    def __exit__(self, *exc: object) -> None:
        self.stop()


def ours_available() -> tuple[bool, frozenset[str], str]:
    """Whether ``python -m asyncdicom qrscp`` exists, and which optional options it has."""
    try:
        done = subprocess.run(
            [PY, "-m", "asyncdicom", "qrscp", "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, frozenset(), str(exc)
    if done.returncode != 0:
        return False, frozenset(), (done.stderr or done.stdout).strip().splitlines()[-1:][0]
    options = frozenset(o for o in ("--host", "--max-pdu") if o in done.stdout)
    return True, options, ""


def pynetdicom_deps(cache: Path) -> Path | None:
    """A folder holding SQLAlchemy for pynetdicom's qrscp (installed there on first use), or
    None when the venv has it already."""
    if importlib.util.find_spec("sqlalchemy") is not None:
        return None
    target = cache / "pynetdicom-deps"
    if not (target / "sqlalchemy").is_dir():
        log(f"installing SQLAlchemy (needed by pynetdicom's qrscp) into {target}")
        done = subprocess.run(
            [PY, "-m", "pip", "install", "--quiet", "--target", os.fspath(target), "sqlalchemy"],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if done.returncode != 0 or not (target / "sqlalchemy").is_dir():
            raise RuntimeError(f"pip could not install SQLAlchemy: {done.stderr[-500:]}")
    return target


# --------------------------------------------------------------------------- client


def client_ae() -> AE:
    return AE(
        SCU_AET,
        max_pdu_length=MAX_PDU,
        timeouts=Timeouts(connect=30.0, acse=120.0, dimse=600.0),
    )


def run_async(cfg: Config, timeout: float, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run ``fn(*args)`` on the client's event loop, failing after ``timeout`` seconds."""

    async def bounded() -> T:
        with anyio.fail_after(timeout):
            return await fn(*args)

    return anyio.run(bounded, backend=cfg.client_backend)


def query(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def study_query(**keys: str) -> Dataset:
    ds = query("STUDY", **dict.fromkeys(RETURN_KEYS, ""))
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


async def find_all(assoc: Association, ds: Dataset, model: str = "study") -> list[Dataset]:
    matches: list[Dataset] = []
    async with assoc.find(ds, model=model) as results:  # type: ignore[attr-defined]
        async for match in results:
            matches.append(match)
    if results.status != 0x0000:
        raise RuntimeError(f"C-FIND ended with status 0x{results.status or 0:04X}")
    return matches


def _uids(matches: list[Dataset], keyword: str) -> set[str]:
    return {str(getattr(m, keyword, "") or "") for m in matches} - {""}


async def ingest(cfg: Config, port: int, files: list[Path]) -> dict[str, Any]:
    """C-STORE every file on one association; the time of every ``cfg.block`` instances."""
    ae = client_ae()
    marks: list[tuple[int, float]] = []
    not_success: list[str] = []
    async with ae.associate(
        LOCALHOST, port, called_aet=QR_AET, contexts=[CT_IMAGE_STORAGE, MR_IMAGE_STORAGE]
    ) as assoc:
        start = time.perf_counter()
        report_every = max(cfg.block, len(files) // 20)
        for n, path in enumerate(files, 1):
            rsp = await assoc.store(path)
            if rsp.status != 0x0000 and len(not_success) < 1000:
                not_success.append(f"{path.name}: {rsp}")
            if n % cfg.block == 0 or n == len(files):
                elapsed = time.perf_counter() - start
                marks.append((n, elapsed))
                if n % report_every == 0 or n == len(files):
                    log(f"    ingest {n:>7,}/{len(files):,}  {n / elapsed:8,.1f} inst/s overall")
    total = marks[-1][1]
    blocks = []
    previous = (0, 0.0)
    for n, t in marks:
        blocks.append(
            {"upto": n, "seconds": t - previous[1], "rate": (n - previous[0]) / (t - previous[1])}
        )
        previous = (n, t)
    return {
        "instances": len(files),
        "seconds": total,
        "rate": len(files) / total,
        "block": cfg.block,
        "first_block_rate": blocks[0]["rate"],
        "last_block_rate": blocks[-1]["rate"],
        "blocks": blocks,
        "not_success": len(not_success),
        "not_success_examples": not_success[:5],
    }


async def verify(cfg: Config, port: int, patients: list[Patient]) -> dict[str, Any]:
    """Count with C-FIND what the peer indexed: every study, and with ``full`` every series
    of every study and every instance of every series (hierarchical Study Root queries)."""
    ae = client_ae()
    expected_studies = {s.uid for p in patients for s in p.studies}
    out: dict[str, Any] = {"mode": cfg.verify}
    async with ae.associate(
        LOCALHOST, port, called_aet=QR_AET, contexts=[uids.STUDY_ROOT_QR_FIND]
    ) as assoc:
        found = _uids(
            await find_all(assoc, query("STUDY", StudyInstanceUID="")), "StudyInstanceUID"
        )
        out["studies"] = len(found & expected_studies)
        out["expected_studies"] = len(expected_studies)
        out["unexpected_studies"] = len(found - expected_studies)
        if cfg.verify == "full":
            instances = 0
            series_found = 0
            expected_series = 0
            for patient in patients:
                for study in patient.studies:
                    series = _uids(
                        await find_all(
                            assoc,
                            query("SERIES", StudyInstanceUID=study.uid, SeriesInstanceUID=""),
                        ),
                        "SeriesInstanceUID",
                    )
                    for s in study.series:
                        expected_series += 1
                        if s.uid not in series:
                            continue
                        series_found += 1
                        sops = await find_all(
                            assoc,
                            query(
                                "IMAGE",
                                StudyInstanceUID=study.uid,
                                SeriesInstanceUID=s.uid,
                                SOPInstanceUID="",
                            ),
                        )
                        instances += len(_uids(sops, "SOPInstanceUID"))
            out["series"] = series_found
            out["expected_series"] = expected_series
            out["instances"] = instances
            out["expected_instances"] = cfg.shape.total_instances
    out["ok"] = (
        out["studies"] == out["expected_studies"]
        and not out["unexpected_studies"]
        and out.get("instances", 0) == out.get("expected_instances", 0)
    )
    return out


@dataclass
class FindCase:
    name: str
    identifier: Dataset
    expected: set[str]


def find_cases(patients: list[Patient]) -> list[FindCase]:
    """The three queries, each with the Study Instance UIDs it must match (from the manifest)."""
    patient = patients[len(patients) // 2]
    dates = sorted(s.date for p in patients for s in p.studies)
    low, high = dates[int(len(dates) * 0.45)], dates[min(len(dates) - 1, int(len(dates) * 0.55))]
    prefix = SURNAMES[0][:3]
    in_range = {s.uid for p in patients for s in p.studies if low <= s.date <= high}
    named = {s.uid for p in patients if p.name.startswith(prefix) for s in p.studies}
    return [
        FindCase(
            f"Patient ID ({patient.patient_id})",
            study_query(PatientID=patient.patient_id),
            {s.uid for s in patient.studies},
        ),
        FindCase(
            f"Study Date range ({low}-{high})", study_query(StudyDate=f"{low}-{high}"), in_range
        ),
        FindCase(
            f"Patient Name wildcard ({prefix}*)", study_query(PatientName=f"{prefix}*"), named
        ),
    ]


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by linear interpolation between the closest ranks."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


async def find_latency(cfg: Config, port: int, cases: list[FindCase]) -> list[dict[str, Any]]:
    ae = client_ae()
    out = []
    async with ae.associate(
        LOCALHOST, port, called_aet=QR_AET, contexts=[uids.STUDY_ROOT_QR_FIND]
    ) as assoc:
        for case in cases:
            await find_all(assoc, case.identifier)  # warm-up, not timed
            times: list[float] = []
            matches: list[Dataset] = []
            for _ in range(cfg.find_repeat):
                start = time.perf_counter()
                matches = await find_all(assoc, case.identifier)
                times.append((time.perf_counter() - start) * 1000)
            studies = _uids(matches, "StudyInstanceUID")
            row = {
                "query": case.name,
                "median_ms": statistics.median(times),
                "p90_ms": percentile(times, 0.9),
                "min_ms": min(times),
                "runs_ms": times,
                "responses": len(matches),
                "studies": len(studies),
                "expected_studies": len(case.expected),
                "correct": studies == case.expected,
            }
            out.append(row)
            log(
                f"    C-FIND {case.name}: median {row['median_ms']:.2f} ms, "
                f"p90 {row['p90_ms']:.2f} ms, {len(matches)} responses, "
                f"{len(studies)}/{len(case.expected)} studies"
            )
    return out


@dataclass
class MoveCase:
    name: str
    model: str  # SOP Class UID of the MOVE model
    identifier: Dataset
    expected: int


def move_cases(cfg: Config, patients: list[Patient]) -> list[MoveCase]:
    shape = cfg.shape
    per_study = shape.series * shape.instances
    patient = patients[len(patients) // 2]
    studies = [s for p in patients for s in p.studies]
    count = max(1, min(cfg.move_studies, len(studies)))
    chosen = [studies[k * len(studies) // count] for k in range(count)]
    return [
        MoveCase(
            f"one study ({per_study} instances)",
            uids.STUDY_ROOT_QR_MOVE,
            query("STUDY", StudyInstanceUID=patient.studies[0].uid),
            per_study,
        ),
        MoveCase(
            f"one patient ({per_study * shape.studies} instances)",
            uids.PATIENT_ROOT_QR_MOVE,
            query("PATIENT", PatientID=patient.patient_id),
            per_study * shape.studies,
        ),
        MoveCase(
            f"{count} study UIDs in one request ({per_study * count} instances)",
            uids.STUDY_ROOT_QR_MOVE,
            query("STUDY", StudyInstanceUID="\\".join(s.uid for s in chosen)),
            per_study * count,
        ),
    ]


def _count_files(folder: Path) -> int:
    return sum(1 for f in folder.iterdir() if f.is_file())


def _clear(folder: Path) -> None:
    for f in folder.iterdir():
        if f.is_file():
            f.unlink()


async def move_once(port: int, case: MoveCase, dest_dir: Path) -> dict[str, Any]:
    """One C-MOVE on an association of its own (so that a peer that hangs cannot spoil the
    next run), bounded in time; the destination folder is emptied first and counted after."""
    await anyio.to_thread.run_sync(_clear, dest_dir)
    limit = max(60.0, case.expected * 0.25)
    run: dict[str, Any] = {"seconds": None, "rate": None, "status": None, "completed": None}
    run.update(failed=None, warning=None, timed_out=False)
    ae = client_ae()
    with anyio.move_on_after(limit) as scope:
        async with ae.associate(
            LOCALHOST,
            port,
            called_aet=QR_AET,
            contexts=[uids.STUDY_ROOT_QR_MOVE, uids.PATIENT_ROOT_QR_MOVE],
        ) as assoc:
            context = assoc.find_context(case.model)
            if context is None:
                raise RuntimeError(f"the peer did not accept {case.model}")
            data = encode_dataset(case.identifier, context.transfer_syntax or "")
            rq = messages.CMoveRQ(
                message_id=assoc.next_message_id(),
                affected_sop_class_uid=case.model,
                move_destination=DEST_AET,
            )
            start = time.perf_counter()
            async with assoc.invoke(context, rq, data) as op:
                async for _response in op:
                    pass
            run["seconds"] = seconds = time.perf_counter() - start
            run["rate"] = case.expected / seconds
            rsp = op.final.message if op.final is not None else None
            if isinstance(rsp, messages.CMoveRSP):
                run["status"] = rsp.status
                run["completed"] = rsp.number_of_completed_suboperations
                run["failed"] = rsp.number_of_failed_suboperations
                run["warning"] = rsp.number_of_warning_suboperations
    run["timed_out"] = scope.cancelled_caught
    run["files_received"] = await anyio.to_thread.run_sync(_count_files, dest_dir)
    run["ok"] = (
        run["status"] == 0x0000
        and run["completed"] == case.expected
        and not run["failed"]
        and run["files_received"] == case.expected
    )
    return run


def _status_text(status: int | None) -> str:
    return "none (timed out)" if status is None else f"0x{status:04X}"


async def move_rates(
    cfg: Config, port: int, cases: list[MoveCase], dest_dir: Path
) -> list[dict[str, Any]]:
    out = []
    for case in cases:
        runs = [await move_once(port, case, dest_dir) for _ in range(cfg.move_repeat)]
        good = [r["rate"] for r in runs if r["ok"]]
        row = {
            "move": case.name,
            "expected": case.expected,
            "rate": max(good) if good else None,
            "ok": len(good) == len(runs),
            "runs": runs,
        }
        out.append(row)
        shown = "FAILED" if row["rate"] is None else f"{row['rate']:,.1f} inst/s"
        worst = next((r for r in runs if not r["ok"]), runs[-1])
        log(
            f"    C-MOVE {case.name}: {shown} ({len(good)}/{len(runs)} runs ok; "
            f"{'worst' if worst is not runs[-1] or not worst['ok'] else 'last'}: status "
            f"{_status_text(worst['status'])}, completed {worst['completed']}, "
            f"failed {worst['failed']}, {worst['files_received']} files)"
        )
    return out


# --------------------------------------------------------------------------- one peer


def _phase(res: PeerResult, name: str, step: Callable[[], Any]) -> Any:
    """Run one phase; its duration goes to ``res.phase_seconds``, its exception to
    ``res.problems`` (one broken phase must not lose the others)."""
    started = time.perf_counter()
    try:
        return step()
    except Exception as exc:
        res.problems.append(f"{name}: {type(exc).__name__}: {exc}")
        log(f"    {name} FAILED: {type(exc).__name__}: {exc}")
        return None
    finally:
        res.phase_seconds[name] = time.perf_counter() - started


def bench_peer(
    cfg: Config,
    kind: str,
    patients: list[Patient],
    files: list[Path],
    tmp: Path,
    dest_port: int,
    dest_dir: Path,
    deps: Path | None,
    ours_options: frozenset[str],
) -> PeerResult:
    """Start ``kind`` on a fresh storage folder, ingest, verify, query, move; stop it."""
    res = PeerResult(kind, LABEL[kind])
    workdir = tmp / kind
    workdir.mkdir()
    log(f"{LABEL[kind]}:")
    try:
        with Peer(kind, workdir, dest_port, deps=deps, ours_options=ours_options) as peer:
            port, limit = peer.port, cfg.phase_timeout
            res.ingest = (
                _phase(
                    res,
                    "ingest",
                    lambda: run_async(cfg, cfg.ingest_timeout, ingest, cfg, port, files),
                )
                or {}
            )
            if res.ingest.get("not_success"):
                res.problems.append(
                    f"ingest: {res.ingest['not_success']} C-STORE(s) not Success, e.g. "
                    f"{res.ingest['not_success_examples'][:2]}"
                )
            if cfg.verify != "none":
                res.verify = (
                    _phase(
                        res, "verify", lambda: run_async(cfg, limit, verify, cfg, port, patients)
                    )
                    or {}
                )
                if res.verify:
                    v = res.verify
                    counted = f", {v['instances']:,}/{v['expected_instances']:,} instances"
                    log(
                        f"    indexed: {v['studies']}/{v['expected_studies']} studies"
                        + (counted if "instances" in v else "")
                    )
                    if not v["ok"]:
                        res.problems.append(f"verify: the peer did not index everything: {v}")
            cases = find_cases(patients)
            res.find = (
                _phase(res, "find", lambda: run_async(cfg, limit, find_latency, cfg, port, cases))
                or []
            )
            for row in res.find:
                if not row["correct"]:
                    res.problems.append(
                        f"C-FIND {row['query']}: {row['studies']} distinct studies, "
                        f"expected {row['expected_studies']}"
                    )
            moves = move_cases(cfg, patients)
            res.move = (
                _phase(
                    res,
                    "move",
                    lambda: run_async(cfg, limit, move_rates, cfg, port, moves, dest_dir),
                )
                or []
            )
            for row in res.move:
                if not row["ok"]:
                    res.problems.append(f"C-MOVE {row['move']}: {row['runs']}")
    except Exception as exc:
        res.problems.append(f"{type(exc).__name__}: {exc}")
        log(f"    FAILED: {type(exc).__name__}: {exc}")
    finally:
        if res.problems:
            res.problems.append(f"{kind} log (end): {_tail(workdir / f'{kind}.log', 800)}")
        if cfg.keep_logs is not None and (workdir / f"{kind}.log").exists():
            cfg.keep_logs.mkdir(parents=True, exist_ok=True)
            shutil.copy(workdir / f"{kind}.log", cfg.keep_logs / f"{kind}.log")
        shutil.rmtree(workdir, ignore_errors=True)
    total = sum(res.phase_seconds.values())
    log(f"    {LABEL[kind]} done in {total:,.0f} s ({_phases_text(res.phase_seconds)})")
    return res


def _phases_text(phases: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:,.1f} s" for k, v in phases.items())


# --------------------------------------------------------------------------- report


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def markdown(cfg: Config, results: list[PeerResult]) -> str:
    """The results as a markdown table, one column per peer."""
    shape = cfg.shape
    header = "| | " + " | ".join(r.label for r in results) + " |"
    lines = [
        f"Query/Retrieve, {shape.total_instances:,} instances ({shape.patients} patients x "
        f"{shape.studies} studies x {shape.series} series x {shape.instances} instances, "
        "64 x 64 16-bit CT/MR, about 9 KiB each), 127.0.0.1:",
        "",
        header,
        "|---|" + "---:|" * len(results),
    ]

    def row(title: str, cell: Callable[[PeerResult], str]) -> None:
        cells = []
        for r in results:
            if r.skipped:
                cells.append("n/a")
                continue
            try:
                cells.append(cell(r))
            except (KeyError, IndexError, TypeError):
                cells.append("FAILED")
        lines.append(f"| {title} | " + " | ".join(cells) + " |")

    block = cfg.block
    row("Ingest (store + index), instances/s", lambda r: _num(r.ingest["rate"]))
    row(
        f"Ingest, first → last {block:,} instances, instances/s",
        lambda r: f"{_num(r.ingest['first_block_rate'])} → {_num(r.ingest['last_block_rate'])}",
    )
    if cfg.verify != "none":

        def indexed(r: PeerResult) -> str:
            v = r.verify
            if "instances" in v:
                text = f"{v['instances']:,} / {v['expected_instances']:,}"
            else:
                text = f"{v['studies']} / {v['expected_studies']} studies"
            return text if v["ok"] else f"**{text}**"

        row("Indexed after ingest (C-FIND count)", indexed)
    for index, title in enumerate(("Patient ID", "Study Date range", "Patient Name wildcard")):

        def find_cell(r: PeerResult, index: int = index) -> str:
            f = r.find[index]
            count = f"{f['studies']}"
            if f["responses"] != f["studies"]:
                count += f", {f['responses']} responses"
            if not f["correct"]:
                count = f"**{count}, expected {f['expected_studies']}**"
            return f"{_num(f['median_ms'], 2)} / {_num(f['p90_ms'], 2)} ({count})"

        row(f"C-FIND {title}, median / p90 ms (studies)", find_cell)
    titles = next(
        ([m["move"] for m in r.move] for r in results if len(r.move) == 3),
        ["one study", "one patient", "a list of study UIDs"],
    )
    for index, case in enumerate(titles):

        def move_cell(r: PeerResult, index: int = index) -> str:
            m = r.move[index]
            bad = [run for run in m["runs"] if not run["ok"]]
            if not bad:
                return _num(m["rate"])
            worst = bad[0]
            why = (
                f"status {_status_text(worst['status'])}, {worst['completed']} completed, "
                f"{worst['files_received']} of {m['expected']} received"
            )
            if m["rate"] is None:
                return f"**fails: {why}**"
            return f"{_num(m['rate'])} (**{len(bad)} of {len(m['runs'])} runs failed: {why}**)"

        row(f"C-MOVE {case}, instances/s", move_cell)
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    def ver(name: str) -> str:
        try:
            return version(name)
        except Exception:
            return "not installed"

    def first_line(cmd: list[str]) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
            lines = (done.stdout or done.stderr).splitlines()
            return lines[0].strip("$ ").strip() if lines else "?"
        return "?"

    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{kib / 2**20:.1f} GiB"
    return {
        "python": platform.python_version(),
        "asyncdicom": ver("asyncdicom"),
        "anyio": ver("anyio"),
        "pydicom": ver("pydicom"),
        "pynetdicom": ver("pynetdicom"),
        "dcmtk": first_line([find_dcmtk_program("dcmqrscp") or "dcmqrscp", "--version"]),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": memory,
    }


# --------------------------------------------------------------------------- main


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "asyncdicom-bench" / "qr"


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def _peers(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in PEERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"peers are {', '.join(PEERS)}; got {text!r}")
    return list(dict.fromkeys(names))


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Config]:
    ap = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument(
        "--peers", type=_peers, default=list(PEERS), help="comma-separated: " + ",".join(PEERS)
    )
    ap.add_argument("--patients", type=_positive, default=125)
    ap.add_argument("--studies", type=_positive, default=4, help="studies per patient")
    ap.add_argument("--series", type=_positive, default=2, help="series per study")
    ap.add_argument("--instances", type=_positive, default=20, help="instances per series")
    ap.add_argument(
        "--scale",
        type=_positive,
        default=None,
        metavar="N",
        help="N instances in all: sets --patients to N / (studies x series x instances)",
    )
    ap.add_argument("--find-repeat", type=_positive, default=20, help="timed runs per C-FIND")
    ap.add_argument("--move-repeat", type=_positive, default=3, help="runs per C-MOVE (best kept)")
    ap.add_argument(
        "--move-studies", type=_positive, default=10, help="Study Instance UIDs in the list C-MOVE"
    )
    ap.add_argument(
        "--verify",
        choices=("full", "studies", "none"),
        default="full",
        help="C-FIND count after ingest: every instance, the studies only, or none",
    )
    ap.add_argument("--cache", type=Path, default=default_cache(), help="data set cache folder")
    ap.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where the peers' storage folders go (default: a temporary folder)",
    )
    ap.add_argument(
        "--ingest-timeout",
        type=float,
        default=None,
        help="seconds for one peer's ingest (default 300 + 0.25 s per instance)",
    )
    ap.add_argument(
        "--phase-timeout",
        type=float,
        default=None,
        help="seconds for each other phase (default 600 + 0.05 s per instance)",
    )
    ap.add_argument(
        "--keep-logs", type=Path, default=None, help="copy each peer's log into this folder"
    )
    ap.add_argument("--client-backend", choices=("asyncio", "trio"), default="asyncio")
    ap.add_argument("--output", type=Path, default=ROOT / "bench-results" / "qr.json")
    args = ap.parse_args(argv)
    patients = args.patients
    per_patient = args.studies * args.series * args.instances
    if args.scale is not None:
        if args.scale % per_patient:
            ap.error(f"--scale {args.scale} is not a multiple of {per_patient} (instances/patient)")
        patients = args.scale // per_patient
    shape = Shape(patients, args.studies, args.series, args.instances)
    n = shape.total_instances
    cfg = Config(
        shape=shape,
        peers=args.peers,
        block=1000 if n >= 2000 else max(1, n // 10),
        find_repeat=args.find_repeat,
        move_repeat=args.move_repeat,
        move_studies=args.move_studies,
        verify=args.verify,
        cache=args.cache,
        ingest_timeout=args.ingest_timeout or 300.0 + 0.25 * n,
        phase_timeout=args.phase_timeout or 600.0 + 0.05 * n,
        client_backend=args.client_backend,
        keep_logs=args.keep_logs,
    )
    return args, cfg


#: what a SIGTERM must undo before the process exits: stop peers, remove temporary folders
_ON_TERMINATE: list[Callable[[], None]] = []


def _terminate(signum: int, frame: object) -> None:
    for undo in reversed(_ON_TERMINATE):
        with contextlib.suppress(Exception):
            undo()
    os._exit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args, cfg = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    shape = cfg.shape
    require_dcmtk(("storescp", "dcmqrscp") if "dcmqrscp" in cfg.peers else ("storescp",))
    started = time.perf_counter()
    env = environment()
    log(f"data set {shape.label} ({shape.total_instances:,} instances) in {cfg.cache}")
    data_dir = cfg.cache / f"data-{shape.label}"
    patients = ensure_dataset(data_dir, shape)
    files = list(iter_instances(data_dir, shape))
    log(f"data set ready ({time.perf_counter() - started:,.1f} s)")

    results: list[PeerResult] = []
    skipped: dict[str, str] = {}
    ours_options: frozenset[str] = frozenset()
    deps: Path | None = None
    if "ours" in cfg.peers:
        ok, ours_options, why = ours_available()
        if not ok:
            skipped["ours"] = f"python -m asyncdicom qrscp is not available: {why}"
    if "dcmqrscp" in cfg.peers and shape.total_studies > DCMQRSCP_MAX_STUDIES:
        skipped["dcmqrscp"] = (
            f"{shape.total_studies} studies: dcmqrscp keeps at most {DCMQRSCP_MAX_STUDIES} per "
            "storage area (it would delete the oldest ones)"
        )
    if "pynetdicom" in cfg.peers:
        try:
            deps = pynetdicom_deps(cfg.cache)
        except Exception as exc:
            skipped["pynetdicom"] = f"{type(exc).__name__}: {exc}"

    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="asyncdicom-bench-qr-", dir=args.workdir))
    _ON_TERMINATE.append(partial(shutil.rmtree, tmp, ignore_errors=True))
    try:
        dest_dir = tmp / "move-destination"
        dest_dir.mkdir()
        with DcmtkStoreSCP(aet=DEST_AET, output_dir=dest_dir, max_pdu=MAX_PDU) as dest:
            _ON_TERMINATE.append(dest.stop)
            for kind in cfg.peers:
                if kind in skipped:
                    log(f"{LABEL[kind]}: skipped: {skipped[kind]}")
                    results.append(PeerResult(kind, LABEL[kind], skipped=skipped[kind]))
                    continue
                results.append(
                    bench_peer(
                        cfg, kind, patients, files, tmp, dest.port, dest_dir, deps, ours_options
                    )
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.perf_counter() - started

    table = markdown(cfg, results)
    notes = (
        f"Client: asyncdicom ({cfg.client_backend}) in one process, the same for every peer; "
        f"C-FIND: Study Root, STUDY level, median / p90 of {cfg.find_repeat} runs on one "
        f"association; C-MOVE: to DCMTK storescp writing to disk, best of {cfg.move_repeat}. "
        f"{env['cpu']}, {env['cores']} cores; Python {env['python']}, pynetdicom "
        f"{env['pynetdicom']}, {env['dcmtk']}."
    )
    print()
    print(table)
    print()
    print(notes)
    problems = [f"{r.label}: {p}" for r in results for p in r.problems]
    problems += [f"{LABEL[k]} skipped: {why}" for k, why in skipped.items()]
    for p in problems:
        print(f"problem: {p}")
    payload = {
        "config": asdict(cfg),
        "environment": env,
        "elapsed_s": elapsed,
        "results": [asdict(r) for r in results],
        "markdown": table,
        "notes": notes,
        "problems": problems,
        "command": [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"results written to {args.output} ({elapsed:,.0f} s)")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
