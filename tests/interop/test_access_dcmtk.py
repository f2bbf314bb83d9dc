"""Access control of our storescp seen from DCMTK 3.6.x's storescu: user identity
negotiation and AE title checks, as a hospital's modality would meet them.

DCMTK options used (storescu 3.6.7): ``-aet``/``-aec`` (calling / called AE title), ``-usr U``
(User Identity type 1, user name; with ``-pwd P`` type 2, user name and passcode; with ``-epw``
type 2 with an empty passcode) and ``-rsp`` (ask for a positive response, and fail the
association without one).  On a rejection storescu prints ``Association Rejected`` with the
result, source and reason in words, and exits with a non-zero status.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from harness.peers import dcmtk_env
from test_cli import StoreSCPProcess, app_process

from asyncdicom.storage.synthetic import write_ct_files
from asyncdicom.users import UserStore

pytestmark = [pytest.mark.interop, pytest.mark.anyio, pytest.mark.requires_peer("dcmtk")]

TEST_TIMEOUT = 60.0

NO_REASON = "Reason: No Reason"
CALLED = "Reason: Called AE Title Not Recognized"
CALLING = "Reason: Calling AE Title Not Recognized"


async def storescu(port: int, file: Path, *options: str) -> tuple[int, str]:
    with anyio.fail_after(TEST_TIMEOUT):
        result = await anyio.run_process(
            ["storescu", *options, "127.0.0.1", str(port), str(file)],
            env=dcmtk_env(),
            check=False,
        )
    return result.returncode, (result.stdout + result.stderr).decode("utf-8", "replace")


@pytest.mark.parametrize(
    ("options", "refusal"),
    [
        (("-aet", "MODALITY", "-aec", "SCP", "-usr", "alice", "-pwd", "right", "-rsp"), None),
        (("-aet", "MODALITY", "-aec", "SCP", "-usr", "alice", "-rsp"), None),  # type 1
        (("-aet", "MODALITY", "-aec", "SCP", "-usr", "alice", "-pwd", "wrong"), NO_REASON),
        (("-aet", "MODALITY", "-aec", "SCP", "-usr", "alice", "-epw"), NO_REASON),
        (("-aet", "MODALITY", "-aec", "SCP", "-usr", "mallory", "-pwd", "right"), NO_REASON),
        (("-aet", "MODALITY", "-aec", "SCP"), NO_REASON),  # no identity at all
        (("-aet", "MODALITY", "-aec", "OTHER", "-usr", "alice", "-pwd", "right"), CALLED),
        (("-aet", "INTRUDER", "-aec", "SCP", "-usr", "alice", "-pwd", "right"), CALLING),
    ],
    ids=[
        "password-positive-response",
        "username-only",
        "wrong-password",
        "empty-password",
        "unknown-user",
        "no-identity",
        "wrong-called-aet",
        "calling-aet-not-allowed",
    ],
)
async def test_dcmtk_storescu_against_access_control(
    options: tuple[str, ...], refusal: str | None, tmp_path: Path, anyio_backend: str
) -> None:
    users = tmp_path / "users.txt"
    store = UserStore()
    store.add("alice", "right")
    store.save(users)
    (source,) = write_ct_files(tmp_path / "src", 1, 20_000, seed=21)
    (tmp_path / "cwd").mkdir()
    args = [
        "storescp", "--host", "127.0.0.1", "--port", "0", "--aet", "SCP",
        "--output-dir", str(tmp_path / "out"), "--users", str(users),
        "--require-called-aet", "--allow-calling-aet", "MODALITY", "--backend", anyio_backend,
    ]  # fmt: skip
    async with app_process(*args, cwd=tmp_path / "cwd") as process:
        scp = StoreSCPProcess(process)
        port = await scp.wait_listening()
        code, output = await storescu(port, source, *options)
        assert await scp.stop() == 0, scp.stderr
    stored = list((tmp_path / "out").rglob("*.dcm")) if (tmp_path / "out").exists() else []
    if refusal is None:
        assert code == 0, output
        assert [p.name for p in stored] == [source.name]
    else:
        assert code != 0, output
        assert "Association Rejected" in output, output
        assert "Rejected Permanent, Source: Service User" in output, output
        assert refusal in output, output
        assert stored == []
        assert b"association_rejected" in scp.stderr
