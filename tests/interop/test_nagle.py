"""A sender that leaves Nagle's algorithm on must not stall against our SCPs.

DCMTK's ``storescu`` without ``TCP_NODELAY`` in its environment keeps Nagle's algorithm on and
writes each PDU's header and body in two writes: the body waits until the header is
acknowledged.  A receiver that delays its acknowledgements (Linux does once a connection has
answered) then costs one delayed-ACK timeout per instance.  The kernel's shortest delayed-ACK
timeout is 40 ms (``TCP_DELACK_MIN``), so with the stall *every* instance takes at least that
long; without it an instance of a few KB takes about a millisecond.  The check is therefore
on the median time between consecutive C-STORE responses (a lower bound the stall cannot get
under, however fast the machine; a loaded machine delays some instances, not most), not on the
wall time of the whole transfer.

The immediate acknowledgement needs Linux's TCP_QUICKACK (requirement ``tcp-quickack``).
"""

from __future__ import annotations

import itertools
import os
import statistics
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from harness.peers import storescu_command

from asyncdicom import AE, HookEvent, ServiceRequest
from asyncdicom.archive import Archive, qrscp_config
from asyncdicom.protocol import messages
from asyncdicom.storage.synthetic import write_ct_files

pytestmark = [
    pytest.mark.interop,
    pytest.mark.anyio,
    pytest.mark.requires_peer("dcmtk", "tcp-quickack"),
]

FILES = 20
#: below the kernel's minimum delayed-ACK timeout (40 ms): a stalled instance cannot beat it
BOUND = 0.030


def _nagle_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TCP_NODELAY", None)  # DCMTK's default: Nagle's algorithm on
    return env


def _record_responses(ae: AE, times: list[float]) -> None:
    def on_sent(event: HookEvent, assoc: Any, *, message: Any, **data: Any) -> None:
        if isinstance(message, messages.CStoreRSP):
            times.append(time.monotonic())

    ae.hooks.add(HookEvent.DIMSE_SENT, on_sent)


async def _send(port: int, files: list[Path], called_aet: str) -> None:
    command = storescu_command(
        "127.0.0.1", port, files, called_aet=called_aet, required_only=True, timeout=30
    )
    with anyio.fail_after(60):
        result = await anyio.run_process(command, env=_nagle_env(), check=False)
    assert result.returncode == 0, result.stderr.decode()


def _check(times: list[float]) -> None:
    assert len(times) == FILES
    gaps = [b - a for a, b in itertools.pairwise(times)]
    median = statistics.median(gaps)
    assert median < BOUND, (
        f"median {median * 1000:.1f} ms between C-STORE responses (every gap, ms: "
        f"{[round(g * 1000, 1) for g in gaps]}): the sender waits for delayed ACKs"
    )


@pytest.fixture
def small_files(tmp_path: Path) -> list[Path]:
    return write_ct_files(tmp_path / "src", FILES, 3000, seed=5)


async def test_storescu_with_nagle_into_our_scp(tmp_path: Path, small_files: list[Path]) -> None:
    ae = AE("OURSCP", accept_any_storage=True)
    times: list[float] = []

    @ae.on_store
    async def on_store(request: ServiceRequest) -> int:
        await request.save_to(tmp_path / "out")
        return 0x0000

    _record_responses(ae, times)
    async with ae.server("127.0.0.1", 0) as server:
        await _send(server.port, small_files, "OURSCP")
    assert len(list((tmp_path / "out").iterdir())) == FILES
    _check(times)


async def test_storescu_with_nagle_into_archive(tmp_path: Path, small_files: list[Path]) -> None:
    ae = AE(config=qrscp_config("QRSCP"))
    times: list[float] = []
    _record_responses(ae, times)
    async with Archive(tmp_path / "archive") as archive:
        archive.install(ae)
        async with ae.server("127.0.0.1", 0) as server:
            await _send(server.port, small_files, "QRSCP")
        assert await anyio.to_thread.run_sync(archive.index.count) == FILES
    _check(times)
