"""``asyncdicom qrscp`` stopped while four senders store into it, at random points, ten times
per backend (twenty in all) on the same folder: after every stop (SIGTERM or SIGINT: before any
restart) and after every start (SIGKILL too: the start-up check), the ``.dcm`` files on disk and
the index rows agree, and no temporary file is left behind a clean stop.  The folder check at
opening is also tested in process: what a killed run leaves (an unindexed file, an unindexed
copy of a re-sent instance, a copy that cannot be indexed) and what it must leave alone."""

from __future__ import annotations

import copy
import os
import random
import signal
import sqlite3
from pathlib import Path
from subprocess import PIPE

import anyio
import pydicom
import pytest
from pydicom.dataset import Dataset
from test_cli import CLI, ENV, GUARD, StoreSCPProcess

from asyncdicom import AE, uids
from asyncdicom.archive import Archive
from asyncdicom.storage.names import safe_filename
from asyncdicom.storage.synthetic import make_ct_instance

pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("ignore::UserWarning")]

CT = (uids.CT_IMAGE_STORAGE, [uids.EXPLICIT_VR_LITTLE_ENDIAN])
#: server lifetimes per backend, each ended by a signal during the ingest (twenty stops for
#: the two backends; a lifetime costs about a second, most of it the app's start)
LIFETIMES = 10
SENDERS = 4
#: fixed: a failure can be replayed (the run number is in the message)
SEED = 18_01


def instance_pool(count: int) -> list[Dataset]:
    """Instances of 2 KB to 300 KB in four series of two patients; the senders draw from
    this pool at random, so instances are re-sent (the replace path) all the time."""
    rng = random.Random(SEED)
    pool = []
    for n in range(count):
        patient = f"P{n % 2}"
        ds = make_ct_instance(
            rng.choice([2_000, 20_000, 100_000, 300_000]),
            patient_id=patient,
            seed=n,
            study_instance_uid=f"1.2.826.0.1.3680043.18.1.{n % 2}",
            series_instance_uid=f"1.2.826.0.1.3680043.18.1.{n % 2}.{n % 4}",
            instance_number=n + 1,
        )
        pool.append(ds)
    return pool


def dcm_files(storage: Path) -> set[str]:
    return {os.path.abspath(p) for p in storage.rglob("*.dcm")}


def index_rows(storage: Path) -> set[str]:
    """The indexed paths, read with a connection of our own (the server is stopped, or
    idle: WAL readers do not wait)."""
    con = sqlite3.connect(f"file:{storage / 'index.sqlite'}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT path FROM instance").fetchall()
    finally:
        con.close()
    paths = [os.path.abspath(p) for (p,) in rows]
    assert len(paths) == len(set(paths)), "two rows name one file"
    return set(paths)


def temp_files(storage: Path) -> list[str]:
    return [p.name for p in storage.iterdir() if p.name.endswith(".part")]


class Acks:
    """Success responses counted across the senders; ``reached`` set at ``threshold``."""

    def __init__(self, threshold: int) -> None:
        self.count = 0
        self.threshold = threshold
        self.reached = anyio.Event()
        if threshold == 0:
            self.reached.set()

    def add(self) -> None:
        self.count += 1
        if self.count >= self.threshold:
            self.reached.set()


async def send_until_refused(port: int, pool: list[Dataset], seed: int, acks: Acks) -> None:
    """Store random instances of ``pool`` on one association until the server goes away."""
    rng = random.Random(seed)
    try:
        async with AE(f"SENDER{seed % 10}").associate(
            "127.0.0.1", port, called_aet="QRSCP", contexts=[CT]
        ) as assoc:
            while True:
                if (await assoc.store(rng.choice(pool))).status == 0x0000:
                    acks.add()
    except Exception:  # the server stopped: refused, aborted, connection lost
        return


async def test_killed_during_ingest_files_and_index_agree(
    tmp_path: Path, anyio_backend: str
) -> None:
    rng = random.Random(f"{SEED}-{anyio_backend}")
    pool = instance_pool(24)
    storage = tmp_path / "archive"
    command = [
        # through the app server: a SIGKILL reaches the app through the shim's death, and each
        # lifetime ends by reading the app's stderr to its end (the app is gone, not dying)
        *CLI, "qrscp", "--storage", str(storage), "--port", "0", "--host", "127.0.0.1",
        "--backend", anyio_backend,
    ]  # fmt: skip
    stops: list[str] = []
    for run in range(LIFETIMES + 1):
        last = run == LIFETIMES
        how = rng.choice([signal.SIGTERM, signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
        threshold = rng.randint(0, 12)
        where = f"run {run} (after {stops[-1] if stops else 'nothing'})"
        with anyio.fail_after(GUARD):
            async with await anyio.open_process(
                command, cwd=tmp_path, env=ENV, stdout=PIPE, stderr=PIPE
            ) as process:
                scp = StoreSCPProcess(process)
                try:
                    port = await scp.wait_listening()
                    # the start-up check ran before the listening line: agreement now
                    assert dcm_files(storage) == index_rows(storage), (where, scp.stderr)
                    if last:
                        break
                    acks = Acks(threshold)
                    async with anyio.create_task_group() as tg:
                        for n in range(SENDERS):
                            tg.start_soon(send_until_refused, port, pool, run * 10 + n, acks)
                        await acks.reached.wait()
                        process.send_signal(how)
                        code = await process.wait()
                        tg.cancel_scope.cancel()
                finally:
                    if process.returncode is None:
                        process.kill()
                        await process.wait()
                async for chunk in process.stderr:
                    scp.stderr += chunk
        stops.append(f"{signal.Signals(how).name} after {acks.count} stored")
        if how != signal.SIGKILL:
            assert code == 0, (where, scp.stderr)
            assert b"Traceback" not in scp.stderr, (where, scp.stderr)
            # the stop itself left the folder and the index in agreement
            files, rows = dcm_files(storage), index_rows(storage)
            assert files == rows, (where, stops[-1], files ^ rows)
            assert temp_files(storage) == [], where
    assert any(s.startswith("SIGKILL") for s in stops), stops
    assert len(index_rows(storage)) > 0


# --------------------------------------------------------------------------- the folder check


async def stored(archive_folder: Path, datasets: list[Dataset]) -> None:
    """Index ``datasets`` through an archive's C-STORE path, then close it."""
    from test_archive import running, store_all

    async with running(archive_folder) as (_archive, port):
        assert await store_all(port, datasets) == [0] * len(datasets)


def place(
    folder: Path, ds: Dataset, name: str | None = None, *, like: Dataset | None = None
) -> Path:
    """Write ``ds`` where the sorted layout puts it (or ``like``; as a killed run leaves
    it)."""
    path = place_path(folder, like or ds)
    path.parent.mkdir(parents=True, exist_ok=True)
    if name is not None:
        path = path.with_name(name)
    ds.save_as(path, enforce_file_format=True)
    return path


async def test_start_up_check_indexes_what_a_killed_run_left(tmp_path: Path) -> None:
    folder = tmp_path / "archive"
    kept, resent, orphan = (
        make_ct_instance(
            500, patient_id="P1", study_instance_uid="1.1", series_instance_uid="1.1.1"
        )
        for _ in range(3)
    )
    with anyio.fail_after(GUARD):
        await stored(folder, [kept, resent])
    # killed after writing the file, before indexing it
    orphan_path = place(folder, orphan)
    # killed between writing a re-sent copy beside the stored one and indexing it
    newer = copy.deepcopy(resent)
    newer.PatientName = "NEWER^COPY"
    copy_path = place(folder, newer, safe_filename(str(resent.SOPInstanceUID))[:-4] + "_1.dcm")
    # a copy that can never be indexed (no Series Instance UID), left by a killed run
    broken = copy.deepcopy(kept)
    del broken.SeriesInstanceUID
    broken_path = place(
        folder, broken, safe_filename(str(kept.SOPInstanceUID))[:-4] + "_1.dcm", like=kept
    )
    # a text file named .dcm, and a second file of an indexed instance: left alone, reported
    text = folder / "P1" / "notes.dcm"
    text.write_text("a text file, not DICOM\n")
    second = place(folder, kept, "second.dcm")

    archive = Archive(folder)
    async with archive:
        check = archive.folder_check
        rows = index_rows(folder)
        count = await anyio.to_thread.run_sync(archive.index.count)
    assert not check.new_index
    assert check.indexed == 1 and check.completed == 1
    assert [p for p, _why in check.removed] == [str(broken_path)]
    assert dict(check.skipped) == {
        str(text): "not a DICOM file",
        str(second): f"its SOP Instance UID is indexed as {place_path(folder, kept)}",
    }
    assert check.missing == []
    assert count == 3
    resent_path = copy_path.with_name(safe_filename(str(resent.SOPInstanceUID)))
    assert rows == {
        os.path.abspath(p) for p in (place_path(folder, kept), resent_path, orphan_path)
    }
    assert not copy_path.exists() and not broken_path.exists()
    assert pydicom.dcmread(resent_path).PatientName == "NEWER^COPY"
    assert text.exists() and second.exists()
    lines = check.report(folder)
    assert lines[0] == f"the index did not list 1 file in {folder}: indexed"
    assert f"  {text}: not a DICOM file" in lines


def place_path(folder: Path, ds: Dataset) -> Path:
    return (
        folder / str(ds.PatientID) / str(ds.StudyInstanceUID) / str(ds.SeriesInstanceUID)
        / safe_filename(str(ds.SOPInstanceUID))
    )  # fmt: skip


async def test_start_up_check_reports_indexed_files_that_are_gone(tmp_path: Path) -> None:
    folder = tmp_path / "archive"
    datasets = [
        make_ct_instance(
            500, patient_id="P1", study_instance_uid="1.1", series_instance_uid="1.1.1"
        )
        for _ in range(2)
    ]
    with anyio.fail_after(GUARD):
        await stored(folder, datasets)
    gone = place_path(folder, datasets[0])
    gone.unlink()
    archive = Archive(folder)
    async with archive:
        count = await anyio.to_thread.run_sync(archive.index.count)
    assert archive.folder_check.missing == [os.path.abspath(gone)]
    assert count == 2  # kept: a C-GET reports it failed, commitment says no such instance
    assert archive.folder_check.report(folder)[-1] == f"  {os.path.abspath(gone)}"


async def test_folder_and_index_in_agreement_report_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "archive"
    with anyio.fail_after(GUARD):
        await stored(folder, [make_ct_instance(500)])
    archive = Archive(folder)
    async with archive:
        pass
    assert archive.folder_check.agrees
    assert archive.folder_check.report(folder) == []


async def test_qrscp_says_what_the_start_up_check_found(tmp_path: Path, anyio_backend: str) -> None:
    """The lines qrscp prints before its readiness line: a file indexed that the index did
    not list, a text file named .dcm not indexed, "not a DICOM file"."""
    from test_cli_qrscp import app

    folder = tmp_path / "archive"
    with anyio.fail_after(GUARD):
        await stored(folder, [make_ct_instance(500, patient_id="P1")])
    orphan = place(folder, make_ct_instance(500, patient_id="P1"))
    (folder / "notes.dcm").write_text("a text file\n")
    with anyio.fail_after(GUARD):
        async with app(tmp_path, anyio_backend, "qrscp", "--storage", str(folder)) as scp:
            assert await scp.stop() == 0
    lines = scp.stderr.decode().splitlines()
    assert f"qrscp: the index did not list 1 file in {folder}: indexed" in lines, lines
    assert "qrscp: 1 file not indexed:" in lines, lines
    assert f"qrscp:   {folder / 'notes.dcm'}: not a DICOM file" in lines, lines
    assert any(line.endswith(f"(2 instances in {folder})") for line in lines), lines
    assert os.path.abspath(orphan) in index_rows(folder)
