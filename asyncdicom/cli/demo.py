"""``asyncdicom demo``: an SCP and an SCU in one process: echo, store, find and retrieve samples.

The sample files are :data:`SAMPLE_FILES`, taken from the test files that pydicom installs
(``pydicom/data/test_files``).  The demo names the folder, lists every file it sends, and reports
a sample this pydicom does not have, or cannot be read, instead of skipping it silently.  Two of
the samples (``MR_small.dcm`` and ``MR_small_RLE.dcm``: one image in two transfer syntaxes)
carry the same SOP Instance UID; the summary names them next to the number of files the SCP
wrote, so that a count of instances that differs from the count of files is explained.

After the C-FIND the SCU asks the SCP to commit to the instances it stored (Storage Commitment:
N-ACTION, the report comes back as N-EVENT-REPORT on the same association) and tells it which
instances are available (Instance Availability Notification: one N-CREATE per study), then
retrieves the
studies found: a C-GET (the SCP sends the files back on the SCU's association; they are written
to a folder in the media layout, and its DICOMDIR is written) and a C-MOVE to a second
in-process Storage SCP, the move destination, which accepts only uncompressed syntaxes when the
codecs are installed (the compressed samples are converted on the way).  Everything listens on
127.0.0.1.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset

from .. import __version__
from ..ae import AE
from ..errors import DICOMError, StorageError
from ..presets import (
    qr_supported,
    retrieve_contexts,
    storage_commitment_scp_supported,
    storage_supported,
)
from ..protocol import uids
from ..protocol.status import describe
from ..services import INSTANCE_AVAILABILITY_NOTIFICATION, AvailabilityReceiver
from ..services.commitment import CommitmentSCP, CommitmentTimeout
from ..storage.contexts import contexts_for_files
from .apps import APPS
from .options import add_common
from .output import ok, uid_name

if TYPE_CHECKING:
    from ..protocol.negotiation import ContextRequest
    from ..storage.reader import Part10Source

__all__ = ["SAMPLE_FILES", "add_parser", "run"]

#: the sample files sent, from pydicom's ``test_files``: several SOP classes, in uncompressed
#: (explicit and implicit VR) and compressed (JPEG 2000, RLE) transfer syntaxes
SAMPLE_FILES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "rtplan.dcm",
    "rtdose.dcm",
    "waveform_ecg.dcm",
    "JPEG2000.dcm",
    "MR_small_RLE.dcm",
    "SC_rgb_small_odd.dcm",
)


def add_parser(sub: Any) -> None:
    """Add the ``demo`` sub-command to ``sub``."""
    p = sub.add_parser(
        "demo",
        help=APPS["demo"],
        description=(
            "Start a Storage and Query/Retrieve SCP on 127.0.0.1, send it a C-ECHO and "
            "pydicom's sample files with C-STORE, find the studies with C-FIND, ask for "
            "storage commitment, retrieve them with C-GET and C-MOVE, and print what happened."
        ),
    )
    add_common(p)
    p.set_defaults(func=run)


def sample_folder() -> Path:
    """The folder of pydicom's test files."""
    import pydicom.data

    return Path(pydicom.data.__file__).parent / "test_files"


@dataclass
class _Sample:
    path: Path
    source: Part10Source | None = None
    #: why the file is not sent (missing, unreadable, not DICOM)
    problem: str | None = None


def _samples() -> list[_Sample]:
    from ..errors import InvalidDicomFile
    from ..storage.reader import read_part10_for_send

    folder = sample_folder()
    samples = []
    for name in SAMPLE_FILES:
        sample = _Sample(folder / name)
        try:
            sample.source = read_part10_for_send(sample.path)
        except FileNotFoundError:
            sample.problem = "missing: this pydicom does not ship it"
        except (InvalidDicomFile, OSError) as exc:
            sample.problem = f"not sent: {exc}"
        samples.append(sample)
    return samples


def _shared_uids(sent: list[_Sample]) -> list[str]:
    """One phrase per SOP Instance UID that several sent files carry."""
    by_uid: dict[str, list[str]] = {}
    for sample in sent:
        assert sample.source is not None
        by_uid.setdefault(sample.source.sop_instance_uid, []).append(sample.path.name)
    return [
        f"{' and '.join(names)} carry the same SOP Instance UID, {uid}"
        for uid, names in by_uid.items()
        if len(names) > 1
    ]


async def run(args: argparse.Namespace) -> int:
    """Run the demo; 0 if the C-ECHO and every C-STORE succeeded."""
    import pydicom
    from rich.console import Console
    from rich.table import Table

    console = Console()
    samples = _samples()
    sendable = [s for s in samples if s.source is not None]
    received: set[str] = set()
    written: set[Path] = set()
    ok_all = True
    stored: list[_Sample] = []
    with tempfile.TemporaryDirectory(prefix="asyncdicom-demo-") as tmp:
        scp = AE(
            "DEMO-SCP",
            accept_any_storage=True,
            # FIND, GET and MOVE; the storage classes also in the SCU role, for C-GET's C-STOREs;
            # Storage Commitment as SCP
            supported_contexts=qr_supported()
            + storage_supported(scu_role=True)
            + storage_commitment_scp_supported(),
        )
        studies: dict[str, Dataset] = {}  # what the SCP's C-FIND answers from
        files_by_study: dict[str, list[Path]] = {}  # ... and its C-GET and C-MOVE

        @scp.on_store
        async def on_store(request: Any) -> int:
            path = await request.save_to(tmp)
            written.add(path)
            received.add(request.message.affected_sop_instance_uid)
            header = path.header()  # the stored data set without its pixel data
            study_uid = str(header.get("StudyInstanceUID", "?"))
            files_by_study.setdefault(study_uid, []).append(path)
            study = studies.setdefault(study_uid, Dataset())
            for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate"):
                if keyword in header:
                    setattr(study, keyword, header.get(keyword))
            return 0x0000

        @scp.on("C-FIND", sop_class=uids.STUDY_ROOT_QR_FIND)
        async def on_find(request: Any) -> AsyncIterator[Dataset]:
            # the demo answers every STUDY-level query with every study it holds (a real SCP
            # matches the keys: see asyncdicom.qr)
            for study in studies.values():
                match = Dataset()
                match.QueryRetrieveLevel = "STUDY"
                for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate"):
                    setattr(match, keyword, study.get(keyword, ""))
                yield match

        table = Table(title=f"asyncdicom {__version__} demo ({args.backend})")
        for col in ("operation", "object", "SOP class", "transfer syntax", "size", "status", "ms"):
            table.add_column(col)

        # Instance Availability Notification (SCP): the studies the SCU says are available
        notified: dict[str, int] = {}

        def on_notification(_uid: str, notification: Dataset) -> None:
            instances = sum(
                len(series.get("ReferencedSOPSequence", []))
                for series in notification.get("ReferencedSeriesSequence", [])
            )
            notified[str(notification.StudyInstanceUID)] = instances

        scp.install(AvailabilityReceiver(on_notification))

        def committed(references: list[tuple[str, str]]) -> dict[str, int]:
            # Storage Commitment: the instances the SCP did not receive fail (0x0112)
            return {uid: 0x0112 for _cls, uid in references if uid not in received}

        async with (
            CommitmentSCP(scp, committed),
            scp.server("127.0.0.1", 0) as server,
        ):
            contexts = contexts_for_files(s.source for s in sendable if s.source is not None)
            async with AE("DEMO-SCU").associate(
                "127.0.0.1",
                server.port,
                called_aet="DEMO-SCP",
                contexts=[
                    uids.VERIFICATION,
                    uids.STUDY_ROOT_QR_FIND,
                    uids.STORAGE_COMMITMENT_PUSH_MODEL,
                    INSTANCE_AVAILABILITY_NOTIFICATION,
                    *contexts,
                ],
            ) as assoc:
                t0 = time.perf_counter()
                status = (await assoc.echo()).status
                ok_all &= status == 0
                ms = f"{(time.perf_counter() - t0) * 1000:.1f}"
                table.add_row("C-ECHO", "-", "Verification", "-", "-", _status(status), ms)
                for sample in samples:
                    if sample.source is None:
                        table.add_row("-", sample.path.name, "-", "-", "-", sample.problem, "-")
                        continue
                    source = sample.source
                    t0 = time.perf_counter()
                    try:
                        status = (await assoc.store(source)).status
                    except (DICOMError, StorageError, OSError) as exc:
                        outcome, good = f"not sent: {exc}", False
                    else:
                        good = ok(status) and source.sop_instance_uid in received
                        outcome = _status(status) + ("" if good else " (not received)")
                    ms = f"{(time.perf_counter() - t0) * 1000:.1f}"
                    if good:
                        stored.append(sample)
                    ok_all &= good
                    table.add_row(
                        "C-STORE",
                        sample.path.name,
                        uid_name(source.sop_class_uid, show_uid=False),
                        uid_name(source.transfer_syntax_uid, show_uid=False),
                        f"{sample.path.stat().st_size / 1024:.0f} KiB",
                        outcome,
                        ms,
                    )
                t0 = time.perf_counter()
                query = Dataset()
                query.QueryRetrieveLevel = "STUDY"
                for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate"):
                    setattr(query, keyword, "")
                try:
                    async with assoc.find(query, model="study") as results:
                        matches = [m async for m in results]
                    final = results.status
                except DICOMError as exc:
                    matches, final, found = [], None, f"failed: {exc}"
                else:
                    status_text = "no final response" if final is None else _status(final)
                    found = f"{len(matches)} studies; {status_text}"
                good = final == 0 and len(matches) == len(studies)
                ok_all &= good
                ms = f"{(time.perf_counter() - t0) * 1000:.1f}"
                table.add_row("C-FIND", "STUDY level", "Study Root FIND", "-", "-", found, ms)
                row, good = await _commit(assoc, stored)
                table.add_row(*row)
                ok_all &= good
                row, good = await _notify(assoc, stored, notified)
                table.add_row(*row)
                ok_all &= good

            @scp.on("C-GET", sop_class=uids.STUDY_ROOT_QR_GET)
            @scp.on("C-MOVE", sop_class=uids.STUDY_ROOT_QR_MOVE)
            async def on_retrieve(request: Any) -> AsyncIterator[Path]:
                # the files of the studies asked for (Study Instance UID list matching)
                for uid in _uids(await request.dataset()):
                    for path in files_by_study.get(uid, []):
                        yield path

            wanted = [str(m.StudyInstanceUID) for m in matches if m.get("StudyInstanceUID")]
            compressed = sum(
                1
                for path in written
                if _file_syntax(path)
                not in (uids.EXPLICIT_VR_LITTLE_ENDIAN, uids.IMPLICIT_VR_LITTLE_ENDIAN)
            )
            # C-GET: the storage contexts the samples need (a compressed file comes as it is
            # stored, so its transfer syntax needs a context of its own), with the SCP role
            storage = [
                replace(c, scu_role=False, scp_role=True)
                for c in contexts_for_files(s.source for s in stored if s.source is not None)
            ]
            media, got = Path(tmp) / "got", list[Path]()
            for row, good in (
                await _get(server.port, wanted, storage, media, len(written), got),
                await _dicomdir(media, got),
                await _move(scp, server.port, wanted, len(written), compressed),
                await _route(stored, Path(tmp) / "router-queue"),
            ):
                table.add_row(*row)
                ok_all &= good
    console.print(f"Sample files from pydicom {pydicom.__version__}: {sample_folder()}")
    console.print(table)
    for sample in samples:
        if sample.source is None:
            console.print(f"{sample.path.name}: {sample.problem}")
    files = "file" if len(written) == 1 else "files"
    summary = f"{len(stored)} of {len(sendable)} files stored; the SCP wrote {len(written)} {files}"
    shared = _shared_uids(stored)
    if shared:
        summary += "; " + "; ".join(shared)
    console.print(summary + ("; all good." if ok_all else "; FAILURES above."))
    return 0 if ok_all else 1


def _file_syntax(path: Path) -> str:
    """The Transfer Syntax UID of a stored Part 10 file (empty if it cannot be read)."""
    from pydicom.filereader import read_file_meta_info

    try:
        return str(read_file_meta_info(path).get("TransferSyntaxUID", ""))
    except (OSError, ValueError):
        return ""


def _status(status: int) -> str:
    """``0x0000 Success``; another status with its meaning."""
    return "0x0000 Success" if status == 0 else describe(status)


def _uids(identifier: Dataset) -> list[str]:
    """The Study Instance UIDs of a retrieve identifier (one value or a list)."""
    value = identifier.get("StudyInstanceUID")
    if not value:
        return []
    return [str(v) for v in value] if not isinstance(value, str) else [value]


def _study_identifier(study_uids: list[str]) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = study_uids
    return ds


def _counts(retrieval: Any, status: int | None) -> str:
    done = f"{retrieval.completed or 0} completed, {retrieval.failed or 0} failed"
    return f"{done}; " + ("no final response" if status is None else _status(status))


_Row = tuple[tuple[str, str, str, str, str, str, str], bool]


async def _commit(assoc: Any, stored: list[_Sample]) -> _Row:
    """Storage Commitment of the stored samples (N-ACTION, then the N-EVENT-REPORT on the same
    association): the table row, and whether the SCP committed to every one."""
    instances = {
        (s.source.sop_class_uid, s.source.sop_instance_uid) for s in stored if s.source is not None
    }
    t0 = time.perf_counter()
    try:
        result = await assoc.commit(sorted(instances), timeout=10.0)
    except (CommitmentTimeout, DICOMError) as exc:
        outcome, good = f"failed: {exc}", False
    else:
        outcome = (
            f"{len(result.committed)} committed, {len(result.failed)} failed; "
            f"event type {result.event_type}"
        )
        good = result.ok and len(result.committed) == len(instances)
    ms = f"{(time.perf_counter() - t0) * 1000:.1f}"
    what = f"{len(instances)} instances"
    return ("N-ACTION", what, "Storage Commitment", "-", "-", outcome, ms), good


async def _notify(assoc: Any, stored: list[_Sample], notified: dict[str, int]) -> _Row:
    """Instance Availability Notification of the stored samples: one N-CREATE per study, its
    series and instances ONLINE at DEMO-SCP; the table row, and whether the SCP took each."""
    import pydicom
    from pydicom.sequence import Sequence

    studies: dict[str, dict[str, list[Dataset]]] = {}
    for sample in stored:
        header = pydicom.dcmread(sample.path, stop_before_pixels=True)
        reference = Dataset()
        reference.ReferencedSOPClassUID = header.SOPClassUID
        reference.ReferencedSOPInstanceUID = header.SOPInstanceUID
        reference.InstanceAvailability = "ONLINE"
        reference.RetrieveAETitle = "DEMO-SCP"
        series = studies.setdefault(str(header.StudyInstanceUID), {})
        series.setdefault(str(header.SeriesInstanceUID), []).append(reference)
    t0 = time.perf_counter()
    statuses: list[int] = []
    try:
        for study_uid, series in studies.items():
            notification = Dataset()
            notification.StudyInstanceUID = study_uid
            items = []
            for series_uid, references in series.items():
                item = Dataset()
                item.SeriesInstanceUID = series_uid
                item.ReferencedSOPSequence = Sequence(references)
                items.append(item)
            notification.ReferencedSeriesSequence = Sequence(items)
            statuses.append((await assoc.notify_availability(notification)).status)
    except DICOMError as exc:
        outcome, good = f"failed: {exc}", False
    else:
        failed = [s for s in statuses if s != 0]
        good = not failed and notified.keys() == studies.keys()
        outcome = f"{len(statuses)} notifications; " + (
            f"{sum(notified.values())} instances ONLINE; 0x0000 Success"
            if not failed
            else ", ".join(_status(s) for s in failed)
        )
    ms = f"{(time.perf_counter() - t0) * 1000:.1f}"
    what = f"{len(studies)} studies"
    return ("N-CREATE", what, "Instance Availability", "-", "-", outcome, ms), good


async def _get(
    port: int,
    study_uids: list[str],
    storage: list[ContextRequest],
    folder: Path,
    expected: int,
    got: list[Path],
) -> _Row:
    """C-GET of the studies into ``folder``, in the media layout (their paths added to
    ``got``): the table row, and whether every file came."""
    from ..services.retrieve import RetrieveFailed

    t0 = time.perf_counter()
    contexts = retrieve_contexts("get", model="study", storage=()) + storage
    what = f"{len(study_uids)} studies"
    try:
        async with AE("DEMO-SCU").associate(
            "127.0.0.1", port, called_aet="DEMO-SCP", contexts=contexts
        ) as assoc:
            async with assoc.get(
                _study_identifier(study_uids), store=folder, model="study", layout="media"
            ) as retrieval:
                await retrieval.wait()
        got.extend(retrieval.received)
    except (RetrieveFailed, DICOMError, OSError) as exc:
        outcome, good = f"failed: {exc}", False
    else:
        written = len(retrieval.received)
        outcome = f"{_counts(retrieval, retrieval.status)}; {written} files written"
        good = retrieval.status == 0 and written == expected
    ms = f"{(time.perf_counter() - t0) * 1000:.1f}"
    return ("C-GET", what, "Study Root GET", "-", "-", outcome, ms), good


async def _dicomdir(folder: Path, got: list[Path]) -> _Row:
    """``folder/DICOMDIR`` for the files the C-GET wrote (in a worker thread): the table row,
    and whether it lists every instance whose directory record can be made (an instance
    without a key its record needs is said on standard error)."""
    import anyio

    from ..storage.dicomdir import update_dicomdir
    from ..storage.media import stored_instance_uid

    problems: list[str] = []

    def problem(path: Path, reason: str) -> None:
        problems.append(reason)
        print(f"demo: DICOMDIR: {path}: {reason}", file=sys.stderr)

    def update() -> tuple[int, int]:
        listed = update_dicomdir(folder, got, on_error=problem) or 0
        return listed, len({stored_instance_uid(p) or str(p) for p in got})

    t0 = time.perf_counter()
    try:
        listed, instances = await anyio.to_thread.run_sync(update)
    except OSError as exc:
        outcome, good = f"not written: {exc}", False
    else:
        outcome = f"lists {listed} instances"
        if problems:
            outcome += f"; {len(problems)} lack a key their record needs"
        good = bool(got) and listed + len(problems) == instances
    ms = f"{(time.perf_counter() - t0) * 1000:.1f}"
    what = f"{len(got)} files of the C-GET"
    return ("DICOMDIR", what, "Media Storage Directory", "-", "-", outcome, ms), good


async def _move(scp: AE, port: int, study_uids: list[str], expected: int, compressed: int) -> _Row:
    """C-MOVE of the studies to a second Storage SCP, DEMO-DEST: the table row, and whether
    every instance arrived there.  With the codecs installed DEMO-DEST accepts only the
    uncompressed transfer syntaxes, so the ``compressed`` instances arrive converted (the
    C-MOVE SCP transcodes them); without them it accepts every syntax."""
    from ..services.retrieve import RetrieveFailed
    from ..storage.transcoding import can_decode

    uncompressed = (uids.EXPLICIT_VR_LITTLE_ENDIAN, uids.IMPLICIT_VR_LITTLE_ENDIAN)
    only_uncompressed = can_decode(uids.RLE_LOSSLESS)
    arrived: list[str] = []
    dest = (
        AE("DEMO-DEST", supported_contexts=storage_supported(uncompressed))
        if only_uncompressed
        else AE("DEMO-DEST", accept_any_storage=True)
    )

    @dest.on_store
    async def on_store(request: Any) -> int:
        await request.discard()
        arrived.append(request.message.affected_sop_instance_uid)
        return 0x0000

    t0 = time.perf_counter()
    what = f"{len(study_uids)} studies to DEMO-DEST"
    syntaxes = "-"
    try:
        async with dest.server("127.0.0.1", 0) as dest_server:
            scp.move_destinations["DEMO-DEST"] = ("127.0.0.1", dest_server.port)
            async with AE("DEMO-SCU").associate(
                "127.0.0.1",
                port,
                called_aet="DEMO-SCP",
                contexts=retrieve_contexts("move", model="study"),
            ) as assoc:
                async with assoc.move(
                    _study_identifier(study_uids), destination="DEMO-DEST", model="study"
                ) as retrieval:
                    await retrieval.wait()
    except (RetrieveFailed, DICOMError, OSError) as exc:
        outcome, good = f"failed: {exc}", False
    else:
        outcome = f"{_counts(retrieval, retrieval.status)}; DEMO-DEST received {len(arrived)}"
        if only_uncompressed:
            syntaxes = f"uncompressed only: {compressed} converted"
        good = retrieval.status == 0 and len(arrived) == expected
    ms = f"{(time.perf_counter() - t0) * 1000:.1f}"
    return ("C-MOVE", what, "Study Root MOVE", syntaxes, "-", outcome, ms), good


async def _route(stored: list[_Sample], queue: Path) -> _Row:
    """The stored samples through DEMO-ROUTER (``asyncdicom router``'s :class:`Router`, its
    queue in ``queue``) to DEMO-DEST: the table row, and whether every one arrived."""
    from ..router.core import Router
    from ..router.rules import Destination, RuleSet

    arrived: list[str] = []
    dest = AE("DEMO-DEST", accept_any_storage=True)

    @dest.on_store
    async def on_store(request: Any) -> int:
        await request.discard()
        arrived.append(request.message.affected_sop_instance_uid)
        return 0x0000

    sources = [s.source for s in stored if s.source is not None]
    t0 = time.perf_counter()
    try:
        async with dest.server("127.0.0.1", 0) as dest_server:
            target = Destination("DEMO-DEST", "127.0.0.1", dest_server.port)
            async with (
                Router("DEMO-ROUTER", queue, RuleSet((target,))) as router,
                router.ae.server("127.0.0.1", 0) as router_server,
            ):
                async with AE("DEMO-SCU").associate(
                    "127.0.0.1",
                    router_server.port,
                    called_aet="DEMO-ROUTER",
                    contexts=contexts_for_files(sources),
                ) as assoc:
                    statuses = [(await assoc.store(source)).status for source in sources]
                await router.wait_idle()
    except (DICOMError, OSError) as exc:
        outcome, good = f"failed: {exc}", False
    else:
        acked = sum(1 for status in statuses if status == 0)
        outcome = f"{acked} queued; DEMO-DEST received {len(arrived)}"
        good = acked == len(sources) == len(arrived)
    ms = f"{(time.perf_counter() - t0) * 1000:.1f}"
    what = f"{len(sources)} files via DEMO-ROUTER to DEMO-DEST"
    return ("ROUTE", what, "Storage (store and forward)", "-", "-", outcome, ms), good
