"""The accept loop when the server runs out of file descriptors, and the apps' open-file limit.

A flood of idle connections can use up a server's descriptors; ``accept()`` then fails with
EMFILE while more connections wait in the kernel's backlog.  The server must not die (anyio's
``serve`` used to end there on trio), must not spam its log (asyncio's ``create_server`` logged
a traceback per attempt, and with stderr a pipe nobody read, the server blocked writing it),
and must serve again as soon as descriptors are free.  ``storescp`` runs in a subprocess whose
limit is lowered (soft and hard, so that the app cannot raise it) to 64.
"""

from __future__ import annotations

import errno
import logging
import re
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from subprocess import PIPE
from typing import Any

import anyio
import pytest

from asyncdicom import AE
from asyncdicom._accept import AcceptErrors
from tests.test_cli import ENV, GUARD

pytestmark = pytest.mark.anyio


def limited_cli(soft: int, hard: int, *args: str) -> list[str]:
    """``python -m asyncdicom ARGS`` with RLIMIT_NOFILE set to (soft, hard) first."""
    code = (
        "import resource, runpy, sys; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard})); "
        "sys.argv = ['asyncdicom', *sys.argv[1:]]; "
        "runpy.run_module('asyncdicom', run_name='__main__', alter_sys=True)"
    )
    return [sys.executable, "-c", code, *args]


class Stderr:
    """The app's stderr, read as it comes."""

    def __init__(self, process: Any) -> None:
        self.process = process
        self.text = ""

    async def wait_for(self, pattern: str) -> re.Match[str]:
        with anyio.fail_after(GUARD):
            while not (match := re.search(pattern, self.text)):
                try:
                    self.text += (await self.process.stderr.receive()).decode()
                except anyio.EndOfStream:
                    pytest.fail(f"the app exited; stderr: {self.text}")
            return match

    async def rest(self) -> str:
        with anyio.fail_after(GUARD):
            async for chunk in self.process.stderr:
                self.text += chunk.decode()
        return self.text


@asynccontextmanager
async def storescp(
    tmp_path: Path, backend: str, soft: int, hard: int
) -> AsyncIterator[tuple[Any, Stderr, int]]:
    command = limited_cli(
        soft, hard, "storescp", "--host", "127.0.0.1", "--port", "0", "-v",
        "--output-dir", str(tmp_path / "out"), "--backend", backend,
    )  # fmt: skip
    async with await anyio.open_process(
        command, cwd=tmp_path, env=ENV, stdout=PIPE, stderr=PIPE
    ) as process:
        try:
            stderr = Stderr(process)
            port = int((await stderr.wait_for(r"listening on 127\.0\.0\.1:(\d+)")).group(1))
            yield process, stderr, port
        finally:
            if process.returncode is None:
                process.terminate()


async def echo(port: int) -> int:
    with anyio.fail_after(GUARD):
        async with AE("SCU").associate("127.0.0.1", port, called_aet="STORESCP") as assoc:
            return (await assoc.echo()).status


async def test_server_survives_running_out_of_file_descriptors(
    tmp_path: Path, anyio_backend: str
) -> None:
    async with storescp(tmp_path, anyio_backend, 64, 64) as (process, stderr, port):
        async with AsyncExitStack() as idle:
            # more silent connections than the server has descriptors: the kernel completes
            # them all (backlog), the server accepts until EMFILE
            for _ in range(100):
                stream = await anyio.connect_tcp("127.0.0.1", port)
                idle.push_async_callback(stream.aclose)
            await stderr.wait_for(r"accept_out_of_resources .*errno=EMFILE")
            assert process.returncode is None, stderr.text
        # the idle connections are closed: their descriptors come back, the backlog is taken
        await stderr.wait_for(r"accept_resumed .*failed_attempts=\d+")
        assert await echo(port) == 0x0000
        process.terminate()
        with anyio.fail_after(GUARD):
            assert await process.wait() == 0
        text = await stderr.rest()
    assert "Traceback" not in text, text
    # one warning when it started, one when it ended: no line per failed attempt
    assert text.count("accept_out_of_resources") == 1, text
    assert text.count("accept_resumed") == 1, text
    assert "out of system resource" not in text, text


async def test_apps_raise_their_soft_open_file_limit(tmp_path: Path, anyio_backend: str) -> None:
    limits = Path("/proc/self/limits")
    if not limits.exists():
        pytest.fail("this test reads /proc/PID/limits (Linux); the machine has no /proc")
    async with storescp(tmp_path, anyio_backend, 128, 1024) as (process, _stderr, port):
        text = Path(f"/proc/{process.pid}/limits").read_text()
        (line,) = [row for row in text.splitlines() if row.startswith("Max open files")]
        assert line.split()[3:5] == ["1024", "1024"], line
        assert await echo(port) == 0x0000


# --------------------------------------------------------------------------- the policy


async def test_accept_errors_policy(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="asyncdicom")
    errors = AcceptErrors("127.0.0.1:104")
    # one connection's trouble: go on at once, nothing logged
    assert await errors.failed(ConnectionAbortedError(errno.ECONNABORTED, "aborted"))
    assert errors.failures == 0
    # the listening socket itself is broken: the error ends the server
    assert not await errors.failed(OSError(errno.EBADF, "bad file descriptor"))
    assert not await errors.failed(RuntimeError("no OS error at all"))
    # out of descriptors (also behind anyio's BrokenResourceError): wait, go on, warn once
    emfile = OSError(errno.EMFILE, "Too many open files")
    wrapped = anyio.BrokenResourceError()
    wrapped.__cause__ = OSError(errno.ENFILE, "Too many open files in system")
    for exc in (emfile, emfile, wrapped):
        assert await errors.failed(exc)
    assert errors.failures == 3
    errors.accepted()
    assert errors.failures == 0
    errors.accepted()  # nothing to end
    events = [dict(r.msg)["event"] for r in caplog.records if isinstance(r.msg, dict)]
    assert events == ["accept_out_of_resources", "accept_resumed"]
    resumed = [dict(r.msg) for r in caplog.records if isinstance(r.msg, dict)][1]
    assert resumed["failed_attempts"] == 3 and resumed["listener"] == "127.0.0.1:104"
