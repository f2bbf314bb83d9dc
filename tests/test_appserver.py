"""The tests' app server (tests/harness/appserver.py) runs an app as ``python -m asyncdicom``
would: same output, exit status, signals; and an app whose shim is killed dies with it.

Each case runs the command both ways (``CLI`` through the server, ``REAL_CLI`` in a fresh
interpreter) and compares.  (The fallback to a fresh interpreter when the environment changes
an interpreter setting is what tests/test_cli_qrscp.py's hidden-driver test relies on.)
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from subprocess import PIPE

import anyio
import pytest

from tests.test_cli import CLI, ENV, GUARD, REAL_CLI, StoreSCPProcess, free_port

pytestmark = pytest.mark.anyio


def test_the_server_is_in_use_unless_fresh_apps_are_asked_for() -> None:
    if os.environ.get("ASYNCDICOM_TEST_FRESH_APPS"):
        assert CLI == REAL_CLI  # every app in a fresh interpreter, as asked
    else:
        assert CLI != REAL_CLI and os.path.exists(os.environ["ASYNCDICOM_TEST_APPSERVER"])


@pytest.mark.parametrize(
    "args",
    [
        ["--version"],
        ["echoscu", "127.0.0.1", "{port}"],  # refused: exit 1 and one line on stderr
        ["echoscu", "127.0.0.1", "not-a-port"],  # usage error: exit 2
        ["findscu", "127.0.0.1", "104", "-k", "="],
        ["storescu", "127.0.0.1", "{port}", "no-such-file"],  # relative to the working folder
    ],
)
async def test_same_output_and_exit_status_as_a_fresh_interpreter(
    tmp_path: Path, args: list[str], anyio_backend: str
) -> None:
    port = str(free_port())
    argv = [a.replace("{port}", port) for a in args]
    results = []
    for command in (CLI, REAL_CLI):
        with anyio.fail_after(GUARD):
            results.append(
                await anyio.run_process([*command, *argv], cwd=tmp_path, env=ENV, check=False)
            )
    served, fresh = results
    assert (served.returncode, served.stdout, served.stderr) == (
        fresh.returncode,
        fresh.stdout,
        fresh.stderr,
    )


async def _storescp_stopped_by(tmp_path: Path, command: list[str], sig: int) -> tuple[int, str]:
    args = ["storescp", "--port", "0", "--host", "127.0.0.1", "--output-dir", "out"]
    async with await anyio.open_process(
        [*command, *args], cwd=tmp_path, env=ENV, stdout=PIPE, stderr=PIPE
    ) as process:
        scp = StoreSCPProcess(process)
        await scp.wait_listening()
        process.send_signal(sig)
        with anyio.fail_after(GUARD):
            async for chunk in process.stderr:
                scp.stderr += chunk
            code = await process.wait()
    text = re.sub(rb"127\.0\.0\.1:\d+", b"ADDRESS", scp.stderr).decode()
    return code, text


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_signals_reach_the_app(tmp_path: Path, sig: int, anyio_backend: str) -> None:
    served = await _storescp_stopped_by(tmp_path, CLI, sig)
    fresh = await _storescp_stopped_by(tmp_path, REAL_CLI, sig)
    assert served == fresh
    assert served[0] in (0, 130), served  # the CLI's contract: a clean stop


async def test_an_app_dies_with_its_killed_shim(tmp_path: Path, anyio_backend: str) -> None:
    args = ["storescp", "--port", "0", "--host", "127.0.0.1", "--output-dir", "out"]
    async with await anyio.open_process(
        [*CLI, *args], cwd=tmp_path, env=ENV, stdout=PIPE, stderr=PIPE
    ) as process:
        scp = StoreSCPProcess(process)
        port = await scp.wait_listening()
        process.kill()
        with anyio.fail_after(GUARD):
            # the app holds the other end of this pipe: end of stream = the app is gone
            async for _chunk in process.stderr:
                pass
            assert await process.wait() == -signal.SIGKILL
    with pytest.raises(OSError):
        await anyio.connect_tcp("127.0.0.1", port)
