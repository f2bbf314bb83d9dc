"""``storescp --workers`` and ``qrscp --workers`` run as subprocesses, on both backends: both
workers serve, the index is whole after concurrent ingest, a signal to any process stops the
server gracefully, and a worker that dies stops it with an error."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from subprocess import PIPE

import anyio
import pytest
from test_cli import CLI, ENV, GUARD, StoreSCPProcess, err, run_cli

import tests.test_tls as tls_tests
from asyncdicom import AE
from asyncdicom.protocol import uids
from asyncdicom.storage.synthetic import make_ct_instance
from tests.test_tls import PKI

pytestmark = pytest.mark.anyio

CONTEXTS = [(uids.CT_IMAGE_STORAGE, [uids.EXPLICIT_VR_LITTLE_ENDIAN])]

#: the test CA and certificates of tests/test_tls.py (a module-scoped fixture)
pki = tls_tests.pki


@asynccontextmanager
async def app(cwd: Path, backend: str, *options: str) -> AsyncIterator[StoreSCPProcess]:
    args = [*CLI, *options, "--port", "0", "--host", "127.0.0.1", "--backend", backend]
    cwd.mkdir(parents=True, exist_ok=True)
    async with await anyio.open_process(args, cwd=cwd, env=ENV, stdout=PIPE, stderr=PIPE) as p:
        scp = StoreSCPProcess(p)
        try:
            scp.port = await scp.wait_listening()  # type: ignore[attr-defined]
            yield scp
        finally:
            if p.returncode is None:
                p.send_signal(signal.SIGTERM)
                with anyio.fail_after(GUARD, shield=True):
                    await p.wait()


async def send(port: int, called: str, seeds: range) -> None:
    with anyio.fail_after(GUARD):
        async with AE("SENDER").associate(
            "127.0.0.1", port, called_aet=called, contexts=CONTEXTS
        ) as assoc:
            for seed in seeds:
                ds = make_ct_instance(2000, patient_id=f"P{seed % 3}", seed=seed)
                assert (await assoc.store(ds)).status == 0x0000


async def test_storescp_both_workers_receive(tmp_path: Path, anyio_backend: str) -> None:
    out = tmp_path / "out"
    options = ("storescp", "-v", "--output-dir", str(out), "--workers", "2")
    async with app(tmp_path, anyio_backend, *options) as scp:
        assert b"(2 workers)" in scp.stderr
        port = scp.port  # type: ignore[attr-defined]
        for n in range(24):
            await send(port, "STORESCP", range(n, n + 1))
        code = await scp.stop()
    assert code == 0
    text = scp.stderr.decode()
    summaries = [line for line in text.splitlines() if "storescp: received 1 instance" in line]
    assert len(summaries) == 24
    # connections are spread by a hash of the addresses: 24 all on one worker: 2**-23
    assert any(line.endswith("[worker 1]") for line in summaries)
    assert any(line.endswith("[worker 2]") for line in summaries)
    assert len(list(out.glob("*.dcm"))) == 24
    # each worker's log events say which worker it is
    instance_lines = [line for line in text.splitlines() if "instance_received" in line]
    assert len(instance_lines) == 24
    assert {line.split("worker=")[-1].split()[0] for line in instance_lines} == {"1", "2"}


async def test_qrscp_index_whole_after_concurrent_ingest(
    tmp_path: Path, anyio_backend: str
) -> None:
    storage = tmp_path / "archive"
    audit = tmp_path / "audit.jsonl"
    options = ("qrscp", "--storage", str(storage), "--workers", "2", "--audit-log", str(audit))
    async with app(tmp_path, anyio_backend, *options) as scp:
        port = scp.port  # type: ignore[attr-defined]
        async with anyio.create_task_group() as tg:
            for k in range(4):
                tg.start_soon(send, port, "QRSCP", range(k * 15, (k + 1) * 15))
        code = await scp.stop()
    assert code == 0, scp.stderr
    with sqlite3.connect(storage / "index.sqlite") as con:
        assert con.execute("SELECT count(*) FROM instance").fetchone() == (60,)
        assert con.execute("SELECT count(*) FROM patient").fetchone() == (3,)
        paths = [Path(p) for (p,) in con.execute("SELECT path FROM instance")]
    assert all(path.is_file() for path in paths)
    assert len(list(storage.rglob("*.dcm"))) == 60
    events = [json.loads(line)["event"] for line in audit.read_text().splitlines()]
    assert sorted(events) == ["accepted"] * 4 + ["released"] * 4
    # started again (one process), it finds the index and the folder agree
    async with app(tmp_path, anyio_backend, "qrscp", "--storage", str(storage)) as again:
        assert b"(60 instances in" in again.stderr
        assert await again.stop() == 0
    assert b"indexed" not in again.stderr


async def _pids(scp: StoreSCPProcess) -> list[int]:
    for line in scp.stderr.decode().splitlines():
        if line.startswith("{") and json.loads(line).get("event") == "listening":
            return [int(pid) for pid in json.loads(line)["pids"]]
    pytest.fail(f"no listening event: {scp.stderr!r}")


async def test_a_signal_to_one_worker_stops_the_server_gracefully(
    tmp_path: Path, anyio_backend: str
) -> None:
    out = tmp_path / "out"
    options = ("storescp", "--log-json", "--output-dir", str(out), "--workers", "2")
    async with app(tmp_path, anyio_backend, *options) as scp:
        pids = await _pids(scp)
        os.kill(pids[1], signal.SIGINT)
        with anyio.fail_after(GUARD):
            async for chunk in scp.process.stderr:
                scp.stderr += chunk
            code = await scp.process.wait()
    assert code == 0, scp.stderr
    assert b"worker_died" not in scp.stderr


async def test_a_worker_that_dies_stops_the_server(tmp_path: Path, anyio_backend: str) -> None:
    out = tmp_path / "out"
    options = ("storescp", "--log-json", "--output-dir", str(out), "--workers", "2")
    async with app(tmp_path, anyio_backend, *options) as scp:
        pids = await _pids(scp)
        os.kill(pids[0], signal.SIGKILL)
        with anyio.fail_after(GUARD):
            async for chunk in scp.process.stderr:
                scp.stderr += chunk
            code = await scp.process.wait()
    assert code == 1
    events = [json.loads(line) for line in scp.stderr.decode().splitlines() if line.startswith("{")]
    died = [e for e in events if e["event"] == "worker_died"]
    assert died and died[0]["pid"] == pids[0] and died[0]["exit_status"] == -signal.SIGKILL
    assert any(e["event"] == "cli_error" and f"pid {pids[0]}" in e["message"] for e in events), (
        events
    )


async def test_tls_in_every_worker(tmp_path: Path, pki: PKI, anyio_backend: str) -> None:
    """The TLS context (which cannot be sent to another process) is built again in each
    worker: every association is TLS, whichever worker takes it."""
    options = ("storescp", "--ignore", "--workers", "2")
    tls = ("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key))
    async with app(tmp_path, anyio_backend, *options, *tls) as scp:
        port = scp.port  # type: ignore[attr-defined]
        for _ in range(6):
            echo = await run_cli(
                "echoscu", "127.0.0.1", str(port), "--tls-ca", str(pki.ca), cwd=tmp_path
            )
            assert echo.returncode == 0, err(echo)
        plain = await run_cli("echoscu", "127.0.0.1", str(port), cwd=tmp_path)
        assert plain.returncode == 1
        assert await scp.stop() == 0
