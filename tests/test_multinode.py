"""Two ``asyncdicom qrscp`` nodes (subprocesses) on one storage folder and one PostgreSQL
database, behind HAProxy, on both backends.

Four senders store 192 instances through the balancer while node A is killed (SIGKILL) and
started again; a sender whose association fails sends what was not acknowledged again, on a new
association through the balancer.  Then every acknowledged instance is indexed exactly once,
C-FIND at each level through either node (directly) gives the right counts, a C-MOVE through
node B of a study stored through node A delivers all of it, each node answers a storage
commitment request for instances stored through the other, and a performed procedure step
created through one node is completed through the other.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from subprocess import PIPE
from typing import Any

import anyio
import pytest
from pydicom.dataset import Dataset
from test_cli import ENV, GUARD, REAL_CLI

from asyncdicom import AE, presets
from asyncdicom.protocol import uids
from asyncdicom.qr import PostgreSQLIndex
from asyncdicom.services.commitment import STORAGE_COMMITMENT
from asyncdicom.services.mpps import MPPS
from asyncdicom.storage.synthetic import make_ct_instance
from tests.harness.haproxy import running_haproxy
from tests.test_mpps import created, finished

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.requires_peer("postgresql", "haproxy"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

CT = (uids.CT_IMAGE_STORAGE, [uids.EXPLICIT_VR_LITTLE_ENDIAN])
SENDERS = 4
STUDIES = 2  # per sender (one patient a sender)
SERIES = 2  # per study
INSTANCES = 12  # per series
#: the instances a sender sends on one association before it opens the next
PER_ASSOCIATION = 8
#: node A is killed once this many instances sent through the balancer are acknowledged
KILL_AFTER = 64


class Node:
    """One ``asyncdicom qrscp`` process; its stderr is read as it comes (``output``)."""

    def __init__(self, name: str, args: list[str], cwd: Path) -> None:
        self.name = name
        self.args = args
        self.cwd = cwd
        self.port = 0
        self.output = b""
        self.process: Any = None

    @asynccontextmanager
    async def running(self, port: int = 0) -> AsyncIterator[Node]:
        """The node listening on 127.0.0.1 (``port``, or a free one); stopped with SIGTERM when
        the block ends unless it was killed."""
        # a fresh interpreter: node A is killed with SIGKILL and its leftovers are checked
        command = [*REAL_CLI, *self.args, "--host", "127.0.0.1", "--port", str(port)]
        listening = anyio.Event()
        async with await anyio.open_process(
            command, cwd=self.cwd, env=ENV, stdout=PIPE, stderr=PIPE
        ) as process:
            self.process = process
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._read, process, listening)
                try:
                    with anyio.fail_after(GUARD):
                        await listening.wait()
                    yield self
                finally:
                    if process.returncode is None:
                        process.send_signal(signal.SIGTERM)
                    with anyio.fail_after(GUARD, shield=True):
                        await process.wait()

    async def _read(self, process: Any, listening: anyio.Event) -> None:
        """Read the stderr of ``process`` (one run of the node) until it ends."""
        pattern = re.compile(rb"listening on 127\.0\.0\.1:(\d+)")
        output = b""
        async for chunk in process.stderr:
            output += chunk
            self.output += chunk
            if not listening.is_set() and (match := pattern.search(output)):
                self.port = int(match.group(1))
                listening.set()
        if not listening.is_set():
            pytest.fail(f"qrscp {self.name} exited before listening: {output!r}")

    async def kill(self) -> None:
        self.process.kill()
        with anyio.fail_after(GUARD):
            await self.process.wait()


def study_uid(sender: int, study: int) -> str:
    return f"1.2.826.0.1.3680043.10.1022.{sender}.{study}"


def make_study(patient: str, study: str, series: int, instances: int) -> list[Dataset]:
    made = []
    for s in range(series):
        for n in range(instances):
            ds = make_ct_instance(
                256,
                patient_id=patient,
                study_instance_uid=study,
                series_instance_uid=f"{study}.{s + 1}",
                instance_number=n + 1,
                seed=n,
            )
            ds.PatientName = f"DOE^{patient}"
            made.append(ds)
    return made


class Senders:
    """Senders through the balancer: what was acknowledged, how many associations failed."""

    def __init__(self, port: int, kill_now: anyio.Event) -> None:
        self.port = port
        self.kill_now = kill_now
        self.acknowledged: set[str] = set()
        self.failed_associations = 0

    async def send(self, datasets: list[Dataset]) -> None:
        """Send ``datasets`` through the balancer, PER_ASSOCIATION an association; what an
        association ending badly left unacknowledged goes again on a new one."""
        waiting = list(datasets)
        attempts = 0
        while waiting:
            attempts += 1
            assert attempts < 60, f"{len(waiting)} instances still refused"
            chunk = waiting[:PER_ASSOCIATION]
            try:
                async with AE("SENDER").associate(
                    "127.0.0.1", self.port, called_aet="QRSCP", contexts=[CT]
                ) as assoc:
                    for ds in chunk:
                        status = (await assoc.store(ds)).status
                        if status != 0x0000:
                            break
                        self.acknowledged.add(str(ds.SOPInstanceUID))
                        waiting.remove(ds)
                        if len(self.acknowledged) >= KILL_AFTER:
                            self.kill_now.set()
            except Exception:  # the node behind the balancer went away: send the rest again
                self.failed_associations += 1


async def store_direct(port: int, datasets: list[Dataset]) -> None:
    async with AE("SENDER").associate(
        "127.0.0.1", port, called_aet="QRSCP", contexts=[CT]
    ) as assoc:
        for ds in datasets:
            assert (await assoc.store(ds)).status == 0x0000


async def find(port: int, level: str, model: str = "study", **keys: str) -> list[Dataset]:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    for keyword in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        setattr(identifier, keyword, keys.get(keyword, ""))
    async with AE("FINDSCU").associate(
        "127.0.0.1", port, called_aet="QRSCP", contexts=presets.QR_FIND
    ) as assoc:
        async with assoc.find(identifier, model=model) as results:
            return [match async for match in results]


async def test_two_nodes_behind_haproxy_one_killed_mid_ingest(
    tmp_path: Path, anyio_backend: str, postgres_url: str
) -> None:
    storage = tmp_path / "archive"
    moved: list[str] = []
    destination = AE("DEST", accept_any_storage=True)

    @destination.on_store
    async def on_store(request: Any) -> int:
        moved.append(request.message.affected_sop_instance_uid)
        await request.discard()
        return 0x0000

    through_balancer = {
        sender: [
            ds
            for study in range(STUDIES)
            for ds in make_study(f"P{sender}", study_uid(sender, study), SERIES, INSTANCES)
        ]
        for sender in range(SENDERS)
    }
    # one study stored through node A only, one through node B only
    via_a = make_study("PD", study_uid(9, 1), 1, 6)
    via_b = make_study("PD", study_uid(9, 2), 1, 6)

    kill_now = anyio.Event()
    with anyio.fail_after(GUARD * 2):
        async with destination.server() as dest:
            args = [
                "qrscp", "--storage", str(storage), "--db", postgres_url, "--aet", "QRSCP",
                "--move-destination", f"DEST=127.0.0.1:{dest.port}", "--backend", anyio_backend,
            ]  # fmt: skip
            node_a = Node("A", args, tmp_path)
            node_b = Node("B", args, tmp_path)
            async with node_a.running() as a, node_b.running() as b:
                port_a, port_b = a.port, b.port
                await store_direct(port_a, via_a)
                await store_direct(port_b, via_b)
                servers = [("a", "127.0.0.1", port_a), ("b", "127.0.0.1", port_b)]
                with running_haproxy(servers, tmp_path / "haproxy") as proxy:
                    senders = Senders(proxy.port, kill_now)
                    killed, restarted, done = anyio.Event(), anyio.Event(), anyio.Event()

                    async def kill_and_restart() -> None:
                        await kill_now.wait()
                        await node_a.kill()
                        killed.set()
                        # the same port: HAProxy knows the node by its address
                        async with node_a.running(port_a):
                            restarted.set()
                            await done.wait()

                    async with anyio.create_task_group() as tg:
                        tg.start_soon(kill_and_restart)
                        async with anyio.create_task_group() as sending:
                            for datasets in through_balancer.values():
                                sending.start_soon(senders.send, datasets)
                        assert killed.is_set()
                        with anyio.fail_after(GUARD):
                            await restarted.wait()
                        # both nodes up: every query and retrieval goes to one node directly
                        await check_nodes(
                            port_a, port_b, through_balancer, via_a, via_b, moved, postgres_url
                        )
                        done.set()
    sent = {str(ds.SOPInstanceUID) for datasets in through_balancer.values() for ds in datasets}
    assert senders.acknowledged == sent
    # the index: every instance once, each row's file in the shared folder, no other file
    index = PostgreSQLIndex(postgres_url)
    try:
        rows = index.paths()
        count = index.count()
    finally:
        index.close()
    everything = sent | {str(ds.SOPInstanceUID) for ds in via_a + via_b}
    assert count == len(everything)
    assert sorted(rows.values()) == sorted(everything)
    assert all(os.path.isfile(path) for path in rows)
    assert sorted(str(p) for p in storage.rglob("*.dcm")) == sorted(rows)
    assert "Traceback" not in (node_a.output + node_b.output).decode()


async def check_nodes(
    port_a: int,
    port_b: int,
    through_balancer: dict[int, list[Dataset]],
    via_a: list[Dataset],
    via_b: list[Dataset],
    moved: list[str],
    url: str,
) -> None:
    patients = SENDERS + 1
    studies = SENDERS * STUDIES + 2
    for port in (port_a, port_b):
        assert len(await find(port, "PATIENT", model="patient")) == patients
        found = await find(port, "STUDY")
        assert len(found) == studies
        for sender in range(SENDERS):
            for study in range(STUDIES):
                uid = study_uid(sender, study)
                series = await find(port, "SERIES", StudyInstanceUID=uid)
                assert sorted(str(s.SeriesInstanceUID) for s in series) == [
                    f"{uid}.{s + 1}" for s in range(SERIES)
                ]
                images = await find(
                    port, "IMAGE", StudyInstanceUID=uid, SeriesInstanceUID=f"{uid}.1"
                )
                assert len(images) == INSTANCES
    # a C-MOVE through node B of the study stored through node A
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = str(via_a[0].StudyInstanceUID)
    async with AE("MOVESCU").associate(
        "127.0.0.1", port_b, called_aet="QRSCP", contexts=presets.retrieve_contexts("move")
    ) as assoc:
        async with assoc.move(identifier, destination="DEST") as retrieval:
            await retrieval.wait()
    assert retrieval.status == 0x0000 and retrieval.completed == len(via_a)
    assert sorted(moved) == sorted(str(ds.SOPInstanceUID) for ds in via_a)
    # storage commitment: each node for what the other stored
    for port, stored in ((port_a, via_b), (port_b, via_a)):
        references = [(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in stored]
        async with AE("MODALITY").associate(
            "127.0.0.1", port, called_aet="QRSCP", contexts=[STORAGE_COMMITMENT]
        ) as assoc:
            result = await assoc.commit(references, timeout=GUARD)
        assert sorted(result.committed) == sorted(references)
        assert not result.failed
    # MPPS: a step created through node A is completed through node B (one folder of steps)
    step = "1.2.826.0.1.3680043.10.1022.77"
    async with AE("MODALITY").associate(
        "127.0.0.1", port_a, called_aet="QRSCP", contexts=[MPPS]
    ) as assoc:
        assert (await assoc.n_create(MPPS, created(), sop_instance=step)).status == 0x0000
    async with AE("MODALITY").associate(
        "127.0.0.1", port_b, called_aet="QRSCP", contexts=[MPPS]
    ) as assoc:
        assert (await assoc.n_set(MPPS, step, finished())).status == 0x0000


@pytest.mark.requires_peer("postgresql")
async def test_a_node_starting_leaves_the_shared_folder_alone(
    tmp_path: Path, postgres_url: str
) -> None:
    """On a PostgreSQL index that exists, opening an archive does not index, rename or remove
    the files another node may be writing (one stored and not yet indexed, a re-sent copy
    waiting to take its instance's name); ``check_folder=True`` does (every node stopped)."""
    from asyncdicom.archive import Archive

    storage = tmp_path / "archive"
    async with Archive(storage, db=postgres_url) as archive:  # the database is made
        assert archive.folder_check.new_index
    plain, copied = make_study("PX", study_uid(8, 1), 1, 2)
    plain.save_as(storage / f"{plain.SOPInstanceUID}.dcm", enforce_file_format=True)
    copy = storage / f"{copied.SOPInstanceUID}_1.dcm"
    copied.save_as(copy, enforce_file_format=True)
    files = sorted(storage.rglob("*.dcm"))
    async with Archive(storage, db=postgres_url) as archive:
        assert archive.folder_check.agrees
        assert archive.index.count() == 0
    assert sorted(storage.rglob("*.dcm")) == files
    async with Archive(storage, db=postgres_url, check_folder=True) as archive:
        assert archive.folder_check.indexed == 1 and archive.folder_check.completed == 1
        assert archive.index.count() == 2
    assert sorted(p.name for p in storage.rglob("*.dcm")) == sorted(
        f"{ds.SOPInstanceUID}.dcm" for ds in (plain, copied)
    )
