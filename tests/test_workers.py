"""Several worker processes serving one port (asyncdicom.workers): both serve, and what is per
server (association limits, the lock-out, the audit log, the archive index, storage commitment
reports, a graceful stop) stays per server across the processes.

The factories are module-level functions: the workers are spawned processes that import them.
Which worker served what is told by files the workers write (``<dir>/worker<N>.*``).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from samples import sample

from asyncdicom import AE, Association
from asyncdicom.archive import Archive, qrscp_config
from asyncdicom.audit import AuditLog
from asyncdicom.errors import AssociationRejected
from asyncdicom.presets import storage_commitment_scp_supported, storage_commitment_scu_supported
from asyncdicom.protocol import uids
from asyncdicom.protocol.negotiation import IdentityDecision
from asyncdicom.protocol.pdu import AssociateRQ, UserIdentityRQSubItem
from asyncdicom.qr import SQLiteIndex
from asyncdicom.services.commitment import CommitmentSCP
from asyncdicom.users import Lockout
from asyncdicom.workers import WorkerGroup, WorkerInfo, workers_server

pytestmark = pytest.mark.anyio

# ------------------------------------------------------------------ factories (run in workers)


def _mark(folder: Path, info: WorkerInfo, what: str) -> None:
    with open(folder / f"worker{info.id}.{what}", "a") as f:
        f.write(f"{os.getpid()}\n")


def echo_ae(folder: str, info: WorkerInfo, **config: object) -> AE:
    """An SCP whose C-ECHO handler marks the worker that answered."""
    ae = AE("WORKERS", **config)  # type: ignore[arg-type]

    @ae.on_echo
    def on_echo(request: object) -> int:
        _mark(Path(folder), info, "echo")
        return 0x0000

    return ae


def _check_alice(rq: AssociateRQ, item: UserIdentityRQSubItem) -> IdentityDecision:
    return IdentityDecision(
        accepted=item.primary_field == b"alice" and item.secondary_field == b"right"
    )


def lockout_ae(folder: str, info: WorkerInfo) -> AE:
    ae = echo_ae(folder, info, require_user_identity=True)
    ae.on_user_identity(_check_alice, lockout=Lockout(max_failures=3, window=600, duration=600))
    return ae


@asynccontextmanager
async def audited_ae(folder: str, info: WorkerInfo) -> AsyncIterator[AE]:
    ae = echo_ae(folder, info)
    with AuditLog.open(Path(folder) / "audit.jsonl") as audit:
        audit.attach(ae)
        yield ae


@asynccontextmanager
async def archive_ae(folder: str, db: str | None, info: WorkerInfo) -> AsyncIterator[AE]:
    ae = AE(config=qrscp_config("WORKERS"))
    async with Archive(folder, db=db, check_folder=False) as archive:
        archive.install(ae)
        yield ae


def committing_ae(folder: str, scp_port: int, info: WorkerInfo) -> AE:
    """A worker whose C-ECHO handler asks the SCP at ``scp_port`` for a storage commitment and
    answers 0x0000 only if the report (which comes on a new association to the workers' port,
    to whichever worker) reached it."""
    ae = AE("WORKERS", supported_contexts=storage_commitment_scu_supported())

    @ae.on_echo
    async def on_echo(request: object) -> int:
        async with ae.associate(
            "127.0.0.1",
            scp_port,
            called_aet="COMMITSCP",
            contexts=[uids.STORAGE_COMMITMENT_PUSH_MODEL],
        ) as assoc:
            result = await assoc.commit([("1.2.3", "1.2.3.4")], timeout=10)
        _mark(Path(folder), info, "committed")
        return 0x0000 if result.ok else 0x0110

    return ae


# ------------------------------------------------------------------ helpers


async def _echo(port: int, aet: str = "SCU", **kwargs: object) -> int:
    async with AE(aet).associate("127.0.0.1", port, called_aet="WORKERS", **kwargs) as assoc:  # type: ignore[arg-type]
        return (await assoc.echo()).status


def _served(folder: Path, what: str = "echo") -> dict[int, int]:
    """How many times each worker marked ``what``."""
    out: dict[int, int] = {}
    for n in (1, 2):
        path = folder / f"worker{n}.{what}"
        if path.exists():
            out[n] = len(path.read_text().splitlines())
    return out


# ------------------------------------------------------------------ tests


async def test_both_workers_serve(tmp_path: Path) -> None:
    async with workers_server(functools.partial(echo_ae, str(tmp_path)), workers=2) as group:
        assert len(set(group.pids)) == 2 and os.getpid() not in group.pids
        statuses = [await _echo(group.port) for _ in range(40)]
    assert statuses == [0x0000] * 40
    served = _served(tmp_path)
    # the kernel spreads connections by a hash of the addresses: 40 all on one worker has a
    # chance of 2**-39
    assert set(served) == {1, 2} and sum(served.values()) == 40
    pids = {
        int(line) for n in (1, 2) for line in (tmp_path / f"worker{n}.echo").read_text().split()
    }
    assert pids == set(group.pids)


async def _reject_reason(port: int, aet: str) -> tuple[int, int, int] | None:
    try:
        await _echo(port, aet)
    except AssociationRejected as exc:
        return (exc.result, exc.source, exc.reason)
    return None


async def test_max_associations_counts_every_worker(tmp_path: Path) -> None:
    factory = functools.partial(echo_ae, str(tmp_path), max_associations=3)
    async with (
        workers_server(factory, workers=2) as group,
        AE("HOLDER").associate("127.0.0.1", group.port, called_aet="WORKERS") as a1,
        AE("HOLDER").associate("127.0.0.1", group.port, called_aet="WORKERS") as a2,
    ):
        async with AE("HOLDER").associate("127.0.0.1", group.port, called_aet="WORKERS") as a3:
            for a in (a1, a2, a3):
                assert (await a.echo()).status == 0x0000
            # 3 open over two workers: each worker has fewer than 3, the server has 3; ten
            # more attempts, spread over both workers, are all refused: transient (2), by
            # the service provider, presentation (3), local limit exceeded (2) (PS3.8 9.3.4)
            refusals = [await _reject_reason(group.port, "OTHER") for _ in range(10)]
            assert refusals == [(2, 3, 2)] * 10
        # one released: its slot is free again, whichever worker the next one reaches
        assert await _reject_reason(group.port, "OTHER") is None


async def test_per_calling_ae_limit_counts_every_worker(tmp_path: Path) -> None:
    factory = functools.partial(echo_ae, str(tmp_path), max_associations_per_calling_ae=2)
    async with (
        workers_server(factory, workers=2) as group,
        AE("BUSY").associate("127.0.0.1", group.port, called_aet="WORKERS") as a1,
        AE("BUSY").associate("127.0.0.1", group.port, called_aet="WORKERS") as a2,
    ):
        assert (await a1.echo()).status == (await a2.echo()).status == 0x0000
        refusals = [await _reject_reason(group.port, "BUSY") for _ in range(10)]
        assert refusals == [(2, 3, 2)] * 10
        assert await _reject_reason(group.port, "QUIET") is None


async def test_lockout_is_shared_by_the_workers(tmp_path: Path) -> None:
    wrong = UserIdentityRQSubItem(2, False, b"alice", b"wrong")
    right = UserIdentityRQSubItem(2, False, b"alice", b"right")
    async with workers_server(functools.partial(lockout_ae, str(tmp_path)), workers=2) as group:
        assert await _echo(group.port, user_identity=right) == 0x0000
        for _ in range(3):
            with pytest.raises(AssociationRejected):
                await _echo(group.port, user_identity=wrong)
        # three failures, spread over the workers, lock alice out on every worker: the right
        # passcode is refused too, the same A-ASSOCIATE-RJ (1, 1, 1) as a wrong one
        for _ in range(8):
            with pytest.raises(AssociationRejected) as caught:
                await _echo(group.port, user_identity=right)
            assert (caught.value.result, caught.value.source, caught.value.reason) == (1, 1, 1)
    assert _served(tmp_path) == {n: 1 for n in _served(tmp_path)}
    assert sum(_served(tmp_path).values()) == 1


async def test_audit_log_lines_from_both_workers(tmp_path: Path) -> None:
    async with workers_server(functools.partial(audited_ae, str(tmp_path)), workers=2) as group:
        async with anyio.create_task_group() as tg:
            for _ in range(30):
                tg.start_soon(_echo, group.port)
    assert set(_served(tmp_path)) == {1, 2}
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # whole lines: each one parses
    assert sorted(r["event"] for r in records) == ["accepted"] * 30 + ["released"] * 30


async def test_index_consistent_after_ingest_through_two_workers(
    tmp_path: Path, archive_db: str | None
) -> None:
    """Two processes writing one index (SQLite file, or PostgreSQL database) at once, four
    senders storing 40 instances of one new study: one patient, study and series row each."""
    import pydicom
    from pydicom.uid import generate_uid

    source = pydicom.dcmread(sample("CT_small.dcm"))
    study, series = generate_uid(), generate_uid()
    files = []
    for i in range(40):
        ds = copy.deepcopy(source)
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series if i % 2 else generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = tmp_path / f"in{i}.dcm"
        ds.save_as(path)
        files.append(path)
    storage = tmp_path / "archive"
    factory = functools.partial(archive_ae, str(storage), archive_db)
    async with workers_server(factory, workers=2) as group:

        async def send(share: list[Path]) -> None:
            async with AE("SENDER").associate(
                "127.0.0.1", group.port, called_aet="WORKERS", contexts=[uids.CT_IMAGE_STORAGE]
            ) as assoc:
                for path in share:
                    assert (await assoc.store(path)).status == 0x0000

        async with anyio.create_task_group() as tg:
            for k in range(4):
                tg.start_soon(send, files[k::4])
    con: Any
    if archive_db is None:
        con = sqlite3.connect(storage / "index.sqlite")
    else:
        import psycopg

        con = psycopg.connect(archive_db)
    with con:
        assert con.execute("SELECT count(*) FROM instance").fetchone() == (40,)
        assert con.execute("SELECT count(*) FROM study").fetchone() == (1,)
        assert con.execute("SELECT count(*) FROM series").fetchone() == (21,)
        assert con.execute("SELECT count(*) FROM patient").fetchone() == (1,)
        paths = [Path(p) for (p,) in con.execute("SELECT path FROM instance")]
    con.close()
    assert all(p.exists() for p in paths)
    assert len(list(storage.rglob("*.dcm"))) == 40


def test_index_connection_notices_another_connections_commits(tmp_path: Path) -> None:
    """Two index connections (two workers) add instances of one series: the series row
    follows the last instance indexed, whichever connection indexed it (a connection must not
    trust what it wrote before when the other one has written since)."""
    import pydicom
    from pydicom.uid import generate_uid

    db = str(tmp_path / "index.sqlite")
    first, second = SQLiteIndex(db), SQLiteIndex(db)
    ds = pydicom.dcmread(sample("CT_small.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SeriesNumber = 1
    versions = [(first, 1), (second, 2), (first, 1)]
    for n, (index, number) in enumerate(versions):
        instance = copy.deepcopy(ds)
        instance.SOPInstanceUID = generate_uid()
        instance.SeriesNumber = number
        assert index.add(instance, f"/{n}.dcm")
    first.close()
    second.close()
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT series_number FROM series").fetchall()
    assert [int(n) for (n,) in rows] == [1]


async def test_commitment_report_reaches_the_worker_awaiting_it(tmp_path: Path) -> None:
    scp = AE("COMMITSCP", supported_contexts=storage_commitment_scp_supported())
    async with (
        scp.server() as server,
        CommitmentSCP(scp, lambda refs: {}, always_new_association=True) as commitment,
    ):
        factory = functools.partial(committing_ae, str(tmp_path), server.port)
        async with workers_server(factory, workers=2) as group:
            commitment.peers["WORKERS"] = ("127.0.0.1", group.port)
            # each report comes on a new association that may reach either worker: eight
            # commitments, each answered only if its report reached the requesting worker
            statuses = [await _echo(group.port) for _ in range(8)]
    assert statuses == [0x0000] * 8
    assert sum(_served(tmp_path, "committed").values()) == 8


async def test_graceful_stop_drains_both_workers(tmp_path: Path) -> None:
    factory = functools.partial(echo_ae, str(tmp_path))
    group: WorkerGroup
    async with workers_server(factory, workers=2) as group:
        held: list[Association] = []
        async with AsyncExitStack() as stack:
            # associations open on both workers (until each has answered one)
            while set(_served(tmp_path)) != {1, 2} and len(held) < 40:
                assoc = await stack.enter_async_context(
                    AE("SCU").associate("127.0.0.1", group.port, called_aet="WORKERS")
                )
                assert (await assoc.echo()).status == 0x0000
                held.append(assoc)
            assert set(_served(tmp_path)) == {1, 2}
            before = _served(tmp_path)
            group.close()
            with anyio.fail_after(30):
                await group.draining.wait()
            # every worker stopped accepting; the associations in progress go on
            for assoc in held:
                assert (await assoc.echo()).status == 0x0000
        # released normally (an abort would have raised at the end of its block)
    after = _served(tmp_path)
    assert {n: after[n] - before[n] for n in after} == before
