"""Smoke tests of the peer harness: real DCMTK and pynetdicom peers talk to each other.

These prove the harness (start, readiness, stop, the command builders, the comparison helper),
not asyncdicom; asyncdicom's interop tests reuse the same fixtures. Blocking harness calls run
in a worker thread (``anyio.to_thread.run_sync``) so the event loop stays free, as it must when
an asyncdicom peer shares the loop.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import anyio
import pytest
from harness.peers import (
    LOCALHOST,
    DcmtkStoreSCP,
    PeerStartError,
    PynetdicomSCP,
    dcmtk_echoscu,
    dcmtk_env,
    dcmtk_storescu,
    echoscu_command,
    free_port,
    instance_differences,
    pynetdicom_scu_command,
)
from pydicom import dcmread

pytestmark = [pytest.mark.interop, pytest.mark.anyio, pytest.mark.requires_peer("dcmtk")]


def _by_instance_uid(paths: Iterable[Path]) -> dict[str, Path]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in paths}


def _assert_all_received(received: list[Path], sent: list[Path]) -> None:
    got = _by_instance_uid(received)
    want = _by_instance_uid(sent)
    assert sorted(got) == sorted(want)
    for uid, source in want.items():
        assert instance_differences(got[uid], source) == [], source.name


async def _run_pynetdicom_scu(operation: str, host: str, port: int, *args: str) -> Any:
    result = await anyio.run_process(
        pynetdicom_scu_command(operation, host, port, *args), check=False
    )
    assert result.returncode == 0, result.stderr.decode() + result.stdout.decode()
    return json.loads(result.stdout)


async def test_dcmtk_echoscu_to_dcmtk_storescp(dcmtk_storescp: DcmtkStoreSCP) -> None:
    result = await anyio.to_thread.run_sync(
        functools.partial(
            dcmtk_echoscu,
            dcmtk_storescp.host,
            dcmtk_storescp.port,
            called_aet=dcmtk_storescp.aet,
            repeat=3,
        )
    )
    assert result.returncode == 0, result.stderr
    assert dcmtk_storescp.is_running()


async def test_echoscu_command_runs_under_anyio(dcmtk_storescp: DcmtkStoreSCP) -> None:
    # The argument-list builders are meant for anyio.run_process with dcmtk_env().
    command = echoscu_command(dcmtk_storescp.host, dcmtk_storescp.port, repeat=2)
    result = await anyio.run_process(command, env=dcmtk_env(), check=False)
    assert result.returncode == 0, result.stderr.decode()


async def test_dcmtk_echoscu_fails_without_a_peer(require_dcmtk: None) -> None:
    # Negative control: the exit code of echoscu is meaningful (nobody listens on the port).
    port = free_port()
    result = await anyio.to_thread.run_sync(
        functools.partial(dcmtk_echoscu, LOCALHOST, port, timeout=5.0)
    )
    assert result.returncode != 0


@pytest.mark.requires_peer("dcmtk", "pynetdicom")
async def test_dcmtk_storescu_folder_to_pynetdicom_scp(
    require_dcmtk: None,
    pynetdicom_scp: PynetdicomSCP,
    sample_files: list[Path],
    tmp_path: Path,
) -> None:
    folder = tmp_path / "to-send"
    folder.mkdir()
    for path in sample_files:
        shutil.copy(path, folder / path.name)
    result = await anyio.to_thread.run_sync(
        functools.partial(
            dcmtk_storescu,
            pynetdicom_scp.host,
            pynetdicom_scp.port,
            [folder],  # a directory: the harness adds +sd
            called_aet=pynetdicom_scp.aet,
        )
    )
    assert result.returncode == 0, result.stderr
    _assert_all_received(pynetdicom_scp.received_files(), sample_files)
    await anyio.to_thread.run_sync(pynetdicom_scp.stop)
    assert pynetdicom_scp.returncode == 0
    assert pynetdicom_scp.stats is not None
    assert pynetdicom_scp.stats["stores"] == len(sample_files)
    assert pynetdicom_scp.stats["store_failures"] == 0


@pytest.mark.requires_peer("dcmtk", "pynetdicom")
async def test_pynetdicom_scu_store_to_dcmtk_storescp(
    dcmtk_storescp: DcmtkStoreSCP, sample_files: list[Path]
) -> None:
    report = await _run_pynetdicom_scu(
        "store",
        dcmtk_storescp.host,
        dcmtk_storescp.port,
        *map(str, sample_files),
        "--called-aet",
        dcmtk_storescp.aet,
    )
    assert report["requests"] == len(sample_files)
    assert report["success"] == len(sample_files)
    assert report["failed"] == 0
    _assert_all_received(dcmtk_storescp.received_files(), sample_files)


async def _pynetdicom_echo_run(host: str, port: int) -> Any:
    """The harness's pynetdicom C-ECHO run (5 requests) against DCMTK's storescp.

    Under heavy load pynetdicom 3.0 now and then never returns one response from
    ``send_c_echo`` and waits out its DIMSE timeout (two runs in about six loaded full-suite
    runs here; pynetdicom's own threads, with no asyncdicom code on either side). Such a run
    (a request left without a response, nothing else wrong) is made once more, with a
    warning; any other failure, or the same one twice, fails the test.
    """
    command = pynetdicom_scu_command("echo", host, port, "--repeat", "5", "--timeout", "15")
    for attempt in (1, 2):
        result = await anyio.run_process(command, check=False)
        report = json.loads(result.stdout) if result.stdout.strip() else {}
        # the symptom: a failure after the 15 s DIMSE timeout ran out
        lost = report.get("failed", 0) > 0 and report.get("elapsed_s", 0.0) >= 15.0
        if result.returncode == 0 or not lost or attempt == 2:
            break
        warnings.warn(f"pynetdicom lost a C-ECHO response; run again: {report}", stacklevel=1)
    assert result.returncode == 0, result.stderr.decode() + result.stdout.decode()
    return report


@pytest.mark.requires_peer("dcmtk", "pynetdicom")
async def test_pynetdicom_scu_echo_reports(dcmtk_storescp: DcmtkStoreSCP) -> None:
    host, port = dcmtk_storescp.host, dcmtk_storescp.port
    echo = await _pynetdicom_echo_run(host, port)
    assert (echo["associations"], echo["requests"], echo["success"]) == (1, 5, 5)
    assert echo["elapsed_s"] > 0
    assoc_echo = await _run_pynetdicom_scu("assoc-echo", host, port, "--count", "2")
    assert (assoc_echo["associations"], assoc_echo["success"]) == (2, 2)


async def test_storescp_ignore_mode_and_pdu_limit(
    dcmtk_storescp_factory: Any, sample_files: list[Path]
) -> None:
    scp: DcmtkStoreSCP = dcmtk_storescp_factory(output_dir=None, max_pdu=4096)
    assert "--ignore" in scp.command(scp.port)
    result = await anyio.to_thread.run_sync(
        functools.partial(dcmtk_storescu, scp.host, scp.port, sample_files[:2], max_pdu=4096)
    )
    assert result.returncode == 0, result.stderr
    with pytest.raises(RuntimeError):
        scp.received_files()


async def test_storescp_start_failure_carries_its_log(require_dcmtk: None) -> None:
    # A bound (not listening) socket holds the port: storescp cannot bind and exits, and no
    # probe connection can succeed, so the failure must come from the dead process.
    with socket.socket() as blocker:
        blocker.bind((LOCALHOST, 0))
        port = blocker.getsockname()[1]
        scp = DcmtkStoreSCP(port=port, output_dir=None)
        with pytest.raises(PeerStartError, match="Address already in use"):
            await anyio.to_thread.run_sync(scp.start)
        scp.cleanup()
        assert not scp.is_running()


@pytest.mark.requires_peer("pynetdicom")
async def test_pynetdicom_scp_start_failure_carries_its_log(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind((LOCALHOST, 0))
        port = blocker.getsockname()[1]
        scp = PynetdicomSCP(port=port, output_dir=None)
        with pytest.raises(PeerStartError, match="Address already in use"):
            await anyio.to_thread.run_sync(scp.start)
        scp.cleanup()
        assert not scp.is_running()


@pytest.mark.requires_peer()
def test_dcmtk_pdu_range_is_checked() -> None:
    with pytest.raises(ValueError):
        DcmtkStoreSCP(max_pdu=1024)


def test_dcmtk_lookup_skips_other_programs_with_dcmtk_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, require_dcmtk: None
) -> None:
    """pynetdicom installs scripts named storescp/storescu/echoscu that often come first on
    PATH; the harness must still run DCMTK's."""
    from harness.peers import find_dcmtk_program

    impostor = tmp_path / "storescp"
    impostor.write_text("#!/bin/sh\necho 'storescp.py v3.0 (not the real one)'\n")
    impostor.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("ASYNCDICOM_DCMTK_BIN", raising=False)
    find_dcmtk_program.cache_clear()
    try:
        found = find_dcmtk_program("storescp")
        assert found is not None and Path(found) != impostor
        monkeypatch.setenv("ASYNCDICOM_DCMTK_BIN", str(tmp_path))
        find_dcmtk_program.cache_clear()
        assert find_dcmtk_program("storescp") is None
    finally:
        find_dcmtk_program.cache_clear()
