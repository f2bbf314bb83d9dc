"""Query/Retrieve FIND interop: DCMTK ``findscu`` (3.6.x) against our C-FIND SCP, and our
``find()`` against Orthanc (instances stored there first with our ``store()``).

``findscu -S`` queries the Study Root model (``-P`` Patient Root), ``-k`` sets the keys,
``-X`` writes each Pending response's identifier to ``rsp0001.dcm``, ... in ``-od DIR``, and
``--cancel N`` sends C-CANCEL-RQ after N responses.  Our SCP runs in the test's event loop,
findscu with ``anyio.run_process`` (``dcmtk_env()``, as in test_dcmtk.py).

Orthanc (1.10) answers C-FIND from an AE title that is not in its ``DicomModalities`` only
with ``DicomAlwaysAllowFind``; the module starts its own Orthanc with it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from harness.orthanc import OrthancPeer
from harness.peers import dcmtk_env
from pydicom import dcmread
from pydicom.dataset import Dataset

from asyncdicom import AE, presets, uids
from asyncdicom.storage.synthetic import CT_IMAGE_STORAGE, make_ct_instance

pytestmark = [pytest.mark.interop, pytest.mark.anyio]
dcmtk = pytest.mark.requires_peer("dcmtk")
orthanc_peer = pytest.mark.requires_peer("orthanc")

STUDIES = [
    ("1.2.826.0.1.3680043.10.1234.9.1", "DOE^JOHN", "20240301"),
    ("1.2.826.0.1.3680043.10.1234.9.2", "DOE^JANE", "20240412"),
    ("1.2.826.0.1.3680043.10.1234.9.3", "ROE^RICHARD", "20230101"),
]


def _scp(queries: list[tuple[str, Dataset]], state: dict[str, Any]) -> AE:
    scp = AE("QRSCP", supported_contexts=presets.qr_find_supported())

    @scp.on("C-FIND")
    async def find(request: Any) -> AsyncIterator[Dataset]:
        query = await request.dataset()
        queries.append((request.sop_class_uid, query))
        count = int(state.get("count", len(STUDIES)))
        try:
            for i in range(count):
                uid, name, date = STUDIES[i % len(STUDIES)]
                ds = Dataset()
                ds.QueryRetrieveLevel = query.QueryRetrieveLevel
                ds.StudyInstanceUID = uid if count == len(STUDIES) else f"{uid}.{i}"
                ds.PatientName = name
                ds.StudyDate = date
                state["yielded"] = i + 1
                yield ds
        finally:
            state["closed"] = True

    return scp


async def _findscu(port: int, out: Path, *args: str) -> Any:
    with anyio.fail_after(60):
        return await anyio.run_process(
            ["findscu", "-aec", "QRSCP", "-X", "-od", str(out), *args, "127.0.0.1", str(port)],
            env=dcmtk_env(),
            check=False,
        )


def _responses(folder: Path) -> list[Dataset]:
    return [dcmread(p) for p in sorted(folder.glob("rsp*.dcm"))]


@dcmtk
async def test_dcmtk_findscu_study_root(tmp_path: Path) -> None:
    queries: list[tuple[str, Dataset]] = []
    state: dict[str, Any] = {}
    async with _scp(queries, state).server() as server:
        result = await _findscu(
            server.port, tmp_path, "-S",
            "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientName=DOE*",
            "-k", "StudyInstanceUID", "-k", "0008,0020",
        )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    (sop_class, query), = queries  # fmt: skip
    assert sop_class == uids.STUDY_ROOT_QR_FIND
    assert query.QueryRetrieveLevel == "STUDY" and str(query.PatientName) == "DOE*"
    assert query.StudyInstanceUID == "" and query.StudyDate == ""
    found = [(r.StudyInstanceUID, str(r.PatientName), r.StudyDate) for r in _responses(tmp_path)]
    assert found == STUDIES


@dcmtk
async def test_dcmtk_findscu_patient_root(tmp_path: Path) -> None:
    queries: list[tuple[str, Dataset]] = []
    async with _scp(queries, {}).server() as server:
        result = await _findscu(
            server.port, tmp_path, "-P", "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID"
        )
    assert result.returncode == 0, result.stderr.decode()
    assert queries[0][0] == uids.PATIENT_ROOT_QR_FIND
    assert len(_responses(tmp_path)) == len(STUDIES)


@dcmtk
async def test_dcmtk_findscu_cancel_stops_a_long_find(tmp_path: Path) -> None:
    state: dict[str, Any] = {"count": 10_000}
    async with _scp([], state).server() as server:
        result = await _findscu(
            server.port, tmp_path, "-v", "-S", "--cancel", "3",
            "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID",
        )  # fmt: skip
    # the framework closes the generator before it sends the final response findscu waited for
    log = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, log
    assert state["closed"] and state["yielded"] < 10_000
    assert "Received Final Find Response (Cancel" in log, log
    assert len(_responses(tmp_path)) < 10_000


# ---------------------------------------------------------------------- our find() -> Orthanc


@pytest.fixture(scope="module")
def find_orthanc(require_orthanc: None) -> Iterator[OrthancPeer]:
    with OrthancPeer(aet="ORTHANC", extra_config={"DicomAlwaysAllowFind": True}) as peer:
        yield peer
        peer.stop()


@orthanc_peer
async def test_find_against_orthanc(find_orthanc: OrthancPeer) -> None:
    await anyio.to_thread.run_sync(find_orthanc.reset)
    studies = {"1.2.826.0.1.3680043.10.1234.8.1": "QRA", "1.2.826.0.1.3680043.10.1234.8.2": "QRB"}
    instances = [
        make_ct_instance(256, patient_id=patient, seed=n, study_instance_uid=study,
                         instance_number=n)
        for n, (study, patient) in enumerate([*studies.items(), *studies.items()], start=1)
    ]  # fmt: skip
    contexts = [*presets.QR_FIND, CT_IMAGE_STORAGE]
    with anyio.fail_after(60):
        async with AE("ASYNCSCU").associate(
            find_orthanc.host, find_orthanc.port, called_aet=find_orthanc.aet, contexts=contexts
        ) as assoc:
            for ds in instances:
                assert (await assoc.store(ds)).status == 0x0000
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.StudyInstanceUID = ""
            query.PatientID = ""
            async with assoc.find(query) as results:
                found = {m.StudyInstanceUID: m.PatientID async for m in results}
            assert results.status == 0x0000
            assert found == studies
            query.PatientID = "QRB"
            async with assoc.find(query, model="patient") as by_patient:
                matches = [m.StudyInstanceUID async for m in by_patient]
            assert matches == ["1.2.826.0.1.3680043.10.1234.8.2"]
            image = Dataset()
            image.QueryRetrieveLevel = "IMAGE"
            image.StudyInstanceUID = "1.2.826.0.1.3680043.10.1234.8.1"
            image.SeriesInstanceUID = instances[0].SeriesInstanceUID
            image.SOPInstanceUID = ""
            async with assoc.find(image) as images:
                uids_found = sorted([m.SOPInstanceUID async for m in images])
            assert uids_found == sorted(
                ds.SOPInstanceUID
                for ds in instances
                if ds.SeriesInstanceUID == image.SeriesInstanceUID
            )
