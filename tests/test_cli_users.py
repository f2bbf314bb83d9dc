"""``asyncdicom users`` and the access-control options of the server apps, as subprocesses.

``storescp``/``qrscp`` ``--users FILE --require-called-aet --allow-calling-aet AET`` against
``echoscu --username U --password PW``: the right credentials pass, anything else is an
A-ASSOCIATE-RJ reported as one line with exit status 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from asyncdicom.users import UserStore
from tests.cli_main import run_main, run_main_async
from tests.test_cli import CLI, ENV, GUARD, StoreSCPProcess, app_process, err

pytestmark = pytest.mark.anyio


async def run_with_stdin(*args: str, stdin: bytes, cwd: Path) -> tuple[int, str]:
    with anyio.fail_after(GUARD):
        result = await anyio.run_process([*CLI, *args], cwd=cwd, env=ENV, input=stdin, check=False)
    return result.returncode, result.stderr.decode()


async def test_users_add_change_remove(tmp_path: Path) -> None:
    path = tmp_path / "users.txt"
    result = await run_main_async(
        "users", "add", str(path), "alice", "--password", "pw-a", cwd=tmp_path
    )
    assert result.returncode == 0, err(result)
    assert "added 'alice'" in err(result)
    code, stderr = await run_with_stdin(
        "users", "add", str(path), "bob", "--password-stdin", stdin=b"pw-b\n", cwd=tmp_path
    )
    assert code == 0, stderr
    text = path.read_text()
    assert "pw-a" not in text and "pw-b" not in text
    assert [line.split(":")[0] for line in text.splitlines()] == ["alice", "bob"]
    assert all(":scrypt$" in line for line in text.splitlines())
    assert path.stat().st_mode & 0o777 == 0o600
    store = UserStore.load(path)
    assert store.verify("alice", "pw-a") and store.verify("bob", "pw-b")

    # a new password for an existing user
    result = await run_main_async(
        "users", "add", str(path), "alice", "--password", "new", cwd=tmp_path
    )
    assert result.returncode == 0 and "password changed for 'alice'" in err(result)
    store = UserStore.load(path)
    assert store.verify("alice", "new") and not store.verify("alice", "pw-a")

    result = await run_main_async("users", "remove", str(path), "alice", cwd=tmp_path)
    assert result.returncode == 0, err(result)
    assert "alice" not in UserStore.load(path)
    result = await run_main_async("users", "remove", str(path), "alice", cwd=tmp_path)
    assert result.returncode == 1
    assert err(result).strip().splitlines() == [f"asyncdicom: error: {path}: no user 'alice'"]


async def test_users_usage_errors(tmp_path: Path) -> None:
    path = tmp_path / "users.txt"
    # a password is required, by exactly one of the two options
    result = await run_main_async("users", "add", str(path), "alice", cwd=tmp_path)
    assert result.returncode == 2
    result = await run_main_async("users", "add", str(path), "a:b", "--password", "x", cwd=tmp_path)
    assert result.returncode == 2 and "argument USER" in err(result)
    code, stderr = await run_with_stdin(
        "users", "add", str(path), "alice", "--password-stdin", stdin=b"\n", cwd=tmp_path
    )
    assert code == 2 and "the password is empty" in stderr
    assert not path.exists()
    # a file that is not a users file is not overwritten
    path.write_text("this is not a users file\n")
    result = await run_main_async(
        "users", "add", str(path), "alice", "--password", "x", cwd=tmp_path
    )
    assert result.returncode == 1 and "line 1" in err(result)
    assert path.read_text() == "this is not a users file\n"
    assert "Traceback" not in err(result)


async def test_users_list_and_check(tmp_path: Path) -> None:
    path = tmp_path / "users.txt"
    store = UserStore()
    store.add("alice", "pw-a")
    store.add("bob", "pw-b")
    store.save(path)
    result = await run_main_async("users", "list", str(path), cwd=tmp_path)
    assert result.returncode == 0, err(result)
    assert result.stdout.decode().splitlines() == ["alice", "bob"]

    result = await run_main_async(
        "users", "check", str(path), "alice", "--password", "pw-a", cwd=tmp_path
    )
    assert result.returncode == 0, err(result)
    assert "matches" in err(result)
    code, stderr = await run_with_stdin(
        "users", "check", str(path), "bob", "--password-stdin", stdin=b"pw-b\n", cwd=tmp_path
    )
    assert code == 0, stderr
    # a wrong password, an unknown user: status 1, one line, the password never shown
    result = await run_main_async(
        "users", "check", str(path), "alice", "--password", "pw-b", cwd=tmp_path
    )
    assert result.returncode == 1
    assert err(result).strip().splitlines() == [
        f"asyncdicom: error: {path}: that is not the password of 'alice'"
    ]
    result = await run_main_async(
        "users", "check", str(path), "carol", "--password", "x", cwd=tmp_path
    )
    assert result.returncode == 1 and "no user 'carol'" in err(result)
    # the file is only read
    assert UserStore.load(path).users.keys() == {"alice", "bob"}

    # usage errors: 2
    for args in (
        ("list", str(path), "alice"),
        ("list", str(path), "--password", "x"),
        ("check", str(path), "alice"),
        ("check", str(path)),
        ("remove", str(path)),
        ("add", str(path), "--password", "x"),
    ):
        result = await run_main_async("users", *args, cwd=tmp_path)
        assert result.returncode == 2, (args, err(result))
        assert "Traceback" not in err(result)
    # a file that is missing or is not a users file: 1
    result = await run_main_async("users", "list", str(tmp_path / "missing.txt"), cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in err(result)
    (tmp_path / "bad.txt").write_text("not a users file\n")
    result = await run_main_async("users", "list", str(tmp_path / "bad.txt"), cwd=tmp_path)
    assert result.returncode == 1 and "line 1" in err(result)


@pytest.fixture
def users(tmp_path: Path) -> Path:
    store = UserStore()
    store.add("alice", "right")
    path = tmp_path / "users.txt"
    store.save(path)
    return path


async def _echo(port: int, *options: str, backend: str, cwd: Path) -> tuple[int, str]:
    """``asyncdicom echoscu`` against the server subprocess, run in this process (a client's
    exit status and error line are the same; the server is the process under test)."""
    result = await run_main_async(
        "echoscu", "127.0.0.1", str(port), "--backend", backend, *options, cwd=cwd
    )
    assert "Traceback" not in err(result)
    return result.returncode, err(result)


@pytest.mark.parametrize("app", ["storescp", "qrscp"])
async def test_server_access_control_with_echoscu(
    app: str, users: Path, tmp_path: Path, anyio_backend: str
) -> None:
    (tmp_path / "cwd").mkdir()
    where = ["--ignore"] if app == "storescp" else ["--storage", str(tmp_path / "archive")]
    args = [
        app, "--port", "0", "--host", "127.0.0.1", "--aet", "SCP", *where,
        "--backend", anyio_backend, "--users", str(users), "--require-called-aet",
        "--allow-calling-aet", "MODALITY", "--allow-calling-aet", "VIEWER",
    ]  # fmt: skip
    good = ["--aet", "MODALITY", "--called-aet", "SCP", "--username", "alice"]
    async with app_process(*args, cwd=tmp_path / "cwd") as process:
        scp = StoreSCPProcess(process)
        port = await scp.wait_listening()
        run = tmp_path / "cwd"
        right = [*good, "--password", "right"]
        code, stderr = await _echo(port, *right, backend=anyio_backend, cwd=run)
        assert code == 0, stderr
        # a positive response asked for and given
        code, stderr = await _echo(
            port, *good, "--password", "right", "--identity-response", backend=anyio_backend,
            cwd=run,
        )  # fmt: skip
        assert code == 0, stderr
        refusals = [
            [*good, "--password", "wrong"],  # wrong password
            ["--aet", "MODALITY", "--called-aet", "SCP"],  # no user identity
            ["--aet", "MODALITY", "--called-aet", "SCP", "--username", "eve"],  # unknown user
            ["--aet", "MODALITY", "--called-aet", "OTHER", "--username", "alice",
             "--password", "right"],  # wrong called AE title
            ["--aet", "INTRUDER", "--called-aet", "SCP", "--username", "alice",
             "--password", "right"],  # calling AE title not allowed
        ]  # fmt: skip
        messages = []
        for options in refusals:
            code, stderr = await _echo(port, *options, backend=anyio_backend, cwd=run)
            assert code == 1, (options, stderr)
            assert "rejected" in stderr, stderr
            messages.append(stderr.strip().splitlines()[-1])
        assert "called AE title not recognized" in messages[3]
        assert "calling AE title not recognized" in messages[4]
        assert await scp.stop() == 0


def test_server_users_file_errors_are_usage_errors(tmp_path: Path) -> None:
    bad = tmp_path / "users.txt"
    bad.write_text("alice:plain-text\n")
    for users in (bad, tmp_path / "missing.txt"):
        result = run_main(
            "storescp", "--port", "0", "--ignore", "--users", str(users), cwd=tmp_path
        )
        assert result.returncode == 2, err(result)
        last = err(result).strip().splitlines()[-1]
        assert last.startswith("asyncdicom storescp: error: argument --users:"), last


@pytest.mark.parametrize("app", ["storescp", "qrscp"])
async def test_server_lockout_and_audit_log(
    app: str, users: Path, tmp_path: Path, anyio_backend: str
) -> None:
    """``--lockout-after 2``: after two wrong passcodes the right one is refused too (the same
    rejection, no hint of a lock-out); ``--audit-log`` has one line per decision, with the
    rule, and never a passcode."""
    (tmp_path / "cwd").mkdir()
    audit = tmp_path / "audit.jsonl"
    where = ["--ignore"] if app == "storescp" else ["--storage", str(tmp_path / "archive")]
    args = [
        app, "--port", "0", "--host", "127.0.0.1", "--aet", "SCP", *where,
        "--backend", anyio_backend, "--users", str(users), "--lockout-after", "2",
        "--lockout-time", "600", "--audit-log", str(audit),
    ]  # fmt: skip
    base = ["--aet", "MODALITY", "--called-aet", "SCP", "--username", "alice"]
    run = tmp_path / "cwd"
    async with app_process(*args, cwd=run) as process:
        scp = StoreSCPProcess(process)
        port = await scp.wait_listening()
        code, stderr = await _echo(
            port, *base, "--password", "right", backend=anyio_backend, cwd=run
        )
        assert code == 0, stderr
        answers = []
        for password in ("wrong-1", "wrong-2", "right"):
            code, stderr = await _echo(
                port, *base, "--password", password, backend=anyio_backend, cwd=run
            )
            assert code == 1, stderr
            answers.append(stderr.strip().splitlines()[-1])
        assert await scp.stop() == 0
    # the lock-out is not told to the peer: the same rejection as a wrong passcode
    assert answers[2] == answers[0], answers
    text = audit.read_text()
    assert "right" not in text and "wrong" not in text
    records = [json.loads(line) for line in text.splitlines()]
    events = [(r["event"], r.get("rule")) for r in records]
    assert events == [
        ("accepted", None),
        ("released", None),
        ("rejected", "user_identity"),
        ("rejected", "user_identity"),
        ("rejected", "locked_out"),
    ], events
    assert {r["user"] for r in records} == {"alice"}
    assert {r["calling_aet"] for r in records} == {"MODALITY"}
    assert all(r["peer_host"] == "127.0.0.1" for r in records)


def test_server_audit_log_usage_errors(tmp_path: Path) -> None:
    for options in (
        ["--audit-log", str(tmp_path)],  # a folder
        ["--audit-log", str(tmp_path / "missing" / "audit.jsonl")],
        ["--lockout-after", "-1"],
    ):
        result = run_main("storescp", "--port", "0", "--ignore", *options, cwd=tmp_path)
        assert result.returncode == 2, err(result)
        assert "Traceback" not in err(result)
        last = err(result).strip().splitlines()[-1]
        assert last.startswith(f"asyncdicom storescp: error: argument {options[0]}:"), last
