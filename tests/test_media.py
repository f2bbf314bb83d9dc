"""DICOM media: File IDs of the General Purpose CD-R profile (PS3.10 8.2 and 8.5, PS3.11
STD-GEN-CD), ``asyncdicom dicomdir``, the ``media`` layout of storescp and getscu with their
DICOMDIR kept current, and storescu sending what a DICOMDIR references.

DICOMDIRs are checked with dicom3tools' ``dciodvfy`` (no error), read by DCMTK (``dcmdump``)
and compared with the one DCMTK's ``dcmmkdir`` writes for the same files; pydicom's FileSet
reads them too.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from collections.abc import Iterable
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import anyio
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.fileset import FileSet
from pydicom.uid import generate_uid
from test_cli import CLI, ENV, GUARD, StoreSCPProcess, err, out, run_cli
from test_cli_getscu import get_scp
from test_cli_storescu import counting_scp

from asyncdicom import AE
from asyncdicom.protocol import uids
from asyncdicom.storage.dicomdir import (
    DicomdirUpdater,
    entry_for,
    read_dicomdir,
    scan_folder,
    write_dicomdir,
)
from asyncdicom.storage.media import file_id_problem, media_file_name, media_folders
from asyncdicom.storage.synthetic import make_ct_instance, write_ct_files
from asyncdicom.storage.writer import Part10Writer
from tests.cli_main import run_main

#: a File ID component of the General Purpose CD-R profile, written from PS3.10 8.5 (upper
#: case letters, digits, underscore) and 8.2 (at most 8 characters)
PROFILE_COMPONENT = re.compile(r"[A-Z0-9_]{1,8}")
#: the names the media layout gives, per level
MEDIA_NAMES = [re.compile(p + r"[A-Z0-9]{6}") for p in ("PA", "ST", "SE", "IM")]


def assert_profile_path(root: Path, path: Path) -> None:
    """Every component of ``path`` below ``root`` is a File ID component, at most 8 of them,
    and the media layout's PA/ST/SE/IM names."""
    parts = path.relative_to(root).parts
    assert 1 <= len(parts) <= 8, parts
    for part in parts:
        assert PROFILE_COMPONENT.fullmatch(part), (part, parts)
    assert len(parts) == 4, parts
    for pattern, part in zip(MEDIA_NAMES, parts, strict=True):
        assert pattern.fullmatch(part), (part, parts)


def write_media_files(root: Path, instances: Iterable[Dataset]) -> list[Path]:
    """Save ``instances`` under ``root`` with the names of the media layout."""
    paths = []
    for ds in instances:
        folder = root.joinpath(
            *media_folders(ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID)
        )
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / media_file_name(ds.SOPInstanceUID)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def instances(patients: int, series_per_patient: int, per_series: int) -> list[Dataset]:
    """Small synthetic CT instances: a study per patient, ``series_per_patient`` series."""
    found = []
    for p in range(patients):
        study = generate_uid(prefix=None)
        for _ in range(series_per_patient):
            series = generate_uid(prefix=None)
            for n in range(per_series):
                found.append(
                    make_ct_instance(
                        16,
                        patient_id=f"PAT{p}",
                        seed=n,
                        study_instance_uid=study,
                        series_instance_uid=series,
                        instance_number=n + 1,
                    )
                )
    return found


def fileset_summary(dicomdir: Path) -> dict[tuple[str, ...], tuple[str, ...]]:
    """What pydicom's FileSet reads from a DICOMDIR: File ID -> (Patient ID, Study UID,
    Series UID, record type, Instance Number, referenced SOP Instance UID and transfer syntax)."""
    fileset = FileSet(dicomdir)
    root = Path(fileset.path or dicomdir.parent)
    summary = {}
    for instance in fileset:
        file_id = Path(instance.path).relative_to(root).parts
        summary[file_id] = (
            str(instance.PatientID),
            str(instance.StudyInstanceUID),
            str(instance.SeriesInstanceUID),
            str(instance.DirectoryRecordType),
            str(instance.InstanceNumber),
            str(instance.ReferencedSOPInstanceUIDInFile),
            str(instance.ReferencedTransferSyntaxUIDInFile),
        )
    return summary


def dciodvfy_errors(path: Path) -> list[str]:
    """The error lines of dicom3tools' validator for ``path`` (warnings are not errors)."""
    result = subprocess.run(
        ["dciodvfy", str(path)], capture_output=True, text=True, timeout=GUARD, check=False
    )
    lines = (result.stdout + result.stderr).splitlines()
    errors = [line for line in lines if line.startswith(("Error", "Abort"))]
    if result.returncode != 0 and not errors:
        errors.append(f"dciodvfy exited with {result.returncode}: {lines[-3:]}")
    return errors


def make_dicomdir(root: Path) -> None:
    """``root/DICOMDIR`` for the instances under ``root`` (as ``asyncdicom dicomdir`` does)."""
    write_dicomdir(root, [entry_for(root, f) for f in scan_folder(root).instances])


def listed_uids(dicomdir: Path) -> set[str]:
    return {entry.sop_instance_uid for entry in read_dicomdir(dicomdir)[1]}


# --------------------------------------------------------------------------- File IDs


@pytest.mark.parametrize(
    ("parts", "problem"),
    [
        (("PA000001", "ST000001", "IM_1"), None),
        (("A",) * 8, None),
        (("A",) * 9, "9 path components (at most 8)"),
        (("IM0000001",), "'IM0000001' is longer than 8 characters"),
        (("im000001",), "'im000001' has characters other than A-Z, 0-9 and _"),
        (("IM-1",), "'IM-1' has characters other than A-Z, 0-9 and _"),
        (("IM1.DCM",), "'IM1.DCM' has an extension (no '.' in a File ID)"),
        (("É",), "'É' has characters other than A-Z, 0-9 and _"),
        ((), "an empty path"),
    ],
)
def test_file_id_problem(parts: tuple[str, ...], problem: str | None) -> None:
    assert file_id_problem(parts) == problem


def test_media_names_are_profile_names_and_stable() -> None:
    ds = make_ct_instance(16, patient_id="ÄÖ ü/../x")
    names = (*media_folders(ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID),)
    names += (media_file_name(ds.SOPInstanceUID),)
    for pattern, name in zip(MEDIA_NAMES, names, strict=True):
        assert pattern.fullmatch(name), name
    # the same values name the same folders in any process; another value another name
    assert media_folders(ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID) == names[:3]
    assert media_folders("other", ds.StudyInstanceUID, ds.SeriesInstanceUID)[0] != names[0]
    assert media_file_name(ds.SOPInstanceUID, 1) not in (names[3], media_file_name("1.2"))


def _store(root: Path, ds: Dataset, policy: Any = "unique") -> Any:
    """Store ``ds`` with the media layout, as an SCP does."""
    from asyncdicom.storage.codec import encode_dataset

    writer = Part10Writer(
        root,
        sop_class_uid=ds.SOPClassUID,
        sop_instance_uid=ds.SOPInstanceUID,
        transfer_syntax_uid=uids.EXPLICIT_VR_LITTLE_ENDIAN,
        implementation_class_uid=uids.IMPLEMENTATION_CLASS_UID,
        on_duplicate=policy,
        layout="media",
    )
    writer.write(encode_dataset(ds, uids.EXPLICIT_VR_LITTLE_ENDIAN))
    return writer.commit()


def test_media_layout_names_collisions_and_duplicates(tmp_path: Path) -> None:
    """The writer's media layout: PA/ST/SE/IM names; a name taken by another instance (a hash
    collision, made here by hand) passes to the instance's next name; a copy of the same
    instance follows the duplicate policy without leaving the profile."""
    first = make_ct_instance(16, patient_id="P1", seed=1)
    stored = _store(tmp_path, first)
    assert stored.duplicate is None
    assert_profile_path(tmp_path, stored)
    assert stored.name == media_file_name(first.SOPInstanceUID)

    # another instance of the same series whose first name is taken (by `first`'s file)
    other = make_ct_instance(
        16,
        patient_id="P1",
        seed=2,
        study_instance_uid=first.StudyInstanceUID,
        series_instance_uid=first.SeriesInstanceUID,
    )
    squatter = stored.parent / media_file_name(other.SOPInstanceUID)
    shutil.copyfile(stored, squatter)
    placed = _store(tmp_path, other)
    assert placed.duplicate is None
    assert placed.name == media_file_name(other.SOPInstanceUID, 1)
    assert pydicom.dcmread(placed).SOPInstanceUID == other.SOPInstanceUID
    squatter.unlink()

    copy = _store(tmp_path, first)  # unique: the copy under the instance's next name
    assert (copy.duplicate, copy.name) == ("unique", media_file_name(first.SOPInstanceUID, 1))
    assert_profile_path(tmp_path, copy)
    ignored = _store(tmp_path, first, "ignore")
    assert (ignored.duplicate, ignored) == ("ignore", stored)
    changed = make_ct_instance(16, patient_id="P1", seed=9)
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        setattr(changed, keyword, first.get(keyword))
    replaced = _store(tmp_path, changed, "overwrite")
    assert (replaced.duplicate, replaced) == ("overwrite", stored)
    assert pydicom.dcmread(stored).PixelData == changed.PixelData
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert files == sorted([stored, copy, placed])


# --------------------------------------------------------------------------- asyncdicom dicomdir


@pytest.mark.requires_peer("dcmtk", "dicom3tools")
def test_dicomdir_of_300_instances_passes_dciodvfy_and_matches_dcmmkdir(tmp_path: Path) -> None:
    root = tmp_path / "media"
    made = instances(3, 2, 50)
    write_media_files(root, made)
    (root / "README").write_text("not DICOM: left out\n")

    result = run_main("dicomdir", str(root), cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().splitlines() == [
        f"dicomdir: {root / 'DICOMDIR'} lists 300 instances (3 patients, 3 studies, "
        "6 series); 1 other file left out"
    ]
    ours = root / "DICOMDIR"
    assert dciodvfy_errors(ours) == []
    dump = subprocess.run(
        ["dcmdump", "-q", str(ours)], capture_output=True, text=True, timeout=GUARD, check=True
    ).stdout
    assert dump.count("(0004,1430) CS [IMAGE]") == 300
    assert dump.count("(0004,1430) CS [PATIENT]") == 3
    assert "MediaStorageDirectoryStorage" in dump
    mine = fileset_summary(ours)
    assert {row[5] for row in mine.values()} == {str(ds.SOPInstanceUID) for ds in made}

    # DCMTK's DICOMDIR for the same files (General Purpose CD-R profile, its default) holds
    # the same records for the same File IDs
    shutil.move(ours, tmp_path / "ours")
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    made_by_dcmtk = subprocess.run(
        ["dcmmkdir", "+r", "-Pgp", "+F", "", *names],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=GUARD,
        check=False,
    )
    assert made_by_dcmtk.returncode == 0, made_by_dcmtk.stderr
    assert fileset_summary(root / "DICOMDIR") == mine


def _breaks_a_name(root: Path) -> None:
    (root / "lower").mkdir()
    shutil.copyfile(next(root.rglob("IM*")), root / "lower" / "IM1")


@pytest.mark.parametrize(
    ("rename", "reason"),
    [
        (lambda p: p.with_name(p.name + ".dcm"), "has an extension (no '.' in a File ID)"),
        (lambda p: p.with_name(p.name.lower()), "has characters other than A-Z, 0-9 and _"),
        (lambda p: p.with_name(p.name + "X"), "is longer than 8 characters"),
        (
            lambda p: p.parent.joinpath(*"ABCDE", p.name),
            "path components (at most 8)",
        ),
    ],
    ids=["extension", "lower case", "nine characters", "nine components"],
)
def test_dicomdir_refuses_names_outside_the_profile(
    tmp_path: Path, rename: Any, reason: str
) -> None:
    root = tmp_path / "media"
    _, bad = write_media_files(root, instances(1, 1, 2))
    target = rename(bad)
    target.parent.mkdir(parents=True, exist_ok=True)
    bad.rename(target)
    (root / "DICOMDIR").write_bytes(b"the old one")
    result = run_main("dicomdir", str(root), cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert lines[0] == (
        f"asyncdicom: error: dicomdir: 1 DICOM file under {root} have names that are not "
        "File IDs of the General Purpose CD-R profile (upper-case letters, digits and _, at "
        "most 8 characters per component, at most 8 components, no extension); nothing "
        "written:"
    )
    assert len(lines) == 2 and lines[1].startswith(f"  {target}: "), lines
    assert lines[1].endswith(reason), lines
    assert (root / "DICOMDIR").read_bytes() == b"the old one"
    assert result.stdout == b""


def test_dicomdir_lists_every_file_that_does_not_fit(tmp_path: Path) -> None:
    root = tmp_path / "media"
    paths = write_media_files(root, instances(1, 1, 3))
    (root / "lower").mkdir()
    shutil.copyfile(paths[0], root / "lower" / "IM1")
    shutil.copyfile(paths[1], root / "x.dcm")
    (root / "notes.txt").write_text("not DICOM: not an instance, not refused\n")
    result = run_main("dicomdir", str(root), cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert "2 DICOM files under" in lines[0]
    assert lines[1:] == [
        f"  {root / 'lower' / 'IM1'}: 'lower' has characters other than A-Z, 0-9 and _",
        f"  {root / 'x.dcm'}: 'x.dcm' has an extension (no '.' in a File ID)",
    ]
    assert not (root / "DICOMDIR").exists()


def test_dicomdir_of_a_missing_folder_is_a_usage_error(tmp_path: Path) -> None:
    result = run_main("dicomdir", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert result.returncode == 2
    assert "is not a folder" in result.stderr.decode()


# --------------------------------------------------------------------------- keeping it current


def test_updater_lists_what_it_is_given_and_recovers_what_a_crash_left(tmp_path: Path) -> None:
    made = instances(2, 1, 3)
    paths = write_media_files(tmp_path, made)
    updater = DicomdirUpdater(tmp_path)
    for path in paths[:4]:
        updater.add(path)
    assert updater.flush() == 4
    assert listed_uids(tmp_path / "DICOMDIR") == {str(ds.SOPInstanceUID) for ds in made[:4]}
    assert updater.flush() is None  # nothing new
    # a killed writer: two stored files never listed, a temporary DICOMDIR left behind
    (tmp_path / ".DICOMDIR.0123456789abcdef0123456789abcdef.tmp").write_bytes(b"half")
    problems: list[tuple[Path, str]] = []
    recovering = DicomdirUpdater(
        tmp_path, recover=True, on_error=lambda p, r: problems.append((p, r))
    )
    assert recovering.flush() == 6
    assert listed_uids(tmp_path / "DICOMDIR") == {str(ds.SOPInstanceUID) for ds in made}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["DICOMDIR", *{p.relative_to(tmp_path).parts[0] for p in paths}]
    )
    assert problems == []
    # a file removed since is dropped from the next DICOMDIR
    paths[0].unlink()
    recovering.add(paths[1])
    assert recovering.flush() == 5


def test_concurrent_updaters_lose_nothing(tmp_path: Path) -> None:
    """Two updaters of one folder (as two storescp worker processes have), flushing from
    several threads at once: each rewrite starts from the DICOMDIR the other wrote."""
    made = instances(1, 2, 20)
    paths = write_media_files(tmp_path, made)
    updaters = [DicomdirUpdater(tmp_path), DicomdirUpdater(tmp_path)]
    start = threading.Barrier(4)

    def work(updater: DicomdirUpdater, share: list[Path]) -> None:
        start.wait(GUARD)
        for path in share:
            updater.add(path)
            updater.flush()

    threads = [threading.Thread(target=work, args=(updaters[n % 2], paths[n::4])) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(GUARD)
    assert listed_uids(tmp_path / "DICOMDIR") == {str(ds.SOPInstanceUID) for ds in made}
    assert len(read_dicomdir(tmp_path / "DICOMDIR")[1]) == 40


def test_updater_reports_what_cannot_be_listed(tmp_path: Path) -> None:
    (path,) = write_media_files(tmp_path, instances(1, 1, 1))
    del_study_id = pydicom.dcmread(path)
    del del_study_id.StudyID  # Type 1 in a STUDY record (PS3.3 F.5.2)
    broken = path.with_name("IM_BAD")
    del_study_id.save_as(broken)
    problems: list[tuple[Path, str]] = []
    updater = DicomdirUpdater(tmp_path, on_error=lambda p, r: problems.append((p, r)))
    updater.add(path)
    updater.add(broken)
    assert updater.flush() == 1
    ((where, reason),) = problems
    assert where == broken and "Study ID" in reason, reason


def test_scan_and_write_leave_other_files_alone(tmp_path: Path) -> None:
    paths = write_media_files(tmp_path, instances(1, 1, 2))
    (tmp_path / ".hidden").write_bytes(b"x")
    scan = scan_folder(tmp_path)
    assert [Path(tmp_path, *f) for f in scan.instances] == sorted(paths)
    assert scan.unfit == [] and scan.skipped == []
    write_dicomdir(tmp_path, [])
    assert read_dicomdir(tmp_path / "DICOMDIR")[1] == []
    assert FileSet(tmp_path / "DICOMDIR").__len__() == 0


# --------------------------------------------------------------------------- storescu DICOMDIR


async def _storescu_dicomdir(
    root: Path, cwd: Path, backend: str
) -> tuple[list[str], CompletedProcess[bytes]]:
    """``storescu`` given ``root/DICOMDIR`` against a Storage SCP that records what arrives:
    the SOP Instance UIDs received and the command's result."""
    received: list[str] = []
    async with counting_scp(received).server() as server:
        result = await run_cli(
            "storescu", "127.0.0.1", str(server.port), "--backend", backend,
            str(root / "DICOMDIR"), cwd=cwd,
        )  # fmt: skip
    return received, result


@pytest.mark.anyio
async def test_storescu_sends_exactly_what_a_dicomdir_references(
    tmp_path: Path, anyio_backend: str
) -> None:
    root = tmp_path / "media"
    made = instances(2, 1, 4)
    write_media_files(root, made[:6])
    make_dicomdir(root)
    write_media_files(root, made[6:])  # on the medium, but not in its DICOMDIR
    received, result = await _storescu_dicomdir(root, tmp_path, anyio_backend)
    assert result.returncode == 0, (out(result), err(result))
    assert sorted(received) == sorted(str(ds.SOPInstanceUID) for ds in made[:6])
    assert out(result).startswith("sent 6, failed 0;"), out(result)


@pytest.mark.anyio
async def test_storescu_names_files_a_dicomdir_references_but_lacks(
    tmp_path: Path, anyio_backend: str
) -> None:
    root = tmp_path / "media"
    paths = write_media_files(root, instances(1, 1, 3))
    make_dicomdir(root)
    paths[1].unlink()
    received, result = await _storescu_dicomdir(root, tmp_path, anyio_backend)
    assert result.returncode == 1, (out(result), err(result))
    assert len(received) == 2
    assert f"{paths[1]}: referenced by {root / 'DICOMDIR'} but missing" in err(result)


# --------------------------------------------------------------------------- storescp, getscu


async def _wait_for(scp: StoreSCPProcess, pattern: bytes) -> None:
    """Read the app's stderr until ``pattern`` appears (after what was matched before)."""
    with anyio.fail_after(GUARD):
        while not re.search(pattern, scp.stderr):
            scp.stderr += await scp.process.stderr.receive()


@pytest.mark.anyio
@pytest.mark.requires_peer("dicom3tools")
async def test_storescp_media_layout_keeps_its_dicomdir_current(
    tmp_path: Path, anyio_backend: str
) -> None:
    made = instances(2, 1, 3)
    root = tmp_path / "out"
    # a file stored by an earlier run that was killed before its DICOMDIR was written
    (earlier,) = write_media_files(root, instances(1, 1, 1))
    args = [
        *CLI, "storescp", "--port", "0", "--host", "127.0.0.1", "--backend", anyio_backend,
        "--output-dir", str(root), "--layout", "media", "-v",
    ]  # fmt: skip
    contexts = [(uids.CT_IMAGE_STORAGE, [uids.EXPLICIT_VR_LITTLE_ENDIAN])]
    async with await anyio.open_process(
        args, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as process:
        scp = StoreSCPProcess(process)
        try:
            port = await scp.wait_listening()
            await _wait_for(scp, rb"DICOMDIR lists 1 instance\b")
            assert listed_uids(root / "DICOMDIR") == {pydicom.dcmread(earlier).SOPInstanceUID}
            for batch, total in ((made[:4], 5), (made[4:], 7)):
                with anyio.fail_after(GUARD):
                    async with AE("SCU").associate(
                        "127.0.0.1", port, called_aet="STORESCP", contexts=contexts
                    ) as assoc:
                        for ds in batch:
                            assert (await assoc.store(ds)).status == 0x0000
                # rewritten once the association has ended
                await _wait_for(scp, rb"DICOMDIR lists %d instances" % total)
                assert len(listed_uids(root / "DICOMDIR")) == total
            assert await scp.stop() == 0
        finally:
            if process.returncode is None:
                process.kill()
    assert b"Traceback" not in scp.stderr
    expected = {str(ds.SOPInstanceUID) for ds in made} | {
        str(pydicom.dcmread(earlier).SOPInstanceUID)
    }
    assert listed_uids(root / "DICOMDIR") == expected
    files = [p for p in root.rglob("*") if p.is_file() and p.name != "DICOMDIR"]
    assert len(files) == 7
    for path in files:
        assert_profile_path(root, path)
    assert dciodvfy_errors(root / "DICOMDIR") == []
    assert {row[5] for row in fileset_summary(root / "DICOMDIR").values()} == expected


@pytest.mark.anyio
@pytest.mark.requires_peer("dicom3tools")
async def test_getscu_media_layout_writes_a_dicomdir(tmp_path: Path, anyio_backend: str) -> None:
    files = write_ct_files(tmp_path / "src", 4, 64, patient_id="PAT-9")
    async with get_scp(files).server() as server:
        result = await run_cli(
            "getscu", "127.0.0.1", str(server.port), "--called-aet", "QRSCP",
            "--backend", anyio_backend, "--level", "STUDY", "--output-dir", "media",
            "--layout", "media", cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode == 0, (out(result), err(result))
        assert (
            out(result)
            .splitlines()[-1]
            .endswith("4 files written to media; media/DICOMDIR lists 4 instances")
        ), out(result)
        # a second retrieval into the same File-set: the DICOMDIR lists both
        more = write_ct_files(tmp_path / "src2", 2, 64, patient_id="PAT-10")
        async with get_scp(more).server() as second:
            again = await run_cli(
                "getscu", "127.0.0.1", str(second.port), "--called-aet", "QRSCP",
                "--backend", anyio_backend, "--level", "STUDY", "--output-dir", "media",
                "--layout", "media", cwd=tmp_path,
            )  # fmt: skip
    assert again.returncode == 0, (out(again), err(again))
    root = tmp_path / "media"
    stored = [p for p in root.rglob("*") if p.is_file() and p.name != "DICOMDIR"]
    assert len(stored) == 6
    for path in stored:
        assert_profile_path(root, path)
    assert listed_uids(root / "DICOMDIR") == {f.stem for f in [*files, *more]}
    assert dciodvfy_errors(root / "DICOMDIR") == []


@pytest.mark.requires_peer("dcmtk", "dicom3tools")
@pytest.mark.parametrize("lengths", ["+e", "-e"], ids=["explicit lengths", "undefined lengths"])
def test_instances_are_added_to_a_dicomdir_dcmmkdir_wrote(tmp_path: Path, lengths: str) -> None:
    """As File-set Updater: DCMTK's DICOMDIR (items of explicit or undefined length) is read
    as DCMTK wrote it, new instances are added, and the result still passes dciodvfy and
    reads the same in pydicom."""
    made = instances(2, 1, 3)
    paths = write_media_files(tmp_path, made[:4])
    names = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    result = subprocess.run(
        ["dcmmkdir", "+r", lengths, "+F", "", *names],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=GUARD,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    before = fileset_summary(tmp_path / "DICOMDIR")
    _, entries = read_dicomdir(tmp_path / "DICOMDIR")
    assert {e.file_id: e.sop_instance_uid for e in entries} == {k: v[5] for k, v in before.items()}
    added = write_media_files(tmp_path, made[4:])
    updater = DicomdirUpdater(tmp_path)
    for path in added:
        updater.add(path)
    assert updater.flush() == 6
    assert dciodvfy_errors(tmp_path / "DICOMDIR") == []
    after = fileset_summary(tmp_path / "DICOMDIR")
    assert {k: v for k, v in after.items() if k in before} == before
    assert set(after) == {p.relative_to(tmp_path).parts for p in [*paths, *added]}
