"""``asyncdicom storescp`` run as a subprocess, on both backends: the output folder checked at
start, write failures, duplicates, the sorted layout, stale temporary files, progress lines and
option values.

The peer is an in-process SCU on the test's own event loop (the same backend as the app).
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from subprocess import PIPE

import anyio
import pydicom
import pytest
from pydicom.dataset import Dataset
from test_cli import CLI, ENV, GUARD, REAL_CLI, StoreSCPProcess, err, out, run_cli
from test_cli_storescu import without_file_permission_override

from asyncdicom import AE, Association
from asyncdicom.protocol import uids
from asyncdicom.storage.synthetic import make_ct_instance
from tests.cli_main import run_main

pytestmark = pytest.mark.anyio

CT_CONTEXT = (uids.CT_IMAGE_STORAGE, [uids.EXPLICIT_VR_LITTLE_ENDIAN])
CONTEXTS = [uids.VERIFICATION, CT_CONTEXT]


@asynccontextmanager
async def storescp(cwd: Path, backend: str, *options: str) -> AsyncIterator[StoreSCPProcess]:
    """The app listening on 127.0.0.1 (a free port); stopped (SIGTERM) when the block ends if
    the test did not stop it."""
    args = [*CLI, "storescp", "--port", "0", "--host", "127.0.0.1", "--backend", backend]
    async with await anyio.open_process(
        [*args, *options], cwd=cwd, env=ENV, stdout=PIPE, stderr=PIPE
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


@asynccontextmanager
async def associate(scp: StoreSCPProcess) -> AsyncIterator[Association]:
    port = scp.port  # type: ignore[attr-defined]
    with anyio.fail_after(GUARD):
        async with AE("SCU").associate(
            "127.0.0.1", port, called_aet="STORESCP", contexts=CONTEXTS
        ) as assoc:
            yield assoc


def same_instance(ds: Dataset, *, seed: int) -> Dataset:
    """Another data set (other pixel values) with the UIDs and patient of ``ds``."""
    other = make_ct_instance(len(ds.PixelData), patient_id=str(ds.PatientID), seed=seed)
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        setattr(other, keyword, ds.get(keyword))
    assert other.PixelData != ds.PixelData
    return other


def lines_with(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


# --------------------------------------------------------------------------- the output folder


@pytest.mark.parametrize("case", ["read-only folder", "under a file", "a file"])
async def test_unwritable_output_dir_is_one_line_and_exit_2(
    tmp_path: Path, anyio_backend: str, case: str
) -> None:
    prefix: list[str] = []
    if case == "read-only folder":
        # as root, the app runs without the capabilities that override folder permissions
        prefix = without_file_permission_override()
        (tmp_path / "ro").mkdir(mode=0o555)
        target, problem = "ro", "cannot write in the folder 'ro': Permission denied"
    elif case == "under a file":
        (tmp_path / "file").write_text("not a folder")
        target, problem = (
            "file/incoming",
            "cannot create the folder 'file/incoming': Not a directory",
        )
    else:
        (tmp_path / "file").write_text("not a folder")
        target, problem = "file", "'file' is not a folder"
    before = sorted(p.name for p in tmp_path.iterdir())
    args = [
        "storescp", "--port", "0", "--host", "127.0.0.1", "--output-dir", target,
        "--backend", anyio_backend,
    ]  # fmt: skip
    with anyio.fail_after(GUARD):
        result = await anyio.run_process(
            [*prefix, *(REAL_CLI if prefix else CLI), *args], cwd=tmp_path, env=ENV, check=False
        )
    assert result.returncode == 2, err(result)
    assert err(result).splitlines() == [f"asyncdicom: error: argument --output-dir: {problem}"]
    assert out(result) == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == before


async def test_write_failure_is_one_warning_line_and_a700(
    tmp_path: Path, anyio_backend: str
) -> None:
    """A folder that stops being writable while the app runs: each instance gets 0xA700 (out of
    resources) and one warning line, the association goes on, no traceback."""
    output = tmp_path / "incoming"
    instances = [make_ct_instance(2000, seed=n) for n in range(2)]
    async with storescp(tmp_path, anyio_backend, "--output-dir", "incoming") as scp:
        shutil.rmtree(output)
        output.write_text("a file where the folder was")
        async with associate(scp) as assoc:
            for ds in instances:
                assert (await assoc.store(ds)).status == 0xA700
            assert (await assoc.echo()).status == 0x0000
        assert await scp.stop() == 0
    stderr = scp.stderr.decode()
    assert "Traceback" not in stderr, stderr
    for ds in instances:
        (line,) = lines_with(stderr, str(ds.SOPInstanceUID))
        assert "warning" in line and "store_failed" in line and "0xA700" in line, line
    (summary,) = lines_with(stderr, "storescp: received")
    assert "received 0 instances" in summary and "2 failed" in summary, summary


async def test_refused_stores_say_why_in_the_error_comment(
    tmp_path: Path, anyio_backend: str
) -> None:
    """A C-STORE storescp refuses carries the reason as Error Comment (0000,0902), not only
    in the server's log: a data set cut short (0xC000) and one whose SOP Instance UID is not
    its command's (0xA900), each comment within the 64 characters of an LO."""
    from asyncdicom.protocol.messages import CStoreRQ
    from asyncdicom.storage.codec import encode_dataset

    ds = make_ct_instance(2000, seed=5)
    raw = encode_dataset(ds, uids.EXPLICIT_VR_LITTLE_ENDIAN)
    async with storescp(tmp_path, anyio_backend, "--output-dir", "incoming") as scp:
        async with associate(scp) as assoc:
            context = assoc.find_context(uids.CT_IMAGE_STORAGE)
            assert context is not None

            async def send(data: bytes, sop_instance: str) -> object:
                return await assoc.request(
                    context,
                    CStoreRQ(
                        message_id=assoc.next_message_id(),
                        affected_sop_class_uid=uids.CT_IMAGE_STORAGE,
                        affected_sop_instance_uid=sop_instance,
                    ),
                    data,
                )

            cut = await send(raw[:-10], str(ds.SOPInstanceUID))
            other = await send(raw, "1.2.826.0.1.3680043.18.10.98")
        assert await scp.stop() == 0
    assert cut.status == 0xC000  # type: ignore[attr-defined]
    assert other.status == 0xA900  # type: ignore[attr-defined]
    assert other.error_comment == (  # type: ignore[attr-defined]
        "data set's SOP Instance UID (0008,0018) is not the command's"
    )
    comment = cut.error_comment  # type: ignore[attr-defined]
    assert comment and len(comment) <= 64, comment
    assert not list((tmp_path / "incoming").rglob("*.dcm"))


# --------------------------------------------------------------------------- duplicates


@pytest.mark.parametrize("policy", [None, "unique", "overwrite", "ignore"])
async def test_duplicate_instance_is_a_warning_and_follows_the_policy(
    tmp_path: Path, anyio_backend: str, policy: str | None
) -> None:
    first = make_ct_instance(5000, seed=1)
    again = same_instance(first, seed=2)
    options = [] if policy is None else ["--on-duplicate", policy]
    async with storescp(tmp_path, anyio_backend, "--output-dir", "in", *options) as scp:
        async with associate(scp) as assoc:
            assert (await assoc.store(first)).status == 0x0000
            assert (await assoc.store(again)).status == 0x0000
        assert await scp.stop() == 0
    stderr = scp.stderr.decode()
    uid = str(first.SOPInstanceUID)
    (warning,) = lines_with(stderr, "duplicate_instance")
    assert "warning" in warning and uid in warning, warning
    files = sorted((tmp_path / "in").iterdir())
    pixels = [pydicom.dcmread(f).PixelData for f in files]
    if policy in (None, "unique"):  # the default keeps both
        assert [f.name for f in files] == [f"{uid}.dcm", f"{uid}_1.dcm"]
        assert pixels == [first.PixelData, again.PixelData]
    elif policy == "overwrite":
        assert [f.name for f in files] == [f"{uid}.dcm"] and pixels == [again.PixelData]
    else:
        assert [f.name for f in files] == [f"{uid}.dcm"] and pixels == [first.PixelData]


# --------------------------------------------------------------------------- sorted layout


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")
async def test_sorted_layout_stays_inside_the_output_dir(
    tmp_path: Path, anyio_backend: str
) -> None:
    hostile = make_ct_instance(3000, patient_id="../../etc", seed=1)
    missing = make_ct_instance(3000, seed=2)
    del missing.PatientID, missing.StudyInstanceUID
    bad_series = make_ct_instance(3000, patient_id="P1", seed=3)
    bad_series.SeriesInstanceUID = "../.."
    (tmp_path / "work").mkdir()
    async with storescp(
        tmp_path / "work", anyio_backend, "--output-dir", "in", "--layout", "sorted"
    ) as scp:
        async with associate(scp) as assoc:
            for ds in (hostile, missing, bad_series):
                assert (await assoc.store(ds)).status == 0x0000
        assert await scp.stop() == 0
    root = tmp_path / "work" / "in"
    found = {p.stem: p.relative_to(root).parts[:-1] for p in root.rglob("*.dcm")}
    assert found.pop(str(hostile.SOPInstanceUID)) == (
        "___.._etc",
        str(hostile.StudyInstanceUID),
        str(hostile.SeriesInstanceUID),
    )
    assert found.pop(str(missing.SOPInstanceUID)) == (
        "UNKNOWN",
        "UNKNOWN",
        str(missing.SeriesInstanceUID),
    )
    patient, study, series = found.pop(str(bad_series.SOPInstanceUID))
    assert (patient, study) == ("P1", str(bad_series.StudyInstanceUID))
    assert re.fullmatch(r"uid-[0-9a-f]{32}", series), series
    assert found == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["in"]
    assert not [p for p in root.rglob("*") if p.name.endswith(".part")]


# --------------------------------------------------------------------------- stale files


async def test_stale_temporary_files_are_removed_at_start(
    tmp_path: Path, anyio_backend: str
) -> None:
    output = tmp_path / "in"
    output.mkdir()
    stale = [output / f".{c * 32}.part" for c in "0f"]
    for path in stale:
        path.write_bytes(b"half an instance from a killed run")
    unrelated = [output / "notes.part", output / "1.2.3.dcm"]
    for path in unrelated:
        path.write_bytes(b"not a temporary file")
    async with storescp(tmp_path, anyio_backend, "--output-dir", "in") as scp:
        assert not any(p.exists() for p in stale)
        assert all(p.exists() for p in unrelated)
        assert await scp.stop() == 0
    stderr = scp.stderr.decode()
    (note,) = lines_with(stderr, "temporary files")
    assert "removed 2 temporary files" in note and "interrupted" in note, note


# --------------------------------------------------------------------------- progress


@pytest.mark.parametrize(
    ("verbose", "ignore"),
    [(False, False), (True, False), (True, True)],
    ids=["default", "verbose", "verbose-ignore"],
)
async def test_summary_per_association_and_a_line_per_instance_with_v(
    tmp_path: Path, anyio_backend: str, verbose: bool, ignore: bool
) -> None:
    instances = [make_ct_instance(20_000, seed=n) for n in range(4)]
    options = ["--ignore"] if ignore else ["--output-dir", "in"]
    if verbose:
        options.append("-v")
    async with storescp(tmp_path, anyio_backend, *options) as scp:
        async with associate(scp) as assoc:
            for ds in instances[:3]:
                assert (await assoc.store(ds)).status == 0x0000
        async with associate(scp) as assoc:
            assert (await assoc.store(instances[3])).status == 0x0000
            await assoc.abort()
        async with associate(scp) as assoc:
            assert (await assoc.echo()).status == 0x0000  # stores nothing: no summary
        assert await scp.stop() == 0
    stderr = scp.stderr.decode()
    summaries = lines_with(stderr, "storescp: received")
    pattern = (
        r"storescp: received {} \((\d+\.\d) kB\) from SCU@127\.0\.0\.1:\d+ in \d+\.\d\d s \({}\)"
    )
    assert len(summaries) == 2, stderr
    three = re.fullmatch(pattern.format("3 instances", "released"), summaries[0])
    one = re.fullmatch(pattern.format("1 instance", "aborted"), summaries[1])
    assert three and one, summaries
    assert float(three.group(1)) >= 3 * 20_000 / 1e3
    for ds in instances:
        uid = str(ds.SOPInstanceUID)
        lines = lines_with(stderr, uid)
        if not verbose:
            assert lines == [], lines
            continue
        (line,) = lines
        assert "instance_received" in line and "sop_class='CT Image Storage'" in line, line
        assert (f"{uid}.dcm" in line) != ignore, line
    assert "Traceback" not in stderr


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--max-associations", "0"),
        ("--max-associations", "-1"),
        ("--max-associations", "many"),
        ("--acse-timeout", "-1"),
        ("--dimse-timeout", "0"),
        ("--network-timeout", "nan"),
        ("--network-timeout", "-5"),
        ("--port", "70000"),
        ("--port", "-5"),
        ("--aet", ""),
        ("--aet", "SEVENTEEN-CHARS-X"),
        ("--max-pdu", "0"),
        ("--layout", "tree"),
        ("--on-duplicate", "replace"),
        ("--output-dir", ""),
    ],
    ids=lambda v: v or "empty",
)
def test_bad_option_values_are_usage_errors(
    tmp_path: Path, anyio_backend: str, option: str, value: str
) -> None:
    args = {"--port": "0", "--output-dir": "in", option: value}
    result = run_main(
        "storescp", *[item for pair in args.items() for item in pair],
        "--backend", anyio_backend, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, (out(result), err(result))
    last = err(result).strip().splitlines()[-1]
    assert last.startswith(f"asyncdicom storescp: error: argument {option}: "), last
    assert "Traceback" not in err(result)
    assert list(tmp_path.iterdir()) == []


async def test_help_documents_layout_and_duplicates(tmp_path: Path) -> None:
    result = await run_cli("storescp", "--help", cwd=tmp_path)
    assert result.returncode == 0, err(result)
    text = " ".join(out(result).split())
    assert "--layout {flat,sorted,media}" in text and "(default: flat)" in text
    assert "--on-duplicate {unique,overwrite,ignore}" in text and "(default: unique)" in text
    assert re.search(r"--max-associations N .*\(default: 1000\)", text), text


@pytest.mark.parametrize("app", ["storescp", "qrscp"])
def test_server_apps_limit_idle_associations_by_default(app: str, tmp_path: Path) -> None:
    """A silent peer cannot hold an association slot forever: 300 s unless told otherwise."""
    from asyncdicom.cli.main import build_parser

    parser = build_parser()
    base = [app, "--port", "0"] + (
        ["--output-dir", str(tmp_path)] if app == "storescp" else ["--storage", str(tmp_path)]
    )
    assert parser.parse_args(base).network_timeout == 300.0
    assert parser.parse_args([*base, "--network-timeout", "0"]).network_timeout is None
    assert parser.parse_args([*base, "--network-timeout", "none"]).network_timeout is None
    assert parser.parse_args([*base, "--network-timeout", "2.5"]).network_timeout == 2.5


@pytest.mark.parametrize("app", ["storescp", "qrscp", "stgcmtscu"])
async def test_a_port_in_use_cannot_be_listened_on_and_nothing_is_created(
    tmp_path: Path, anyio_backend: str, app: str
) -> None:
    """The port is taken: the app says it cannot *listen* on its own address (it said "cannot
    connect to", and stgcmtscu named the peer's port), and creates no folder or index."""
    from test_cli import free_port

    from asyncdicom.storage.synthetic import write_ct_files

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        if app == "stgcmtscu":
            (file,) = write_ct_files(tmp_path / "src", 1, 16)
            peer = str(free_port())
            argv = ["stgcmtscu", "127.0.0.1", peer, str(file), "--called-aet", "QRSCP"]
            argv += ["--listen-host", "127.0.0.1", "--listen-port", str(port)]
        else:
            folder = "--output-dir" if app == "storescp" else "--storage"
            argv = [app, "--host", "127.0.0.1", "--port", str(port), folder, "out"]
        result = await run_cli(*argv, "--backend", anyio_backend, cwd=tmp_path)
    assert result.returncode == 1, err(result)
    assert err(result).splitlines() == [
        f"asyncdicom: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
    assert not (tmp_path / "out").exists()
