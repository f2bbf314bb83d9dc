"""``asyncdicom qrscp`` run as a subprocess, on both backends: instances stored with
``asyncdicom storescu`` are found with ``asyncdicom findscu``, also after a restart on the same
folder; C-MOVE to a storescp; usage errors (bad --move-destination, unusable storage folder)."""

from __future__ import annotations

import os
import shlex
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from subprocess import PIPE
from typing import Any

import anyio
import pytest
from test_cli import CLI, ENV, GUARD, REAL_CLI, StoreSCPProcess, err, out, run_cli
from test_cli_storescu import without_file_permission_override

from asyncdicom import HookEvent, uids
from asyncdicom.storage.synthetic import make_ct_instance
from tests.cli_main import run_main

pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("ignore::UserWarning")]


@asynccontextmanager
async def app(cwd: Path, backend: str, *args: str) -> AsyncIterator[StoreSCPProcess]:
    """``asyncdicom ARGS`` listening on 127.0.0.1 (a free port; ``.port``), stopped with
    SIGTERM when the block ends unless the test stopped it."""
    command = [*CLI, *args, "--port", "0", "--host", "127.0.0.1", "--backend", backend]
    async with await anyio.open_process(
        command, cwd=cwd, env=ENV, stdout=PIPE, stderr=PIPE
    ) as process:
        scp = StoreSCPProcess(process)
        try:
            scp.port = await scp.wait_listening()  # type: ignore[attr-defined]
            yield scp
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                with anyio.fail_after(GUARD, shield=True):
                    await process.wait()


def write_instances(folder: Path) -> list[str]:
    """Two studies of patient P1 (CT and MR series) and one of P2; the SOP Instance UIDs."""
    folder.mkdir(parents=True)
    made = []
    for n, (patient, study, series, modality) in enumerate(
        [
            ("P1", "1.1", "1.1.1", "CT"),
            ("P1", "1.1", "1.1.2", "MR"),
            ("P1", "1.2", "1.2.1", "CT"),
            ("P2", "2.1", "2.1.1", "CT"),
        ]
    ):
        ds = make_ct_instance(
            64, patient_id=patient, study_instance_uid=study, series_instance_uid=series
        )
        ds.Modality = modality
        ds.PatientName = f"DOE^{patient}"
        ds.save_as(folder / f"{n}.dcm", enforce_file_format=True)
        made.append(str(ds.SOPInstanceUID))
    return made


async def findscu(port: int, backend: str, cwd: Path, *keys: str) -> list[dict[str, str]]:
    args = [f"-k{key}" for key in keys]
    result = await run_cli(
        "findscu", "127.0.0.1", str(port), "--called-aet", "QRSCP", "--backend", backend,
        "--level", "STUDY", "-k", "StudyInstanceUID", *args, cwd=cwd,
    )  # fmt: skip
    assert result.returncode == 0, err(result)
    return [dict(p.split("=", 1) for p in shlex.split(line)) for line in out(result).splitlines()]


async def test_store_find_restart_find(
    tmp_path: Path, anyio_backend: str, archive_db: str | None
) -> None:
    write_instances(tmp_path / "src")
    db = [] if archive_db is None else ["--db", archive_db]
    with anyio.fail_after(GUARD * 3):
        async with app(tmp_path, anyio_backend, "qrscp", "--storage", "archive", *db) as scp:
            port = scp.port  # type: ignore[attr-defined]
            sent = await run_cli(
                "storescu", "127.0.0.1", str(port), "src", "--called-aet", "QRSCP",
                "--backend", anyio_backend, cwd=tmp_path,
            )  # fmt: skip
            assert sent.returncode == 0, err(sent)
            echo = await run_cli("echoscu", "127.0.0.1", str(port), cwd=tmp_path)
            assert echo.returncode == 0, err(echo)
            before = await findscu(
                port, anyio_backend, tmp_path, "PatientID=P1", "ModalitiesInStudy"
            )
            assert await scp.stop() == 0
        assert "Traceback" not in scp.stderr.decode()
        async with app(tmp_path, anyio_backend, "qrscp", "--storage", "archive", *db) as scp:
            assert "(4 instances in archive)" in scp.stderr.decode()
            port = scp.port  # type: ignore[attr-defined]
            after = await findscu(
                port, anyio_backend, tmp_path, "PatientID=P1", "ModalitiesInStudy"
            )
            everyone = await findscu(port, anyio_backend, tmp_path, "PatientName=DOE*")
            assert await scp.stop() == 0
    expected = [
        {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.1", "PatientID": "P1",
         "ModalitiesInStudy": "CT\\MR", "SpecificCharacterSet": "ISO_IR 100"},
        {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2", "PatientID": "P1",
         "ModalitiesInStudy": "CT", "SpecificCharacterSet": "ISO_IR 100"},
    ]  # fmt: skip
    assert before == expected
    assert after == expected
    assert sorted(m["StudyInstanceUID"] for m in everyone) == ["1.1", "1.2", "2.1"]
    assert (tmp_path / "archive" / "index.sqlite").is_file() == (archive_db is None)


async def test_postgresql_db_without_its_driver_says_what_to_install(tmp_path: Path) -> None:
    # psycopg made unimportable for the process: a package of that name that refuses
    blocker = tmp_path / "blocker" / "psycopg"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('psycopg hidden by the test')\n")
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(blocker.parent), ENV.get("PYTHONPATH", "")])}
    with anyio.fail_after(GUARD):
        result = await anyio.run_process(
            [*CLI, "qrscp", "--storage", "archive", "--db", "postgresql://127.0.0.1/x",
             "--port", "0"],
            cwd=tmp_path, env=env, check=False,
        )  # fmt: skip
    assert result.returncode == 2
    message = err(result)
    assert "argument --db" in message and "pip install 'asyncdicom[postgresql]'" in message
    assert not (tmp_path / "archive").exists()


async def test_move_to_a_storescp(tmp_path: Path, anyio_backend: str) -> None:
    uids = write_instances(tmp_path / "src")
    with anyio.fail_after(GUARD * 3):
        async with app(
            tmp_path, anyio_backend, "storescp", "--aet", "STORESCP", "--output-dir", "moved"
        ) as dest:
            dest_port = dest.port  # type: ignore[attr-defined]
            async with app(
                tmp_path, anyio_backend, "qrscp", "--storage", "archive", "--db", "qr.sqlite",
                "--move-destination", f"STORESCP=127.0.0.1:{dest_port}",
            ) as scp:  # fmt: skip
                port = scp.port  # type: ignore[attr-defined]
                sent = await run_cli(
                    "storescu", "127.0.0.1", str(port), "src", "--backend", anyio_backend,
                    cwd=tmp_path,
                )  # fmt: skip
                assert sent.returncode == 0, err(sent)
                moved = await run_cli(
                    "movescu", "127.0.0.1", str(port), "--called-aet", "QRSCP",
                    "--backend", anyio_backend, "--level", "STUDY", "-k", "StudyInstanceUID=1.1",
                    "--move-dest", "STORESCP", cwd=tmp_path,
                )  # fmt: skip
                unknown = await run_cli(
                    "movescu", "127.0.0.1", str(port), "--called-aet", "QRSCP",
                    "--backend", anyio_backend, "--level", "STUDY", "-k", "StudyInstanceUID=1.1",
                    "--move-dest", "NOWHERE", cwd=tmp_path,
                )  # fmt: skip
    assert moved.returncode == 0, (out(moved), err(moved))
    assert sorted(p.stem for p in (tmp_path / "moved").iterdir()) == sorted(uids[:2])
    assert unknown.returncode == 1
    assert "0xA801" in err(unknown), err(unknown)
    assert (tmp_path / "qr.sqlite").is_file()
    assert not (tmp_path / "archive" / "index.sqlite").exists()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("STORESCP", "expected AET=HOST:PORT"),
        ("STORESCP=127.0.0.1", "expected AET=HOST:PORT"),
        ("STORESCP=127.0.0.1:0", "a TCP port is 1..65535, not 0"),
        ("STORESCP=127.0.0.1:x", "not a whole number"),
        ("A-TITLE-LONGER-THAN-16=h:104", "at most 16 characters"),
        ("X=::1:104", "IPv6 address in brackets"),
    ],
)
def test_bad_move_destination_is_a_usage_error(
    tmp_path: Path, anyio_backend: str, value: str, message: str
) -> None:
    result = run_main(
        "qrscp", "--port", "0", "--storage", "archive", "--move-destination", value,
        "--backend", anyio_backend, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, err(result)
    last = err(result).strip().splitlines()[-1]
    assert last.startswith("asyncdicom qrscp: error: argument --move-destination:"), last
    assert message in last, last
    assert not (tmp_path / "archive").exists()


def test_duplicate_move_destination_is_a_usage_error(tmp_path: Path, anyio_backend: str) -> None:
    result = run_main(
        "qrscp", "--port", "0", "--storage", "archive", "--backend", anyio_backend,
        "--move-destination", "A=h:104", "--move-destination", "A=k:105", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, err(result)
    assert err(result).splitlines() == [
        "asyncdicom: error: argument --move-destination: 'A' is given twice"
    ]


@pytest.mark.parametrize("case", ["read-only folder", "a file", "not an index"])
async def test_unusable_storage_or_index_is_one_line_and_exit_2(
    tmp_path: Path, anyio_backend: str, case: str
) -> None:
    prefix: list[str] = []
    options = ["--storage", "archive"]
    if case == "read-only folder":
        prefix = without_file_permission_override()
        (tmp_path / "archive").mkdir(mode=0o555)
        expected = "argument --storage: cannot write in the folder 'archive': Permission denied"
    elif case == "a file":
        (tmp_path / "archive").write_text("not a folder")
        expected = "argument --storage: 'archive' is not a folder"
    else:
        (tmp_path / "notes.sqlite").write_text("not a database, not an index")
        options += ["--db", "notes.sqlite"]
        expected = "argument --db: cannot use the index 'notes.sqlite'"
    args = ["qrscp", "--port", "0", "--host", "127.0.0.1", "--backend", anyio_backend, *options]
    with anyio.fail_after(GUARD):
        result = await anyio.run_process(
            [*prefix, *(REAL_CLI if prefix else CLI), *args], cwd=tmp_path, env=ENV, check=False
        )
    assert result.returncode == 2, err(result)
    lines = err(result).splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"asyncdicom: error: {expected}"), lines


# --------------------------------------------------------------------------- storage commitment


async def test_stgcmtscu_against_qrscp(tmp_path: Path, anyio_backend: str) -> None:
    """3 instances stored with storescu and 1 never sent: stgcmtscu reports 3 committed and 1
    failed (0x0112, no such object instance), exit status 1."""
    write_instances(tmp_path / "src")
    unknown = tmp_path / "src" / "3.dcm"
    unknown.rename(tmp_path / "unknown.dcm")
    with anyio.fail_after(GUARD * 3):
        async with app(tmp_path, anyio_backend, "qrscp", "--storage", "archive") as scp:
            port = str(scp.port)  # type: ignore[attr-defined]
            sent = await run_cli(
                "storescu", "127.0.0.1", port, "src", "--backend", anyio_backend, cwd=tmp_path
            )
            assert sent.returncode == 0, err(sent)
            result = await run_cli(
                "stgcmtscu", "127.0.0.1", port, "src", "unknown.dcm", "--called-aet", "QRSCP",
                "--backend", anyio_backend, "--timeout", "30", cwd=tmp_path,
            )  # fmt: skip
            assert await scp.stop() == 0
    assert result.returncode == 1, (out(result), err(result))
    (line,) = err(result).splitlines()
    assert line.startswith(
        "asyncdicom: error: unknown.dcm: not committed: 0x0112 (no such object"
    ), line
    assert out(result).startswith("committed 3 of 4 instances, failed 1; ")
    assert "reported by QRSCP" in out(result)
    assert "Traceback" not in scp.stderr.decode()


async def test_peer_receives_the_report_on_a_new_association(
    tmp_path: Path, anyio_backend: str
) -> None:
    """The requestor keeps its association but never answers the report there: after
    --dimse-timeout qrscp gives that association up and reports to the --peer address."""
    from pydicom.uid import generate_uid

    from asyncdicom import AE, presets
    from asyncdicom.services.commitment import (
        STORAGE_COMMITMENT,
        STORAGE_COMMITMENT_INSTANCE,
        awaiting_report,
        commitment_request,
    )

    scu = AE("MODALITY", supported_contexts=presets.storage_commitment_scu_supported())
    incoming: list[str] = []
    scu.hooks.add(
        HookEvent.ASSOCIATION_ACCEPTED,
        lambda _e, a, **_: a.role.name == "ACCEPTOR" and incoming.append(a.peer_ae_title),
    )
    transaction = generate_uid()
    refs = [(uids.CT_IMAGE_STORAGE, "1.2.826.0.1.3680043.10.77")]
    with anyio.fail_after(GUARD * 2):
        async with scu.server("127.0.0.1", 0) as listening:
            async with app(
                tmp_path, anyio_backend, "qrscp", "--storage", "archive", "--dimse-timeout", "1",
                "--peer", f"MODALITY=127.0.0.1:{listening.port}",
            ) as scp:  # fmt: skip
                with awaiting_report(scu, transaction) as pending:
                    async with scu.associate(
                        "127.0.0.1", scp.port, called_aet="QRSCP",  # type: ignore[attr-defined]
                        contexts=[STORAGE_COMMITMENT],
                    ) as assoc:  # fmt: skip

                        @assoc.on("N-EVENT-REPORT", sop_class=STORAGE_COMMITMENT)
                        async def never_answer(request: Any) -> int:
                            await anyio.sleep_forever()
                            return 0  # pragma: no cover

                        rsp = await assoc.n_action(
                            STORAGE_COMMITMENT,
                            STORAGE_COMMITMENT_INSTANCE,
                            1,
                            commitment_request(transaction, refs),
                        )
                        result = await pending.wait(GUARD)
                assert await scp.stop() == 0
    assert rsp.status == 0x0000
    assert result.failed == ((*refs[0], 0x0112),) and result.committed == ()
    assert incoming == ["QRSCP"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["MODALITY"], "argument --peer: 'MODALITY': expected AET=HOST:PORT"),
        (["M=127.0.0.1:0"], "argument --peer: a TCP port is 1..65535, not 0"),
        (["A=h:104", "A=k:105"], "argument --peer: 'A' is given twice"),
    ],
)
def test_bad_peer_is_a_usage_error(
    tmp_path: Path, anyio_backend: str, values: list[str], message: str
) -> None:
    options = [arg for value in values for arg in ("--peer", value)]
    result = run_main(
        "qrscp", "--port", "0", "--storage", "archive", "--backend", anyio_backend, *options,
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, err(result)
    assert message in err(result).strip().splitlines()[-1], err(result)


@pytest.mark.requires_peer("postgresql")
async def test_check_folder_indexes_a_file_a_postgresql_index_lacks(
    tmp_path: Path, anyio_backend: str, postgres_url: str
) -> None:
    """On a shared (PostgreSQL) index the folder is compared with the index only when the
    database is new, or with --check-folder: a file copied in by hand is indexed then."""
    write_instances(tmp_path / "src")
    args = ["qrscp", "--storage", "archive", "--db", postgres_url]
    with anyio.fail_after(GUARD * 3):
        async with app(tmp_path, anyio_backend, *args) as scp:
            sent = await run_cli(
                "storescu", "127.0.0.1", str(scp.port), "src", "--called-aet", "QRSCP",  # type: ignore[attr-defined]
                "--backend", anyio_backend, cwd=tmp_path,
            )  # fmt: skip
            assert sent.returncode == 0, err(sent)
            assert await scp.stop() == 0
        extra = make_ct_instance(64, patient_id="P9", study_instance_uid="9.1")
        extra.save_as(tmp_path / "archive" / "copied-in.dcm", enforce_file_format=True)
        async with app(tmp_path, anyio_backend, *args) as scp:
            assert "(4 instances in archive)" in scp.stderr.decode()
            assert await scp.stop() == 0
        async with app(tmp_path, anyio_backend, *args, "--check-folder") as scp:
            assert "(5 instances in archive)" in scp.stderr.decode(), scp.stderr.decode()
            found = await findscu(scp.port, anyio_backend, tmp_path, "PatientID=P9")  # type: ignore[attr-defined]
            assert await scp.stop() == 0
    assert [m["StudyInstanceUID"] for m in found] == ["9.1"]
