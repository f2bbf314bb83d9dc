"""Security options of the apps, as subprocesses on both backends.

* The SCUs' passcode from ``--password-file`` or the environment variable
  ``ASYNCDICOM_PASSWORD``, checked by a ``storescp --users FILE`` made by ``asyncdicom users add``.
* ``--tls-handshake-timeout`` on the servers and on the SCUs.
* The server apps' ``--write-timeout`` and ``--min-receive-rate`` reach ``Timeouts``.
* ``qrscp --tls-out-to AET``: TLS to some C-MOVE destinations, plain TCP to the others.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import anyio
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

import tests.test_tls as tls_tests
from asyncdicom import AE, Timeouts, presets
from asyncdicom.cli.argtypes import password_file
from asyncdicom.cli.bench import spec_from_args
from asyncdicom.cli.main import build_parser
from asyncdicom.cli.options import PASSWORD_ENV, check_bind, server_timeouts
from asyncdicom.cli.qrscp import qrscp_ae
from asyncdicom.cli.storescp import storescp_ae
from asyncdicom.protocol import uids
from asyncdicom.storage.synthetic import write_ct_files
from asyncdicom.transport import client_context, server_context
from tests.cli_main import run_main
from tests.test_cli import CLI, ENV, GUARD, StoreSCPProcess, app_process, err, run_cli
from tests.test_cli_users import run_with_stdin
from tests.test_tls import PKI

pytestmark = pytest.mark.anyio

#: the test CA and certificates of tests/test_tls.py (a module-scoped fixture)
pki = tls_tests.pki


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no sub-commands")


def parse(*argv: str) -> argparse.Namespace:
    """Parse ``asyncdicom ARGV`` and run the start-up checks (TLS contexts, --bind, ...)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_bind(_subcommands()[args.command], args)
    return args


async def run_cli_env(*args: str, cwd: Path, **env: str) -> CompletedProcess[bytes]:
    """``asyncdicom ARGS`` with ``env`` added to the environment (and no
    ASYNCDICOM_PASSWORD from the test run's own environment)."""
    environment = {k: v for k, v in ENV.items() if k != PASSWORD_ENV} | env
    with anyio.fail_after(GUARD):
        return await anyio.run_process([*CLI, *args], cwd=cwd, env=environment, check=False)


def last_line(result: CompletedProcess[bytes]) -> str:
    lines = err(result).strip().splitlines()
    return lines[-1] if lines else ""


# --------------------------------------------------------------------------- passwords


async def make_users_file(folder: Path) -> Path:
    """A users file with alice / right, written by ``asyncdicom users add``."""
    path = folder / "users.txt"
    code, stderr = await run_with_stdin(
        "users", "add", str(path), "alice", "--password-stdin", stdin=b"right\n", cwd=folder
    )
    assert code == 0, stderr
    return path


async def test_scu_passcode_from_a_file_or_the_environment(
    tmp_path: Path, anyio_backend: str
) -> None:
    """storescp --users --require-passcode refuses a user name without passcode, so each
    success below means the passcode from the file or the environment reached it."""
    users = await make_users_file(tmp_path)
    (tmp_path / "right.txt").write_bytes(b"right\r\nthe second line is not read\n")
    (tmp_path / "wrong.txt").write_text("wrong\n")
    (tmp_path / "cwd").mkdir()
    server = [
        "storescp", "--port", "0", "--host", "127.0.0.1", "--aet", "SCP", "--ignore",
        "--users", str(users), "--require-passcode", "--backend", anyio_backend,
    ]  # fmt: skip
    async with app_process(*server, cwd=tmp_path / "cwd") as process:
        scp = StoreSCPProcess(process)
        port = str(await scp.wait_listening())
        base = ["127.0.0.1", port, "--called-aet", "SCP", "--username", "alice"]
        base += ["--backend", anyio_backend]

        async def echo(*options: str, **env: str) -> CompletedProcess[bytes]:
            result = await run_cli_env("echoscu", *base, *options, cwd=tmp_path, **env)
            assert "Traceback" not in err(result)
            return result

        ok = await echo("--password-file", "right.txt")
        assert ok.returncode == 0, err(ok)
        ok = await echo(**{PASSWORD_ENV: "right"})
        assert ok.returncode == 0, err(ok)
        # --password-file comes before the environment
        ok = await echo("--password-file", "right.txt", **{PASSWORD_ENV: "wrong"})
        assert ok.returncode == 0, err(ok)
        # storescu too (every SCU shares the options)
        source = write_ct_files(tmp_path / "src", 1, 2_000, seed=4)[0]
        sent = await run_cli_env(
            "storescu", *base, str(source), cwd=tmp_path, **{PASSWORD_ENV: "right"}
        )
        assert sent.returncode == 0, err(sent)

        # wrong passcodes: rejected as with --password (exit status 1, one line)
        for options, env in (
            (["--password-file", "wrong.txt"], {}),
            ([], {PASSWORD_ENV: "wrong"}),
            ([], {PASSWORD_ENV: ""}),  # empty: no passcode, a user name alone is refused
        ):
            refused = await echo(*options, **env)
            assert refused.returncode == 1, (options, env, err(refused))
            [line] = err(refused).strip().splitlines()
            assert line.startswith("asyncdicom: error: ") and "rejected" in line, line
        assert await scp.stop() == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--username", "alice", "--password-file", "missing.txt"], "'missing.txt' does not exist"),
        (["--username", "alice", "--password-file", "folder"], "'folder' is a folder"),
        (["--username", "alice", "--password-file", "empty.txt"], "'empty.txt' is empty"),
        (["--username", "alice", "--password-file", "latin1.txt"], "is not UTF-8"),
        (
            ["--username", "alice", "--password", "pw", "--password-file", "pw.txt"],
            "argument --password-file: not allowed with argument --password",
        ),
        (["--password-file", "pw.txt"], "argument --password-file: needs --username"),
        (["--password", "pw"], "argument --password: needs --username"),
    ],
    ids=["missing", "folder", "empty", "not-utf8", "both", "file-no-user", "pw-no-user"],
)
def test_password_file_usage_errors(
    options: list[str], message: str, tmp_path: Path, anyio_backend: str
) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "empty.txt").write_text("\nsecond\n")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9\n")
    (tmp_path / "pw.txt").write_text("pw\n")
    result = run_main(
        "echoscu", "127.0.0.1", "104", *options, "--backend", anyio_backend, cwd=tmp_path
    )
    assert result.returncode == 2, err(result)
    line = last_line(result)
    assert line.startswith("asyncdicom echoscu: error: argument --password"), line
    assert message in line, line
    assert "Traceback" not in err(result)


def test_password_file_reads_the_first_line_only(tmp_path: Path) -> None:
    path = tmp_path / "pw.txt"
    path.write_bytes(b" s3cret \r\nnext\n")
    assert password_file(str(path)) == " s3cret "  # only the line ending goes
    path.write_bytes(b"no newline")
    assert password_file(str(path)) == "no newline"


def test_every_scu_with_username_takes_a_password_file() -> None:
    """Each app with --username has --password-file, exclusive with --password."""
    with_username = []
    for name, parser in _subcommands().items():
        options = {o for a in parser._actions for o in a.option_strings}
        if "--username" not in options:
            continue
        with_username.append(name)
        assert "--password-file" in options, name
        groups = [
            {o for a in g._group_actions for o in a.option_strings}
            for g in parser._mutually_exclusive_groups
        ]
        assert {"--password", "--password-file"} in groups, name
    assert {"echoscu", "storescu", "findscu", "getscu", "movescu", "stgcmtscu"} <= set(
        with_username
    )


# --------------------------------------------------------------------------- TLS handshake


@pytest.mark.parametrize("app", ["storescp", "qrscp"])
async def test_server_tls_handshake_timeout_closes_a_silent_client(
    app: str, pki: PKI, tmp_path: Path, anyio_backend: str
) -> None:
    """A client that connects and never starts the handshake is closed after
    --tls-handshake-timeout (0.5 s, the default is 10 s); a TLS echo still works."""
    where = ["--ignore"] if app == "storescp" else ["--storage", str(tmp_path / "archive")]
    args = [
        app, "--port", "0", "--host", "127.0.0.1", *where,
        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
        "--tls-handshake-timeout", "0.5", "--backend", anyio_backend,
    ]  # fmt: skip
    async with app_process(*args, cwd=tmp_path) as process:
        scp = StoreSCPProcess(process)
        port = await scp.wait_listening()
        with anyio.fail_after(GUARD):
            stream = await anyio.connect_tcp("127.0.0.1", port)
            try:
                started = anyio.current_time()
                with anyio.fail_after(5):  # well under the default 10 s
                    with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                        await stream.receive()
                assert anyio.current_time() - started >= 0.4
            finally:
                await stream.aclose()
        echo = await run_cli(
            "echoscu", "127.0.0.1", str(port), "--tls-ca", str(pki.ca),
            "--tls-handshake-timeout", "5", "--backend", anyio_backend, cwd=tmp_path,
        )  # fmt: skip
        assert echo.returncode == 0, err(echo)
        assert await scp.stop() == 0


async def test_scu_tls_handshake_timeout(tmp_path: Path, anyio_backend: str) -> None:
    """A peer that accepts TCP and never answers the ClientHello: echoscu gives up after
    --tls-handshake-timeout, one error line, exit status 1."""

    async def silent(stream: Any) -> None:
        async with stream:
            await anyio.sleep_forever()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, silent)
        with anyio.fail_after(8):  # under the default 10 s plus the app's start
            result = await run_cli(
                "echoscu", "127.0.0.1", str(port), "--tls", "--tls-handshake-timeout", "0.5",
                "--backend", anyio_backend, cwd=tmp_path,
            )  # fmt: skip
        tg.cancel_scope.cancel()
    assert result.returncode == 1, err(result)
    assert err(result).strip().splitlines() == [
        f"asyncdicom: error: TLS handshake with 127.0.0.1:{port} timed out after 0.5 s"
    ]


def test_tls_handshake_timeout_reaches_the_timeouts() -> None:
    assert parse("echoscu", "127.0.0.1", "104").tls_handshake_timeout == 10.0
    args = parse("bench", "127.0.0.1", "104", "--called-aet", "X", "--tls-handshake-timeout", "3")
    assert spec_from_args(args).timeouts.tls_handshake == 3.0
    args = parse("storescp", "--port", "0", "--ignore", "--tls-handshake-timeout", "2.5")
    assert server_timeouts(args).tls_handshake == 2.5


# --------------------------------------------------------------------------- slow peers


def test_server_timeout_options_reach_the_timeouts(tmp_path: Path) -> None:
    storage = str(tmp_path / "archive")
    for app, where in (("storescp", ["--ignore"]), ("qrscp", ["--storage", storage])):
        defaults = server_timeouts(parse(app, "--port", "0", *where))
        assert (defaults.write, defaults.min_receive_rate) == (60.0, 1024.0)
        assert defaults.tls_handshake == 10.0
        args = parse(
            app, "--port", "0", *where, "--write-timeout", "5", "--min-receive-rate", "2048",
            "--dimse-timeout", "20", "--network-timeout", "none",
        )  # fmt: skip
        assert server_timeouts(args) == Timeouts(
            acse=30.0,
            dimse=20.0,
            network=None,
            artim=30.0,
            write=5.0,
            min_receive_rate=2048.0,
            tls_handshake=10.0,
        )
        ae = storescp_ae(args) if app == "storescp" else qrscp_ae(args)
        assert ae.config.timeouts == server_timeouts(args)
        for off in ("0", "none"):
            args = parse(app, "--port", "0", *where, "--write-timeout", off)
            assert server_timeouts(args).write is None
            args = parse(app, "--port", "0", *where, "--min-receive-rate", off)
            assert server_timeouts(args).min_receive_rate is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--write-timeout", "-1"], "argument --write-timeout: must be a number of seconds"),
        (["--write-timeout", "soon"], "argument --write-timeout: not a number of seconds"),
        (["--min-receive-rate", "fast"], "argument --min-receive-rate: not a number of bytes"),
        (["--min-receive-rate", "-5"], "argument --min-receive-rate: must be a number of bytes"),
        (["--min-receive-rate", "inf"], "argument --min-receive-rate: must be a number of bytes"),
        (["--tls-handshake-timeout", "0"], "argument --tls-handshake-timeout: must be a number"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_server_timeout_option_errors(
    options: list[str], message: str, tmp_path: Path, anyio_backend: str
) -> None:
    result = run_main(
        "storescp", "--port", "0", "--ignore", *options, "--backend", anyio_backend, cwd=tmp_path
    )
    assert result.returncode == 2, err(result)
    line = last_line(result)
    assert line.startswith("asyncdicom storescp: error: ") and message in line, line


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("storescp", ["--write-timeout", "--min-receive-rate", "--tls-handshake-timeout"]),
        (
            "qrscp",
            ["--write-timeout", "--min-receive-rate", "--tls-handshake-timeout", "--tls-out-to"],
        ),
        ("echoscu", ["--password-file", "ASYNCDICOM_PASSWORD", "--tls-handshake-timeout"]),
        ("bench", ["--tls-handshake-timeout"]),
    ],
)
def test_help_lists_the_options(command: str, expected: list[str], tmp_path: Path) -> None:
    result = run_main(command, "--help", cwd=tmp_path)
    assert result.returncode == 0, err(result)
    text = " ".join(result.stdout.decode().split())  # the help text, unwrapped
    for option in expected:
        assert option in text, option
    if command == "echoscu":
        assert "visible to other local users in the process list" in text


# --------------------------------------------------------------------------- qrscp --tls-out-to


async def test_qrscp_tls_to_one_move_destination_and_plain_to_another(
    pki: PKI, tmp_path: Path, anyio_backend: str
) -> None:
    """--tls-out-to SECURE: the C-MOVE to SECURE (a TLS-only listener) and the one to PLAIN
    (a plain-TCP listener) from the same qrscp both arrive."""
    files = write_ct_files(tmp_path / "src", 2, 2_000, seed=9)
    received: dict[str, list[str]] = {"SECURE": [], "PLAIN": []}

    def destination(title: str) -> AE:
        ae = AE(title, accept_any_storage=True)

        @ae.on_store
        async def on_store(request: Any) -> int:
            await request.discard()
            received[title].append(request.message.affected_sop_instance_uid)
            return 0

        return ae

    secure_context = server_context(pki.server_cert, pki.server_key)
    client = client_context(ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
    with anyio.fail_after(GUARD * 2):
        async with (
            destination("SECURE").server(ssl_context=secure_context) as secure,
            destination("PLAIN").server() as plain,
        ):
            args = [
                "qrscp", "--port", "0", "--host", "127.0.0.1",
                "--storage", str(tmp_path / "archive"),
                "--move-destination", f"SECURE=127.0.0.1:{secure.port}",
                "--move-destination", f"PLAIN=127.0.0.1:{plain.port}",
                "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
                "--tls-ca", str(pki.ca), "--tls-out-to", "SECURE",
                "--backend", anyio_backend,
            ]  # fmt: skip
            async with app_process(*args, cwd=tmp_path) as process:
                scp = StoreSCPProcess(process)
                port = await scp.wait_listening()
                contexts = [uids.CT_IMAGE_STORAGE, *presets.retrieve_contexts("move")]
                async with AE("SCU").associate(
                    "127.0.0.1", port, called_aet="QRSCP", contexts=contexts, ssl_context=client
                ) as assoc:
                    for f in files:
                        assert (await assoc.store(f)).status == 0
                    query = Dataset()
                    query.QueryRetrieveLevel = "STUDY"
                    query.StudyInstanceUID = dcmread(files[0]).StudyInstanceUID
                    for title in ("SECURE", "PLAIN"):
                        async with assoc.move(query, destination=title) as retrieval:
                            await retrieval.wait()
                        assert (retrieval.completed, retrieval.failed) == (2, 0), title
                assert await scp.stop() == 0
    expected = sorted(dcmread(f).SOPInstanceUID for f in files)
    assert sorted(received["SECURE"]) == expected
    assert sorted(received["PLAIN"]) == expected


def test_qrscp_outgoing_tls_by_ae_title(tmp_path: Path) -> None:
    """--tls-out-to: a context for the titles named (move destinations and commitment peers)
    and none by default; --tls-out: one for every association opened."""
    base = ["qrscp", "--port", "0", "--storage", str(tmp_path / "archive")]
    base += ["--move-destination", "A=127.0.0.1:1", "--move-destination", "B=127.0.0.1:2"]
    base += ["--peer", "C=127.0.0.1:3"]
    ae = qrscp_ae(parse(*base, "--tls-out-to", "A", "--tls-out-to", "C"))
    assert sorted(ae.config.client_ssl_contexts) == ["A", "C"]
    assert ae.config.client_ssl_context is None
    ae = qrscp_ae(parse(*base, "--tls-out"))
    assert ae.config.client_ssl_contexts == {} and ae.config.client_ssl_context is not None
    ae = qrscp_ae(parse(*base))
    assert ae.config.client_ssl_contexts == {} and ae.config.client_ssl_context is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--tls-out-to", "NOBODY"],
            "asyncdicom: error: argument --tls-out-to: 'NOBODY' is neither a "
            "--move-destination nor a --peer",
        ),
        (
            ["--tls-out", "--tls-out-to", "DEST"],
            "asyncdicom qrscp: error: argument --tls-out-to: not allowed with argument --tls-out",
        ),
        (["--tls-out-to", "bad\\title"], "asyncdicom qrscp: error: argument --tls-out-to: "),
    ],
    ids=["not-a-destination", "with-tls-out", "bad-ae-title"],
)
def test_qrscp_tls_out_to_usage_errors(
    options: list[str], message: str, tmp_path: Path, anyio_backend: str
) -> None:
    result = run_main(
        "qrscp", "--port", "0", "--storage", "archive", "--move-destination",
        "DEST=127.0.0.1:104", *options, "--backend", anyio_backend, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, err(result)
    assert last_line(result).startswith(message), err(result)
    assert "Traceback" not in err(result)
    assert not (tmp_path / "archive").exists()
