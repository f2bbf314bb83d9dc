"""``asyncdicom router`` on the command line: usage errors (exit 2), the ``status`` action,
SIGUSR1, and ``kill -9`` in the middle of a run with four DCMTK senders and two destinations
(DCMTK storescp, and our own SCP that is down for the first half), on both backends.
"""

from __future__ import annotations

import re
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from subprocess import PIPE
from typing import Any

import anyio
import pytest
from harness.peers import DcmtkStoreSCP, storescu_command
from test_cli import ENV, GUARD, REAL_CLI
from test_router import Sink, instances, send, unused_port

from asyncdicom.router.queue import snapshot
from asyncdicom.storage.synthetic import write_ct_files
from tests.cli_main import run_main, run_main_async

# --------------------------------------------------------------------------- usage errors


def _usage(tmp_path: Path, *args: str) -> str:
    result = run_main("router", *args, cwd=tmp_path)
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert "Traceback" not in stderr
    return stderr


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ("to ARCHIVE\nto NOBODY\n", "line 2: no --forward destination has the AE title 'NOBODY'"),
        ("to ARCHIVE colour=red\n", "line 1: unknown condition 'colour'"),
        ("# nothing\n", "the file has no rule"),
        ("send ARCHIVE\n", "line 1: a rule starts with 'to DESTINATION'"),
    ],
)
def test_a_bad_rules_file_is_a_usage_error_naming_the_line(
    tmp_path: Path, rules: str, message: str
) -> None:
    (tmp_path / "rules.txt").write_text(rules)
    stderr = _usage(
        tmp_path,
        *("--port", "0", "--queue", "q", "--forward", "ARCHIVE@127.0.0.1:104"),
        *("--rules", "rules.txt"),
    )
    assert f"argument --rules: rules.txt: {message}" in stderr
    assert not (tmp_path / "q").exists()  # found before anything is created


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "0", "--queue", "q"], "the following arguments are required: --forward"),
        (["--queue", "q", "--forward", "A@h:1"], "the following arguments are required: --port"),
        (["--port", "0", "--queue", "q", "--forward", "A@h"], "argument --forward: 'A@h' is not"),
        (
            ["--port", "0", "--queue", "q", "--forward", "A@h:1", "--forward", "A@h:1"],
            "given twice",
        ),
        (
            ["--port", "0", "--queue", "q", "--forward", "A@h:1", "--rules", "none.txt"],
            "cannot read",
        ),
        (["--port", "0", "--queue", "q", "--forward", "A@h:1", "--retry-max", "0"], "--retry-max"),
        (
            ["--port", "0", "--queue", "q", "--forward", "A@h:1", "--tls-out-to", "B"],
            "argument --tls-out-to: 'B' is not a --forward AE title",
        ),
        (
            ["--port", "0", "--queue", "q", "--forward", "A@h:1", "--tls-key", "k.pem"],
            "--tls-key",
        ),
        (["status", "--queue", "q", "--port", "0"], "argument --port: not allowed with 'status'"),
        (["status"], "--queue"),
    ],
)
def test_option_mistakes_are_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    assert message in _usage(tmp_path, *args)


# --------------------------------------------------------------------------- the process


class RouterProcess:
    def __init__(self, process: Any) -> None:
        self.process = process
        self.stderr = b""
        self.port = 0

    async def read_until(self, pattern: bytes) -> re.Match[bytes]:
        with anyio.fail_after(GUARD):
            while not (match := re.search(pattern, self.stderr)):
                try:
                    self.stderr += await self.process.stderr.receive()
                except anyio.EndOfStream:
                    pytest.fail(f"the router exited: {self.stderr.decode()}")
            return match

    async def stop(self) -> int:
        """SIGTERM; the exit status (the rest of stderr is read)."""
        self.process.send_signal(signal.SIGTERM)
        with anyio.fail_after(GUARD):
            async for chunk in self.process.stderr:
                self.stderr += chunk
            return int(await self.process.wait())


@asynccontextmanager
async def router_process(cwd: Path, backend: str, *options: str) -> AsyncIterator[RouterProcess]:
    # a fresh interpreter: the tests read the router's pid and kill it with SIGKILL
    args = [
        *REAL_CLI,
        "router",
        "--port",
        "0",
        "--host",
        "127.0.0.1",
        "--backend",
        backend,
        *options,
    ]
    async with await anyio.open_process(args, cwd=cwd, env=ENV, stdout=PIPE, stderr=PIPE) as proc:
        router = RouterProcess(proc)
        try:
            match = await router.read_until(rb"listening on 127\.0\.0\.1:(\d+)")
            router.port = int(match.group(1))
            yield router
        finally:
            if proc.returncode is None:
                proc.kill()
                with anyio.fail_after(GUARD, shield=True):
                    await proc.wait()


pytestmark = pytest.mark.anyio


async def test_sigusr1_and_status_say_what_is_queued(tmp_path: Path, anyio_backend: str) -> None:
    down = f"DOWN@127.0.0.1:{unused_port()}"
    options = ("--queue", "q", "--forward", down, "--retry-delay", "30")
    async with router_process(tmp_path, anyio_backend, *options) as router:
        assert await send(router.port, instances(3)) == [0, 0, 0]
        router.process.send_signal(signal.SIGUSR1)
        await router.read_until(rb"router: received 3, refused 0")
        line = await router.read_until(rb"router: " + re.escape(down.encode()) + rb": [^\n]*\n")
        assert (
            b"3 queued, 0 forwarded, 0 dead letters, last error: connection refused by "
            + down.encode()
            in (line.group(0))
        )
        assert b"next attempt in" in line.group(0)
        while_running = await run_main_async("router", "status", "--queue", "q", cwd=tmp_path)
        assert await router.stop() == 0, router.stderr.decode()
    out = while_running.stdout.decode()
    assert while_running.returncode == 0
    assert f"queue q: 3 instances queued; a router runs on it (pid {router.process.pid})" in out
    assert re.search(rf"  {re.escape(down)}: 3 queued \(oldest \d+ s ago\), 0 dead letters", out)
    after = await run_main_async("router", "status", "--queue", "q", cwd=tmp_path)
    assert "no router runs on it" in after.stdout.decode()


async def test_status_of_a_folder_that_is_no_queue_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "q").mkdir()
    result = await run_main_async("router", "status", "--queue", "q", cwd=tmp_path)
    assert result.returncode == 1
    assert "is not a router queue folder" in result.stderr.decode()


# --------------------------------------------------------------------------- kill -9


def _acknowledged(log: str) -> list[str]:
    """The files DCMTK storescu -v says were answered with Success."""
    done, current = [], None
    for line in log.splitlines():
        if line.startswith("I: Sending file: "):
            current = line.removeprefix("I: Sending file: ").strip()
        elif line.startswith("I: Received Store Response (Success)") and current:
            done.append(current)
            current = None
    return done


async def _storescu(port: int, files: list[Path], acked: set[str]) -> None:
    command = storescu_command("127.0.0.1", port, files, called_aet="ROUTER", extra_args=["-v"])
    result = await anyio.run_process(command, check=False, stderr=subprocess.STDOUT)
    acked.update(_acknowledged(result.stdout.decode(errors="replace")))


def _uids_at(folder: Path) -> list[str]:
    return [p.name.removeprefix("CT.") for p in folder.iterdir() if p.name.startswith("CT.")]


@pytest.mark.requires_peer("dcmtk")
async def test_kill_9_in_the_middle_loses_no_acknowledged_instance(
    tmp_path: Path, anyio_backend: str
) -> None:
    """200 instances from 4 concurrent DCMTK storescu to DCMTK storescp and to our SCP, which
    is down until the senders are done; the router is killed (SIGKILL) while it receives and
    forwards, restarted, and the senders send again what was not acknowledged (as a modality
    does).  Every instance reaches both destinations; duplicates only of what was in flight."""
    per_sender = 50
    files = write_ct_files(tmp_path / "src", 4 * per_sender, 2000, seed=3)
    uids = {p.stem for p in files}
    batches = [files[i * per_sender : (i + 1) * per_sender] for i in range(4)]
    sink_port = unused_port()
    with DcmtkStoreSCP(output_dir=tmp_path / "dcmtk", accept_all_transfer_syntaxes=False) as scp:
        options = (
            *("--queue", "q", "--retry-delay", "0.05", "--retry-delay-max", "0.5"),
            *("--retry-max", "100000"),
            *("--forward", f"STORESCP@127.0.0.1:{scp.port}"),
            *("--forward", f"SINK@127.0.0.1:{sink_port}"),
        )
        acked: set[str] = set()
        async with router_process(tmp_path, anyio_backend, *options) as router:
            async with anyio.create_task_group() as tg:
                for batch in batches:
                    tg.start_soon(_storescu, router.port, batch, acked)
                # kill while the senders send (60 of 200 committed: the other destination
                # is down, so each committed instance is still in instances/) and the
                # forwarder to storescp forwards
                committed = tmp_path / "q" / "instances"
                with anyio.fail_after(GUARD):
                    while len(list(committed.glob("*.dcm"))) < 60:
                        await anyio.sleep(0.01)  # another process's folder: polled
                router.process.kill()
        # -SIGKILL; asyncio's child watcher may report 255 when another test's process
        # handling in this worker process collected the status first
        assert await router.process.wait() in (-signal.SIGKILL, 255)
        assert 0 < len(acked) < len(files)
        first_run = set(acked)
        async with router_process(tmp_path, anyio_backend, *options) as router:
            await router.read_until(rb"router: resuming \d+ queued instances")
            # the senders send again what they have no Success for
            async with anyio.create_task_group() as tg:
                for batch in batches:
                    tg.start_soon(
                        _storescu, router.port, [f for f in batch if str(f) not in acked], acked
                    )
            assert acked == {str(f) for f in files}
            sink = Sink()
            async with sink.serving(sink_port):
                await sink.wait_for(lambda got: set(got) >= uids)
                with anyio.fail_after(GUARD):
                    while set(_uids_at(scp.output_dir)) != uids:  # type: ignore[arg-type]
                        await anyio.sleep(0.05)  # an external process's folder: polled
                assert await router.stop() == 0, router.stderr.decode()
        log = scp.log_text()
    # duplicates: at most the instances in flight at the kill (one per sender, one at the
    # destination being forwarded to), and those the router committed without the sender
    # getting Success before the kill
    in_flight = 4 + 1
    assert len(sink.received) - len(uids) <= in_flight, len(sink.received)
    assert log.count("already exists") <= in_flight, log.count("already exists")
    assert len(first_run) >= 40
    assert snapshot(tmp_path / "q").instances == 0
    assert not any((tmp_path / "q" / "dead").rglob("*.dcm"))
