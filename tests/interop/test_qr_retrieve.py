"""Query/Retrieve GET and MOVE interop, both backends.

* DCMTK (3.6.x) against our SCP engine running in the test's event loop (an AE whose C-GET and
  C-MOVE handlers yield file paths): ``movescu`` moving to a DCMTK ``storescp``, ``getscu``
  writing into ``-od``, ``movescu --cancel N`` on a long move, and an unknown Move Destination
  (0xA801).  ``-d`` makes the DCMTK SCUs dump every incoming DIMSE message; the counts and
  statuses are read from those dumps (:func:`_incoming`).
* pynetdicom's SCU (``tests/harness/pynetdicom_qr_scu.py`` in a subprocess) doing C-FIND,
  C-GET and C-MOVE against our SCP.
* Our ``assoc.move()`` and ``assoc.get()`` against Orthanc (1.10; C-GET SCP since 1.7): the
  instances are stored there first with our ``store()``.  Orthanc only serves C-MOVE and C-GET
  for calling AE titles listed in its ``DicomModalities`` (unless ``DicomAlwaysAllowMove`` /
  ``DicomAlwaysAllowGet``), and sends a C-MOVE only to a destination listed there: the module's
  Orthanc is configured with our SCU's AE title, and each test registers its destination (an
  in-process storage SCP on an OS-chosen port) over REST once that listens.

The long C-MOVE cancelled by movescu is made deterministic by the destination: the first
``N`` C-STOREs are answered at once (so movescu gets its ``N`` Pending responses and sends
C-CANCEL-RQ); the next one is held until our SCP has seen the C-CANCEL-RQ (the destination
hangs a cancel scope on the C-MOVE request's ``cancel_scope``, which the association cancels
when the C-CANCEL-RQ arrives), so the move cannot finish before the cancel is noticed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from harness.orthanc import OrthancModality, OrthancPeer
from harness.peers import (
    DcmtkStoreSCP,
    assert_instances_match,
    dcmtk_env,
    find_dcmtk_program,
    instance_uid,
)
from pydicom import dcmread
from pydicom.dataset import Dataset

from asyncdicom import AE, presets, uids
from asyncdicom.services.retrieve import Retrieval
from asyncdicom.storage.synthetic import CT_IMAGE_STORAGE, make_ct_instance, write_ct_files
from tests.harness.launch import python_script

pytestmark = [pytest.mark.interop, pytest.mark.anyio]
dcmtk = pytest.mark.requires_peer("dcmtk")
pynetdicom_peer = pytest.mark.requires_peer("pynetdicom")
orthanc_peer = pytest.mark.requires_peer("orthanc")

GUARD = 60.0
PYNETDICOM_QR_SCU = Path(__file__).resolve().parents[1] / "harness" / "pynetdicom_qr_scu.py"

STUDIES = [
    ("1.2.826.0.1.3680043.10.1234.11.1", "DOE^JOHN"),
    ("1.2.826.0.1.3680043.10.1234.11.2", "DOE^JANE"),
]


class QRSCP:
    """Our Query/Retrieve SCP: C-FIND answers :data:`STUDIES`, C-GET and C-MOVE (every model)
    yield ``files``.  ``requests`` lists ``(SOP class, identifier)`` of each request, ``last``
    is the latest retrieve request (a ``ServiceRequest``)."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files
        self.requests: list[tuple[str, Dataset]] = []
        self.last: Any = None
        self.started = anyio.Event()
        self.ae = AE(
            "QRSCP",
            supported_contexts=presets.qr_supported() + presets.storage_supported(scu_role=True),
            accept_any_storage=True,
        )

        @self.ae.on("C-GET")
        @self.ae.on("C-MOVE")
        async def retrieve(request: Any) -> AsyncIterator[Path]:
            self.requests.append((request.sop_class_uid, await request.dataset()))
            self.last = request
            self.started.set()
            for path in self.files:
                yield path

        @self.ae.on("C-FIND")
        async def find(request: Any) -> AsyncIterator[Dataset]:
            query = await request.dataset()
            self.requests.append((request.sop_class_uid, query))
            for uid, name in STUDIES:
                ds = Dataset()
                ds.QueryRetrieveLevel = query.QueryRetrieveLevel
                ds.StudyInstanceUID = uid
                ds.PatientName = name
                yield ds


class Destination:
    """A storage SCP in the test's event loop that records each C-STORE-RQ it answers.

    With ``hold_after=N`` and ``move`` (the :class:`QRSCP` whose C-MOVE feeds it), the C-STOREs
    after the first ``N`` to arrive wait until that C-MOVE was cancelled by its SCU; it then
    grants no asynchronous operations window, so one C-STORE at a time is outstanding.
    """

    def __init__(
        self, folder: Path, *, aet: str = "DEST", hold_after: int | None = None, move: Any = None
    ) -> None:
        window = None if hold_after is None else (1, 1)
        self.ae = AE(aet, accept_any_storage=True, async_ops_window=window)
        self.received: list[Any] = []
        self.paths: list[Path] = []
        self.arrived = 0

        @self.ae.on_store
        async def on_store(request: Any) -> int:
            self.arrived += 1
            if hold_after is not None and self.arrived > hold_after:
                await _until_cancelled(move.last)
            self.paths.append(await request.save_to(folder))
            self.received.append(request.message)
            return 0x0000

    @property
    def uids(self) -> list[str]:
        return [m.affected_sop_instance_uid for m in self.received]


async def _until_cancelled(request: Any) -> None:
    """Return once the peer sent C-CANCEL-RQ for ``request`` (an operation our SCP performs).

    The association cancels the request's ``cancel_scope`` when the C-CANCEL-RQ arrives; the
    retrieve engine leaves it unset while it runs the sub-operations, so one is lent here (to
    one waiter at a time: a second would replace the first's scope)."""
    with anyio.CancelScope() as scope:
        request.cancel_scope = scope
        if not request.cancel_requested:
            await anyio.sleep_forever()
    request.cancel_scope = None
    assert request.cancel_requested


def _tool(name: str) -> str:
    path = find_dcmtk_program(name)
    if path is None:
        pytest.fail(f"DCMTK {name} not found (it comes with storescp: apt-get install dcmtk)")
    return path


async def _dcmtk(program: str, port: int, *args: str) -> tuple[int, str]:
    """Run a DCMTK SCU against 127.0.0.1:``port``; its exit code and output (stdout+stderr)."""
    with anyio.fail_after(GUARD):
        result = await anyio.run_process(
            [_tool(program), "-d", "-aec", "QRSCP", *args, "127.0.0.1", str(port)],
            env=dcmtk_env(),
            check=False,
        )
    return result.returncode, result.stdout.decode() + result.stderr.decode()


def _incoming(log: str, message_type: str) -> list[dict[str, str]]:
    """The DIMSE messages of ``message_type`` (e.g. ``C-MOVE RSP``) that a DCMTK SCU dumped
    with ``-d`` (``D: Field : value`` lines between INCOMING DIMSE MESSAGE and END DIMSE
    MESSAGE), in order."""
    found: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    for line in log.splitlines():
        text = line[3:] if line.startswith(("D: ", "I: ")) else line
        if "INCOMING DIMSE MESSAGE" in text:
            current = {}
        elif "END DIMSE MESSAGE" in text:
            if current is not None and current.get("Message Type") == message_type:
                found.append(current)
            current = None
        elif current is not None and ":" in text:
            key, _, value = text.partition(":")
            current[key.strip()] = value.strip()
    return found


def _status(message: dict[str, str]) -> int:
    """``DIMSE Status : 0xfe00: Cancel: ...`` -> 0xFE00."""
    return int(message["DIMSE Status"].split(":")[0], 16)


def _counts(message: dict[str, str]) -> tuple[int | None, ...]:
    """(remaining, completed, failed, warning) of a dumped C-MOVE/C-GET response."""

    def value(name: str) -> int | None:
        text = message.get(f"{name} Suboperations")
        return int(text) if text and text.isdigit() else None

    return tuple(value(n) for n in ("Remaining", "Completed", "Failed", "Warning"))


def _study_keys(study: str) -> list[str]:
    return ["-S", "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]


def _study_of(files: list[Path]) -> str:
    return str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


# ---------------------------------------------------------------------- DCMTK SCUs -> our SCP


@dcmtk
@pytest.mark.parametrize("model", ["study", "patient"])
async def test_dcmtk_movescu_to_dcmtk_storescp(
    tmp_path: Path, dcmtk_storescp: DcmtkStoreSCP, model: str
) -> None:
    files = write_ct_files(tmp_path / "archive", 5, 4000, patient_id="MOVE1")
    qr = QRSCP(files)
    qr.ae.move_destinations["STORESCP"] = (dcmtk_storescp.host, dcmtk_storescp.port)
    keys = (
        _study_keys(_study_of(files))
        if model == "study"
        else ["-P", "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=MOVE1"]
    )
    async with qr.ae.server() as server:
        code, log = await _dcmtk("movescu", server.port, "-aem", "STORESCP", *keys)
    assert code == 0, log
    ((sop_class, identifier),) = qr.requests
    if model == "study":
        assert sop_class == uids.STUDY_ROOT_QR_MOVE
        assert identifier.StudyInstanceUID == _study_of(files)
    else:
        assert sop_class == uids.PATIENT_ROOT_QR_MOVE
        assert identifier.PatientID == "MOVE1"
    responses = _incoming(log, "C-MOVE RSP")
    assert [_status(r) for r in responses] == [0xFF00] * 5 + [0x0000], log
    assert [_counts(r)[:2] for r in responses[:-1]] == [(4 - n, n + 1) for n in range(5)]
    assert _counts(responses[-1])[1:] == (5, 0, 0)
    # what storescp wrote matches what we sent (names are <modality>.<SOP Instance UID>)
    assert_instances_match(dcmtk_storescp.received_files(), files)


@dcmtk
async def test_dcmtk_getscu_writes_the_instances(tmp_path: Path) -> None:
    files = write_ct_files(tmp_path / "archive", 4, 4000)
    qr = QRSCP(files)
    out = tmp_path / "getscu"
    out.mkdir()
    async with qr.ae.server() as server:
        code, log = await _dcmtk("getscu", server.port, "-od", str(out), *_study_keys(
            _study_of(files)))  # fmt: skip
    assert code == 0, log
    assert [sop_class for sop_class, _ in qr.requests] == [uids.STUDY_ROOT_QR_GET]
    responses = _incoming(log, "C-GET RSP")
    assert [_status(r) for r in responses] == [0xFF00] * 4 + [0x0000], log
    assert _counts(responses[-1])[1:] == (4, 0, 0)
    assert len(_incoming(log, "C-STORE RQ")) == 4
    assert_instances_match(sorted(out.iterdir()), files)


@dcmtk
async def test_dcmtk_movescu_cancel_stops_a_long_move(tmp_path: Path) -> None:
    total, after = 30, 2
    files = write_ct_files(tmp_path / "archive", total, 1000)
    qr = QRSCP(files)
    dest = Destination(tmp_path / "dest", hold_after=after, move=qr)
    with anyio.fail_after(GUARD):
        async with dest.ae.server() as dest_server, qr.ae.server() as server:
            qr.ae.move_destinations["DEST"] = ("127.0.0.1", dest_server.port)
            code, log = await _dcmtk(
                "movescu", server.port, "-aem", "DEST", "--cancel", str(after),
                *_study_keys(_study_of(files)),
            )  # fmt: skip
    assert code == 0, log
    assert qr.last.cancel_requested
    responses = _incoming(log, "C-MOVE RSP")
    # movescu cancels after `after` Pending responses; no Pending response follows the cancel
    assert [_status(r) for r in responses] == [0xFF00] * after + [0xFE00], log
    assert log.index("Sending Cancel Request") < log.index("Received Final Move Response")
    remaining, completed, failed, warning = _counts(responses[-1])
    assert remaining is not None and completed is not None
    # no C-STORE starts after the cancel; the one held at the destination, if it had started
    # before the C-CANCEL-RQ was read, still completes
    assert completed in (after, after + 1) and (failed, warning) == (0, 0), log
    assert remaining == total - completed > 0
    assert len(dest.received) == completed < total
    assert_instances_match(dest.paths, [f for f in files if f.stem in set(dest.uids)])


@dcmtk
async def test_dcmtk_movescu_unknown_destination_is_a801(tmp_path: Path) -> None:
    files = write_ct_files(tmp_path / "archive", 2, 100)
    qr = QRSCP(files)
    qr.ae.move_destinations["STORESCP"] = ("127.0.0.1", 1)
    async with qr.ae.server() as server:
        code, log = await _dcmtk(
            "movescu", server.port, "-aem", "NOWHERE", *_study_keys(_study_of(files))
        )
    responses = _incoming(log, "C-MOVE RSP")
    assert [_status(r) for r in responses] == [0xA801], log
    assert "Refused: MoveDestinationUnknown" in log
    assert code != 0, log  # movescu reports the failed move in its exit status


# ---------------------------------------------------------------------- pynetdicom SCU -> our SCP


async def _pynetdicom(operation: str, port: int, *args: str) -> dict[str, Any]:
    """Run the pynetdicom Q/R SCU (own process) against 127.0.0.1:``port``; its JSON report."""
    with anyio.fail_after(GUARD):
        result = await anyio.run_process(
            [*python_script(PYNETDICOM_QR_SCU), operation, "127.0.0.1", str(port),
             "--called-aet", "QRSCP", "--timeout", "30", *args],
            check=False,
        )  # fmt: skip
    assert result.returncode == 0, (result.stdout.decode(), result.stderr.decode())
    report: dict[str, Any] = json.loads(result.stdout)
    return report


@pynetdicom_peer
async def test_pynetdicom_find(tmp_path: Path) -> None:
    qr = QRSCP([])
    async with qr.ae.server() as server:
        report = await _pynetdicom(
            "find", server.port, "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID",
            "-k", "PatientName=DOE*", "--model", "patient",
        )  # fmt: skip
    ((sop_class, query),) = qr.requests
    assert sop_class == uids.PATIENT_ROOT_QR_FIND
    assert str(query.PatientName) == "DOE*" and query.StudyInstanceUID == ""
    statuses = [r["status"] for r in report["responses"]]
    assert statuses == [0xFF00] * len(STUDIES) + [0x0000]
    found = [
        (r["identifier"]["StudyInstanceUID"], r["identifier"]["PatientName"])
        for r in report["responses"][:-1]
    ]
    assert found == STUDIES


@pynetdicom_peer
async def test_pynetdicom_get(tmp_path: Path) -> None:
    files = write_ct_files(tmp_path / "archive", 4, 3000)
    qr = QRSCP(files)
    out = tmp_path / "pynetdicom-get"
    async with qr.ae.server() as server:
        report = await _pynetdicom(
            "get", server.port, "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={_study_of(files)}", "--output-dir", str(out),
        )  # fmt: skip
    assert [sop_class for sop_class, _ in qr.requests] == [uids.STUDY_ROOT_QR_GET]
    responses = report["responses"]
    assert [r["status"] for r in responses] == [0xFF00] * 4 + [0x0000]
    assert [(r["remaining"], r["completed"]) for r in responses[:-1]] == [
        (3 - n, n + 1) for n in range(4)
    ]
    final = responses[-1]
    assert (final["completed"], final["failed"], final["warning"]) == (4, 0, 0)
    assert sorted(report["received"]) == sorted(f.stem for f in files)
    assert_instances_match(sorted(out.glob("*.dcm")), files)


@pynetdicom_peer
async def test_pynetdicom_move(tmp_path: Path) -> None:
    files = write_ct_files(tmp_path / "archive", 3, 3000)
    qr = QRSCP(files)
    dest = Destination(tmp_path / "dest")
    async with dest.ae.server() as dest_server, qr.ae.server() as server:
        qr.ae.move_destinations["DEST"] = ("127.0.0.1", dest_server.port)
        report = await _pynetdicom(
            "move", server.port, "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={_study_of(files)}", "--destination", "DEST",
        )  # fmt: skip
        unknown = await _pynetdicom(
            "move", server.port, "-k", "QueryRetrieveLevel=STUDY", "--destination", "NOWHERE"
        )
    assert [sop_class for sop_class, _ in qr.requests] == [uids.STUDY_ROOT_QR_MOVE] * 2
    responses = report["responses"]
    assert [r["status"] for r in responses] == [0xFF00] * 3 + [0x0000]
    assert (responses[-1]["completed"], responses[-1]["failed"]) == (3, 0)
    assert sorted(dest.uids) == sorted(f.stem for f in files)
    assert {m.move_originator_aet for m in dest.received} == {"PYNETDICOM-QR"}
    assert_instances_match(dest.paths, files)
    assert [r["status"] for r in unknown["responses"]] == [0xA801]


# ---------------------------------------------------------------------- our SCU -> Orthanc

SCU_AET = "ASYNCSCU"


@pytest.fixture(scope="module")
def retrieve_orthanc(require_orthanc: None) -> Iterator[OrthancPeer]:
    """An Orthanc that knows our SCU (C-MOVE and C-GET allowed for it; the port is never
    used: Orthanc does not call it)."""
    scu = OrthancModality(SCU_AET, port=104)
    with OrthancPeer(aet="ORTHANC", modalities={"asyncscu": scu}) as peer:
        yield peer
        peer.stop()
        log = peer.log_text()
        if log:
            sys.stderr.write(f"--- {peer.name} log ---\n{log}\n")


async def _fill(orthanc: OrthancPeer, count: int, tag: int) -> list[Dataset]:
    """Reset Orthanc and store ``count`` CT instances of one new study there (our store())."""
    await anyio.to_thread.run_sync(orthanc.reset)
    study = f"1.2.826.0.1.3680043.10.1234.12.{tag}"
    instances = [
        make_ct_instance(2000, patient_id="QRRET", seed=n, study_instance_uid=study,
                         instance_number=n + 1)
        for n in range(count)
    ]  # fmt: skip
    with anyio.fail_after(GUARD):
        async with AE(SCU_AET).associate(
            orthanc.host, orthanc.port, called_aet=orthanc.aet, contexts=[CT_IMAGE_STORAGE]
        ) as assoc:
            for ds in instances:
                assert (await assoc.store(ds)).status == 0x0000
    return instances


def _study_query(instances: list[Dataset]) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = instances[0].StudyInstanceUID
    return query


def _same_instances(paths: list[Path], instances: list[Dataset]) -> None:
    got = {instance_uid(p): dcmread(p) for p in paths}
    assert sorted(got) == sorted(ds.SOPInstanceUID for ds in instances)
    for ds in instances:
        assert got[ds.SOPInstanceUID].PixelData == ds.PixelData


@orthanc_peer
async def test_move_from_orthanc_to_our_storage_scp(
    retrieve_orthanc: OrthancPeer, tmp_path: Path
) -> None:
    instances = await _fill(retrieve_orthanc, 3, 1)
    dest = Destination(tmp_path / "dest", aet="ASYNCDEST")
    progress: list[tuple[Any, ...]] = []
    with anyio.fail_after(GUARD):
        async with dest.ae.server() as dest_server:
            await anyio.to_thread.run_sync(
                retrieve_orthanc.add_modality,
                "asyncdest",
                OrthancModality("ASYNCDEST", port=dest_server.port),
            )
            async with AE(SCU_AET).associate(
                retrieve_orthanc.host, retrieve_orthanc.port, called_aet=retrieve_orthanc.aet,
                contexts=presets.retrieve_contexts("move"),
            ) as assoc:  # fmt: skip
                async with assoc.move(
                    _study_query(instances), destination="ASYNCDEST"
                ) as retrieval:
                    assert isinstance(retrieval, Retrieval)
                    async for _ in retrieval:
                        progress.append((retrieval.remaining, retrieval.completed))
    assert retrieval.status == 0x0000 and retrieval.ok
    assert (retrieval.completed, retrieval.failed, retrieval.warning) == (3, 0, 0)
    assert retrieval.failed_instances == []
    # Orthanc 1.10 sends a Pending response after each sub-operation but the last
    assert progress, "no Pending response"
    assert progress == [(3 - n, n) for n in range(1, len(progress) + 1)]
    originators = {(m.move_originator_aet, m.move_originator_message_id) for m in dest.received}
    assert originators == {(SCU_AET, retrieval.operation.message_id)}
    assert sorted(dest.uids) == sorted(ds.SOPInstanceUID for ds in instances)
    _same_instances(dest.paths, instances)


@orthanc_peer
async def test_get_from_orthanc_into_a_folder(
    retrieve_orthanc: OrthancPeer, tmp_path: Path
) -> None:
    instances = await _fill(retrieve_orthanc, 3, 2)
    out = tmp_path / "get"
    with anyio.fail_after(GUARD):
        async with AE(SCU_AET).associate(
            retrieve_orthanc.host, retrieve_orthanc.port, called_aet=retrieve_orthanc.aet,
            contexts=presets.retrieve_contexts("get", storage=[CT_IMAGE_STORAGE]),
        ) as assoc:  # fmt: skip
            async with assoc.get(_study_query(instances), store=out) as retrieval:
                final = await retrieval.wait()
    assert final.status == 0x0000 and retrieval.ok
    assert (retrieval.completed, retrieval.failed, retrieval.warning) == (3, 0, 0)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in retrieval.received)
    _same_instances(list(retrieval.received), instances)
