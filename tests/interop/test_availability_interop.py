"""Instance Availability Notification (PS3.4 Annex R) with pynetdicom both ways: pynetdicom's
N-CREATE to asyncdicom's :class:`~asyncdicom.services.AvailabilityReceiver`, and asyncdicom's
``notify_availability()`` to a pynetdicom SCP (``tests/harness/pynetdicom_ian.py``).  Both
backends; everything on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path
from subprocess import PIPE
from typing import Any

import anyio
import pytest
from pydicom.dataset import Dataset
from test_cli import ENV, GUARD

from asyncdicom import AE, ContextRequest, uids
from asyncdicom.services import INSTANCE_AVAILABILITY_NOTIFICATION, AvailabilityReceiver
from tests.harness.launch import python_script

pytestmark = [pytest.mark.interop, pytest.mark.anyio]

HARNESS = Path(__file__).resolve().parents[1] / "harness" / "pynetdicom_ian.py"
STUDY = "1.2.826.0.1.3680043.10.9.33.1"
SERIES = "1.2.826.0.1.3680043.10.9.33.2"
INSTANCES = [
    (SERIES, uids.CT_IMAGE_STORAGE, "1.2.826.0.1.3680043.10.9.33.3"),
    (SERIES, uids.CT_IMAGE_STORAGE, "1.2.826.0.1.3680043.10.9.33.4"),
]


def notification() -> Dataset:
    """A notification built here by hand (PS3.3 C.4.23), not by the harness."""
    ds = Dataset()
    ds.StudyInstanceUID = STUDY
    ds.ReferencedPerformedProcedureStepSequence = []
    series = Dataset()
    series.SeriesInstanceUID = SERIES
    refs = []
    for _series, sop_class, sop_instance in INSTANCES:
        ref = Dataset()
        ref.ReferencedSOPClassUID = sop_class
        ref.ReferencedSOPInstanceUID = sop_instance
        ref.InstanceAvailability = "NEARLINE"
        ref.RetrieveAETitle = "ARCHIVE"
        refs.append(ref)
    series.ReferencedSOPSequence = refs
    ds.ReferencedSeriesSequence = [series]
    return ds


@pytest.mark.requires_peer("pynetdicom")
async def test_pynetdicom_scu_notifies_asyncdicom(anyio_backend: str) -> None:
    received: list[tuple[str, Dataset]] = []

    async def on_notification(uid: str, ds: Dataset) -> None:
        received.append((uid, ds))

    scp = AE("IANSCP")
    scp.install(AvailabilityReceiver(on_notification))
    uid = "1.2.826.0.1.3680043.10.9.33.99"
    with anyio.fail_after(GUARD):
        async with scp.server("127.0.0.1", 0) as server:
            command = [
                *python_script(HARNESS), "scu", "127.0.0.1", str(server.port),
                "--called-aet", "IANSCP", "--study", STUDY, "--uid", uid,
                *(arg for i in INSTANCES for arg in ("--instance", "=".join(i))),
            ]  # fmt: skip
            done = await anyio.run_process(command, env=ENV, check=False)
    answer: dict[str, Any] = json.loads(done.stdout)
    assert done.returncode == 0, (answer, done.stderr.decode())
    assert answer["status"] == 0x0000
    assert [u for u, _ds in received] == [uid]
    ds = received[0][1]
    assert ds.StudyInstanceUID == STUDY
    refs = ds.ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert [(r.ReferencedSOPInstanceUID, r.InstanceAvailability) for r in refs] == [
        (i[2], "ONLINE") for i in INSTANCES
    ]


@pytest.mark.requires_peer("pynetdicom")
async def test_asyncdicom_scu_notifies_pynetdicom(anyio_backend: str) -> None:
    command = [*python_script(HARNESS), "scp", "--port", "0", "--aet", "PYIAN"]
    with anyio.fail_after(GUARD):
        async with await anyio.open_process(command, env=ENV, stdin=PIPE, stdout=PIPE) as peer:
            assert peer.stdout is not None and peer.stdin is not None
            out = b""
            while b"\n" not in out:
                out += await peer.stdout.receive()
            line, _, rest = out.partition(b"\n")
            assert line.startswith(b"READY "), out
            port = int(line.split()[1])
            ae = AE("IANSCU")
            context = ContextRequest(
                INSTANCE_AVAILABILITY_NOTIFICATION,
                (uids.EXPLICIT_VR_LITTLE_ENDIAN, uids.IMPLICIT_VR_LITTLE_ENDIAN),
            )
            uid = "1.2.826.0.1.3680043.10.9.33.98"
            async with ae.associate(
                "127.0.0.1", port, called_aet="PYIAN", contexts=[context]
            ) as assoc:
                ok = await assoc.notify_availability(notification(), sop_instance=uid)
                refused = await assoc.notify_availability(Dataset())  # no Study Instance UID
            await peer.stdin.aclose()
            async for chunk in peer.stdout:
                rest += chunk
            assert await peer.wait() == 0
    assert ok.status == 0x0000
    assert refused.status == 0x0120
    (received_line,) = [ln for ln in rest.decode().splitlines() if ln.startswith("RECEIVED ")]
    received = json.loads(received_line.removeprefix("RECEIVED "))
    assert received == [
        {"uid": uid, "study": STUDY, "instances": [[*i, "NEARLINE"] for i in INSTANCES]}
    ]
