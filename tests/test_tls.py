"""DICOM over TLS (PS3.15 Annex B), in-process and through the apps, on both backends.

Certificates are made by the tests with trustme (a throw-away CA) and written as PEM files.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
import trustme
from anyio.streams.tls import TLSAttribute
from pydicom import dcmread
from pydicom.dataset import Dataset
from test_cli import StoreSCPProcess, app_process, err, run_cli, storage_scp

from asyncdicom import AE, HookEvent, Timeouts
from asyncdicom.errors import ConnectionLost, TransportError
from asyncdicom.protocol import uids
from asyncdicom.storage.synthetic import write_ct_files
from asyncdicom.transport import TLSError, client_context, server_context
from tests.cli_main import run_main

pytestmark = pytest.mark.anyio

GUARD = 30.0


@dataclass
class PKI:
    """PEM files of a test CA, a server certificate (127.0.0.1, localhost) and a client one."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("client@example.org")
    paths = PKI(
        ca=folder / "ca.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server.key",
        client_cert=folder / "client.pem",
        client_key=folder / "client.key",
        other_ca=folder / "other-ca.pem",
    )
    ca.cert_pem.write_to_path(str(paths.ca))
    server.cert_chain_pems[0].write_to_path(str(paths.server_cert))
    server.private_key_pem.write_to_path(str(paths.server_key))
    client.cert_chain_pems[0].write_to_path(str(paths.client_cert))
    client.private_key_pem.write_to_path(str(paths.client_key))
    trustme.CA().cert_pem.write_to_path(str(paths.other_ca))
    return paths


def requested_count(ae: AE) -> list[Any]:
    """A list that grows by one for every A-ASSOCIATE-RQ ``ae`` receives."""
    seen: list[Any] = []
    ae.hooks.add(HookEvent.ASSOCIATION_REQUESTED, lambda *a, **k: seen.append(a))
    return seen


# --------------------------------------------------------------------------- API


async def test_echo_and_store_over_tls(pki: PKI, tmp_path: Path, anyio_backend: str) -> None:
    received: list[str] = []
    scp = storage_scp(tmp_path / "in", received)
    source = write_ct_files(tmp_path / "src", 1, 300_000, seed=3)[0]
    contexts = [uids.VERIFICATION, (uids.CT_IMAGE_STORAGE, [uids.EXPLICIT_VR_LITTLE_ENDIAN])]
    with anyio.fail_after(GUARD):
        async with scp.server(ssl_context=server_context(pki.server_cert, pki.server_key)) as s:
            scu = AE("SCU")
            async with scu.associate(
                "127.0.0.1", s.port, contexts=contexts, ssl_context=client_context(ca=pki.ca)
            ) as assoc:
                assert assoc._stream.extra(TLSAttribute.tls_version) in (
                    "TLSv1.2",
                    "TLSv1.3",
                )
                assert (await assoc.echo()).status == 0x0000
                assert (await assoc.store(source)).status == 0x0000
    assert len(received) == 1
    assert len(list((tmp_path / "in").rglob("*.dcm"))) == 1


async def test_context_from_config(pki: PKI, anyio_backend: str) -> None:
    """AEConfig.server_ssl_context / client_ssl_context apply without keyword arguments."""
    scp = AE("SCP", server_ssl_context=server_context(pki.server_cert, pki.server_key))
    scu = AE("SCU", client_ssl_context=client_context(ca=pki.ca))
    with anyio.fail_after(GUARD):
        async with scp.server() as s, scu.associate("127.0.0.1", s.port) as assoc:
            assert (await assoc.echo()).status == 0x0000
            assert assoc._stream.extra(TLSAttribute.cipher, None) is not None


async def test_untrusted_server_certificate_is_refused(pki: PKI, anyio_backend: str) -> None:
    scp = AE("SCP")
    requested = requested_count(scp)
    with anyio.fail_after(GUARD):
        async with scp.server(ssl_context=server_context(pki.server_cert, pki.server_key)) as s:
            with pytest.raises(TLSError, match="certificate verify failed"):
                async with AE("SCU").associate(
                    "127.0.0.1", s.port, ssl_context=client_context(ca=pki.other_ca)
                ):
                    pass
    assert requested == []


async def test_client_certificate_required(pki: PKI, anyio_backend: str) -> None:
    """With a CA, the server requires a client certificate it signed: without one the
    association never establishes and the client gets a clear error; with one it works."""
    scp = AE("SCP")
    requested = requested_count(scp)
    context = server_context(pki.server_cert, pki.server_key, ca=pki.ca)
    with anyio.fail_after(GUARD):
        async with scp.server(ssl_context=context) as s:
            # TLS 1.3: the client's handshake may end before the server checks; the server's
            # alert then arrives instead of the A-ASSOCIATE-AC: a TLSError all the same
            with pytest.raises(TLSError, match="certificate required"):
                async with AE("SCU").associate(
                    "127.0.0.1", s.port, ssl_context=client_context(ca=pki.ca)
                ):
                    pass
            assert requested == []
            with_cert = client_context(ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
            async with AE("SCU").associate("127.0.0.1", s.port, ssl_context=with_cert) as assoc:
                assert (await assoc.echo()).status == 0x0000
    assert len(requested) == 1


async def test_plain_tcp_to_tls_port_is_refused(pki: PKI, anyio_backend: str) -> None:
    scp = AE("SCP")
    requested = requested_count(scp)
    with anyio.fail_after(GUARD):
        async with scp.server(ssl_context=server_context(pki.server_cert, pki.server_key)) as s:
            with pytest.raises(ConnectionLost):
                async with AE("SCU").associate("127.0.0.1", s.port):
                    pass
            assert requested == []
            # the server keeps serving
            async with AE("SCU").associate(
                "127.0.0.1", s.port, ssl_context=client_context(ca=pki.ca)
            ) as assoc:
                assert (await assoc.echo()).status == 0x0000
    assert len(requested) == 1


async def test_silent_client_delays_nobody(pki: PKI, anyio_backend: str) -> None:
    """Clients that connect and never start the handshake do not hold up another client's
    handshake (it runs per connection, with a timeout far longer than this test's guard)."""
    scp = AE("SCP", timeouts=Timeouts(tls_handshake=300.0))
    with anyio.fail_after(GUARD):
        async with scp.server(ssl_context=server_context(pki.server_cert, pki.server_key)) as s:
            silent = [await anyio.connect_tcp("127.0.0.1", s.port) for _ in range(5)]
            try:
                with anyio.fail_after(10):
                    async with AE("SCU").associate(
                        "127.0.0.1", s.port, ssl_context=client_context(ca=pki.ca)
                    ) as assoc:
                        assert (await assoc.echo()).status == 0x0000
            finally:
                for stream in silent:
                    await stream.aclose()


async def test_handshake_timeout_closes_a_silent_connection(pki: PKI, anyio_backend: str) -> None:
    scp = AE("SCP", timeouts=Timeouts(tls_handshake=0.5))
    with anyio.fail_after(GUARD):
        async with scp.server(ssl_context=server_context(pki.server_cert, pki.server_key)) as s:
            stream = await anyio.connect_tcp("127.0.0.1", s.port)
            try:
                with anyio.fail_after(10):  # a closed connection, not the test guard
                    with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                        await stream.receive()
            finally:
                await stream.aclose()


async def test_client_handshake_timeout(anyio_backend: str) -> None:
    """A server that accepts TCP but never answers the ClientHello: the requestor gives up
    after Timeouts.tls_handshake with a clear error."""

    async def silent(stream: Any) -> None:
        await anyio.sleep_forever()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    scu = AE("SCU", timeouts=Timeouts(tls_handshake=0.5))
    with anyio.fail_after(GUARD):
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, silent)
            with pytest.raises(TLSError, match=r"timed out after 0\.5 s"):
                async with scu.associate("127.0.0.1", port, ssl_context=client_context(ca=None)):
                    pass
            tg.cancel_scope.cancel()


def test_context_defaults(pki: PKI) -> None:
    client = client_context(ca=pki.ca)
    assert client.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname
    server = server_context(pki.server_cert, pki.server_key)
    assert server.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert server.verify_mode == ssl.CERT_NONE
    assert server_context(pki.server_cert, pki.server_key, ca=pki.ca).verify_mode == (
        ssl.CERT_REQUIRED
    )


def _handshake(client: ssl.SSLContext, server: ssl.SSLContext) -> tuple[str, str] | None:
    """A TLS handshake between two contexts over memory BIOs (no socket): the (version,
    cipher) agreed, or None when it fails."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname="localhost")
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(20):
        for name, end in (("c", c), ("s", s)):
            if done[name]:
                continue
            try:
                end.do_handshake()
                done[name] = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                return None
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            version, cipher = s.version(), s.cipher()
            assert version is not None and cipher is not None
            return version, cipher[0]
    return None


def ssl_client_12(pki: PKI) -> ssl.SSLContext:
    """Python's default client context, TLS 1.2 at most (its default suites include CBC)."""
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    client.set_ciphers("DEFAULT")
    return client


def test_tls12_suites_are_forward_secret_aead_only(pki: PKI) -> None:
    # PS3.15 B.9 / BCP 195: with TLS 1.2, ECDHE or DHE key exchange and an AEAD cipher only
    for context in (client_context(ca=pki.ca), server_context(pki.server_cert, pki.server_key)):
        tls12 = [c for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
        assert tls12, "no TLS 1.2 suite left"
        for cipher in tls12:
            assert cipher["aead"], cipher["name"]
            assert cipher["kea"] in {"kx-ecdhe", "kx-dhe"}, cipher["name"]
            assert cipher["auth"] != "auth-null", cipher["name"]
    server = server_context(pki.server_cert, pki.server_key)

    def tls12_client(ciphers: str) -> ssl.SSLContext:
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
        client.maximum_version = ssl.TLSVersion.TLSv1_2
        client.set_ciphers(ciphers)
        return client

    # a TLS 1.2 peer offering only CBC or RSA key transport suites finds nothing in common
    # (the test certificates may have RSA or ECDSA keys: both variants are offered)
    cbc = ":".join(
        f"ECDHE-{key}-{suite}"
        for key in ("ECDSA", "RSA")
        for suite in ("AES128-SHA256", "AES256-SHA")
    )
    for legacy in (cbc, "AES128-GCM-SHA256:AES256-SHA256"):
        assert _handshake(tls12_client(legacy), server) is None, legacy
    gcm = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"
    assert _handshake(tls12_client(gcm), server) in {("TLSv1.2", name) for name in gcm.split(":")}
    # our client offers no such suite to a TLS 1.2 server that would take one
    legacy_server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    legacy_server.load_cert_chain(pki.server_cert, pki.server_key)
    legacy_server.maximum_version = ssl.TLSVersion.TLSv1_2
    legacy_server.set_ciphers(cbc)
    assert _handshake(ssl_client_12(pki), legacy_server) is not None  # the setup can agree
    assert _handshake(client_context(ca=pki.ca), legacy_server) is None
    # TLS 1.3 is untouched: its suites are all forward-secret AEAD
    version, _cipher = _handshake(client_context(ca=pki.ca), server) or ("", "")
    assert version == "TLSv1.3"


def test_context_file_errors(pki: PKI, tmp_path: Path) -> None:
    with pytest.raises(TLSError, match=r"the certificate file '.*nope.pem' does not exist"):
        server_context(tmp_path / "nope.pem", pki.server_key)
    with pytest.raises(TLSError, match=r"the private key file '.*nope.key' does not exist"):
        server_context(pki.server_cert, tmp_path / "nope.key")
    with pytest.raises(TLSError, match="cannot use the certificate and key"):
        server_context(pki.server_cert, pki.client_key)  # not this certificate's key
    with pytest.raises(TLSError, match="the CA file"):
        client_context(ca=tmp_path / "nope.pem")
    assert issubclass(TLSError, TransportError)


# --------------------------------------------------------------------------- apps


async def test_echoscu_tls(pki: PKI, tmp_path: Path, anyio_backend: str) -> None:
    scp = AE("SCP")
    context = server_context(pki.server_cert, pki.server_key, ca=pki.ca)
    with anyio.fail_after(GUARD):
        async with scp.server(ssl_context=context) as s:
            port = str(s.port)
            ok = await run_cli(
                "echoscu", "127.0.0.1", port, "--tls", "--tls-ca", str(pki.ca),
                "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key),
                "--backend", anyio_backend, cwd=tmp_path,
            )  # fmt: skip
            assert ok.returncode == 0, err(ok)
            no_cert = await run_cli(
                "echoscu", "127.0.0.1", port, "--tls", "--tls-ca", str(pki.ca),
                "--backend", anyio_backend, cwd=tmp_path,
            )  # fmt: skip
            assert no_cert.returncode == 1
            assert "certificate required" in err(no_cert)
            assert len(err(no_cert).strip().splitlines()) == 1, err(no_cert)
            untrusted = await run_cli(
                "echoscu", "127.0.0.1", port, "--tls", "--backend", anyio_backend, cwd=tmp_path
            )
            assert untrusted.returncode == 1
            [line] = err(untrusted).strip().splitlines()
            assert line.startswith(
                f"asyncdicom: error: TLS handshake with 127.0.0.1:{port} failed: certificate "
                "verify failed: "
            )


async def test_storescp_tls_with_storescu(pki: PKI, tmp_path: Path, anyio_backend: str) -> None:
    files = write_ct_files(tmp_path / "src", 2, 40_000, seed=5)
    (tmp_path / "cwd").mkdir()
    args = [
        "storescp", "--port", "0", "--host", "127.0.0.1", "--output-dir", str(tmp_path / "out"),
        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
        "--tls-ca", str(pki.ca), "--backend", anyio_backend,
    ]  # fmt: skip
    async with app_process(*args, cwd=tmp_path / "cwd") as process:
        scp = StoreSCPProcess(process)
        port = str(await scp.wait_listening())
        sent = await run_cli(
            "storescu", "127.0.0.1", port, *map(str, files), "--tls-ca", str(pki.ca),
            "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key),
            "--backend", anyio_backend, cwd=tmp_path,
        )  # fmt: skip
        assert sent.returncode == 0, err(sent)
        plain = await run_cli("echoscu", "127.0.0.1", port, cwd=tmp_path)
        assert plain.returncode == 1
        assert await scp.stop() == 0
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == 2


async def test_storescp_verifies_client_certificates_against_its_tls_ca(
    pki: PKI, tmp_path: Path, anyio_backend: str
) -> None:
    """``storescp --tls-ca`` (the check DCMTK's clients make in the interop tests, here with
    our own echoscu): a client certificate signed by that CA is accepted, TLS without a client
    certificate is refused, and the same client certificate is refused by a storescp whose
    --tls-ca is another CA; without --tls-ca no client certificate is asked for."""
    (tmp_path / "cwd").mkdir()
    client = ["--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]

    async def echo(port: str, *tls: str) -> Any:
        return await run_cli(
            "echoscu", "127.0.0.1", port, "--tls", "--tls-ca", str(pki.ca), *tls,
            "--backend", anyio_backend, cwd=tmp_path,
        )  # fmt: skip

    async def storescp(*tls_ca: str) -> Any:
        args = [
            "storescp", "--port", "0", "--host", "127.0.0.1", "--ignore",
            "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key), *tls_ca,
            "--backend", anyio_backend,
        ]  # fmt: skip
        return app_process(*args, cwd=tmp_path / "cwd")

    with anyio.fail_after(GUARD * 2):
        async with await storescp("--tls-ca", str(pki.ca)) as process:
            scp = StoreSCPProcess(process)
            port = str(await scp.wait_listening())
            assert (await echo(port, *client)).returncode == 0
            no_cert = await echo(port)
            assert no_cert.returncode == 1 and "certificate required" in err(no_cert)
            assert await scp.stop() == 0
        async with await storescp("--tls-ca", str(pki.other_ca)) as process:
            scp = StoreSCPProcess(process)
            port = str(await scp.wait_listening())
            refused = await echo(port, *client)
            assert refused.returncode == 1, err(refused)
            assert "TLS" in err(refused) or "certificate" in err(refused), err(refused)
            assert await scp.stop() == 0
        async with await storescp() as process:
            scp = StoreSCPProcess(process)
            port = str(await scp.wait_listening())
            assert (await echo(port)).returncode == 0  # anonymous TLS client: accepted
            assert await scp.stop() == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["storescp", "--port", "0", "--ignore", "--tls-cert", "missing.pem"],
            "'missing.pem' does not exist",
        ),
        (
            ["storescp", "--port", "0", "--ignore", "--tls-key", "{key}"],
            "--tls-key: needs --tls-cert",
        ),
        (
            ["storescp", "--port", "0", "--ignore", "--tls-cert", "{cert}", "--tls-key", "{ckey}"],
            "TLS options",
        ),
        (["storescp", "--port", "0", "--ignore", "--tls-ca", "{ca}"], "--tls-ca: needs --tls-cert"),
        (["echoscu", "127.0.0.1", "104", "--tls-ca", "missing.pem"], "does not exist"),
        (["echoscu", "127.0.0.1", "104", "--tls-cert", "{cert}", "--tls-key", "."], "a folder"),
    ],
)
def test_tls_option_errors_are_usage_errors(
    args: list[str], message: str, pki: PKI, tmp_path: Path
) -> None:
    files = {
        "cert": str(pki.server_cert),
        "key": str(pki.server_key),
        "ckey": str(pki.client_key),
        "ca": str(pki.ca),
    }
    result = run_main(*(a.format(**files) for a in args), cwd=tmp_path)
    assert result.returncode == 2, err(result)
    assert message in err(result)
    assert "Traceback" not in err(result)


@pytest.mark.parametrize("processes", ["1", "2"])
async def test_bench_over_tls(pki: PKI, tmp_path: Path, processes: str, anyio_backend: str) -> None:
    """``asyncdicom bench --tls``: every association (and every worker process) over TLS with
    a client certificate; without the certificate every association is refused."""
    import json

    scp = AE("SCP")
    context = server_context(pki.server_cert, pki.server_key, ca=pki.ca)
    out = tmp_path / "bench.json"
    with anyio.fail_after(GUARD):
        async with scp.server(ssl_context=context) as s:
            ok = await run_cli(
                "bench", "127.0.0.1", str(s.port), "--called-aet", "SCP", "--count", "20",
                "--associations", "2", "--processes", processes, "--tls-ca", str(pki.ca),
                "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key),
                "--json", str(out), "--backend", anyio_backend, cwd=tmp_path,
            )  # fmt: skip
            assert ok.returncode == 0, err(ok)
            result = json.loads(out.read_text())
            assert result["operations"] == 20 and result["errors"] == 0
            refused = await run_cli(
                "bench", "127.0.0.1", str(s.port), "--called-aet", "SCP", "--count", "4",
                "--tls-ca", str(pki.ca), "--backend", anyio_backend, cwd=tmp_path,
            )  # fmt: skip
            assert refused.returncode == 1


async def test_qrscp_moves_over_tls_with_tls_out(
    pki: PKI, tmp_path: Path, anyio_backend: str
) -> None:
    """qrscp serving TLS, and with --tls-out opening its C-MOVE sub-association over TLS to a
    destination that requires a client certificate; without --tls-out that move fails."""
    from asyncdicom import presets
    from asyncdicom.services.retrieve import RetrieveFailed

    files = write_ct_files(tmp_path / "src", 2, 2_000, seed=7)
    dest = AE("DEST", accept_any_storage=True)
    received: list[str] = []

    @dest.on_store
    async def on_store(request: Any) -> int:
        await request.discard()
        received.append(request.message.affected_sop_instance_uid)
        return 0

    client = client_context(ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
    dest_context = server_context(pki.server_cert, pki.server_key, ca=pki.ca)
    for tls_out in (True, False):
        received.clear()
        storage = tmp_path / f"archive-{tls_out}"
        with anyio.fail_after(GUARD * 2):
            async with dest.server(ssl_context=dest_context) as d:
                args = [
                    "qrscp", "--port", "0", "--host", "127.0.0.1", "--storage", str(storage),
                    "--move-destination", f"DEST=127.0.0.1:{d.port}",
                    "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
                    "--tls-ca", str(pki.ca), "--backend", anyio_backend,
                    *(["--tls-out"] if tls_out else []),
                ]  # fmt: skip
                async with app_process(*args, cwd=tmp_path) as process:
                    port = await StoreSCPProcess(process).wait_listening()
                    scu = AE("SCU")
                    contexts = [uids.CT_IMAGE_STORAGE, *presets.retrieve_contexts("move")]
                    async with scu.associate(
                        "127.0.0.1", port, called_aet="QRSCP", contexts=contexts,
                        ssl_context=client,
                    ) as assoc:  # fmt: skip
                        for f in files:
                            assert (await assoc.store(f)).status == 0
                        query = Dataset()
                        query.QueryRetrieveLevel = "STUDY"
                        query.StudyInstanceUID = dcmread(files[0]).StudyInstanceUID
                        if tls_out:
                            async with assoc.move(query, destination="DEST") as retrieval:
                                await retrieval.wait()
                            assert retrieval.completed == 2
                        else:
                            with pytest.raises(RetrieveFailed) as failed:
                                async with assoc.move(query, destination="DEST") as retrieval:
                                    await retrieval.wait()
                            assert failed.value.response.status == 0xA702
                    process.terminate()
                    await process.wait()
        assert len(received) == (2 if tls_out else 0)


async def test_router_over_tls_in_and_out(pki: PKI, tmp_path: Path, anyio_backend: str) -> None:
    """The router serving TLS only (a client certificate required) and, with --tls-out-to,
    forwarding over TLS to the destination named while the other stays plain TCP."""
    files = write_ct_files(tmp_path / "src", 2, 2_000, seed=11)
    expected = sorted(dcmread(f).SOPInstanceUID for f in files)
    received: dict[str, list[str]] = {"SECURE": [], "PLAIN": []}
    all_forwarded = anyio.Event()

    def sink(name: str) -> AE:
        ae = AE(name, accept_any_storage=True)

        @ae.on_store
        async def on_store(request: Any) -> int:
            await request.discard()
            received[name].append(request.message.affected_sop_instance_uid)
            if sum(map(len, received.values())) == 2 * len(files):
                all_forwarded.set()
            return 0

        return ae

    client = client_context(ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
    secure_context = server_context(pki.server_cert, pki.server_key, ca=pki.ca)
    with anyio.fail_after(GUARD * 2):
        async with (
            sink("SECURE").server(ssl_context=secure_context) as secure,
            sink("PLAIN").server() as plain,
        ):
            args = [
                "router", "--port", "0", "--host", "127.0.0.1", "--queue", str(tmp_path / "q"),
                "--forward", f"SECURE@127.0.0.1:{secure.port}",
                "--forward", f"PLAIN@127.0.0.1:{plain.port}",
                "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
                "--tls-ca", str(pki.ca), "--tls-out-to", "SECURE", "--backend", anyio_backend,
            ]  # fmt: skip
            async with app_process(*args, cwd=tmp_path) as process:
                port = await StoreSCPProcess(process).wait_listening()
                with pytest.raises((ConnectionLost, TransportError)):  # TLS only
                    async with AE("SCU").associate(
                        "127.0.0.1", port, contexts=[uids.CT_IMAGE_STORAGE]
                    ):
                        pass
                async with AE("SCU").associate(
                    "127.0.0.1", port, contexts=[uids.CT_IMAGE_STORAGE], ssl_context=client
                ) as assoc:
                    for f in files:
                        assert (await assoc.store(f)).status == 0
                await all_forwarded.wait()  # forwarded in the background
                process.terminate()
                await process.wait()
    assert sorted(received["SECURE"]) == expected
    assert sorted(received["PLAIN"]) == expected


async def test_stgcmtscu_receives_the_report_over_tls(
    pki: PKI, tmp_path: Path, anyio_backend: str
) -> None:
    """stgcmtscu --tls --listen-port: the report comes on a new TLS association to its
    listener (our certificate serves it; the reporting peer shows one signed by the CA)."""
    from test_cli import free_port

    from asyncdicom import presets
    from asyncdicom.services.commitment import CommitmentSCP

    files = write_ct_files(tmp_path / "src", 2, 2_000, seed=11)
    listen = free_port()
    scp = AE(
        "SCP",
        supported_contexts=presets.storage_commitment_scp_supported(),
        client_ssl_context=client_context(ca=pki.ca, cert=pki.client_cert, key=pki.client_key),
    )
    context = server_context(pki.server_cert, pki.server_key, ca=pki.ca)
    tls = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.server_cert)]
    tls += ["--tls-key", str(pki.server_key)]
    with anyio.fail_after(GUARD * 2):
        async with (
            CommitmentSCP(
                scp, lambda refs: {}, peers={"STGCMTSCU": ("127.0.0.1", listen)},
                always_new_association=True,
            ) as commitment,
            scp.server(ssl_context=context) as s,
        ):  # fmt: skip
            ok = await run_cli(
                "stgcmtscu", "127.0.0.1", str(s.port), str(tmp_path / "src"),
                "--called-aet", "SCP", "--aet", "STGCMTSCU", "--listen-port", str(listen),
                "--listen-host", "127.0.0.1", "--timeout", "20", *tls,
                "--backend", anyio_backend, cwd=tmp_path,
            )  # fmt: skip
    assert ok.returncode == 0, err(ok)
    assert [kind for _uid, _event, kind in commitment.reports] == ["new"]
    assert len(files) == 2


async def test_hostname_check_and_its_switch(pki: PKI, tmp_path: Path, anyio_backend: str) -> None:
    """A server certificate naming only another host ("pacs.example.org") is refused when we
    connect to 127.0.0.1 (name mismatch), and accepted with ``--tls-no-hostname-check`` /
    ``client_context(check_hostname=False)``; a certificate from another CA is still refused
    with the switch (the chain is verified)."""
    ca = trustme.CA()
    named = ca.issue_cert("pacs.example.org")
    folder = tmp_path / "named"
    folder.mkdir()
    ca_pem, cert_pem, key_pem = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    named.cert_chain_pems[0].write_to_path(str(cert_pem))
    named.private_key_pem.write_to_path(str(key_pem))
    scp = AE("SCP")
    with anyio.fail_after(GUARD):
        async with scp.server(ssl_context=server_context(cert_pem, key_pem)) as s:
            port = str(s.port)
            checked = await run_cli(
                "echoscu", "127.0.0.1", port, "--tls-ca", str(ca_pem),
                "--backend", anyio_backend, cwd=tmp_path,
            )  # fmt: skip
            assert checked.returncode == 1
            assert "match" in err(checked) or "mismatch" in err(checked), err(checked)
            unchecked = await run_cli(
                "echoscu", "127.0.0.1", port, "--tls-ca", str(ca_pem),
                "--tls-no-hostname-check", "--backend", anyio_backend, cwd=tmp_path,
            )  # fmt: skip
            assert unchecked.returncode == 0, err(unchecked)
            other_ca = await run_cli(
                "echoscu", "127.0.0.1", port, "--tls-ca", str(pki.ca),
                "--tls-no-hostname-check", "--backend", anyio_backend, cwd=tmp_path,
            )  # fmt: skip
            assert other_ca.returncode == 1
            assert "certificate verify failed" in err(other_ca), err(other_ca)
            # the same through the API
            context = client_context(ca=ca_pem, check_hostname=False)
            async with AE("SCU").associate(
                "127.0.0.1", s.port, called_aet="SCP", ssl_context=context
            ) as assoc:
                assert (await assoc.echo()).status == 0
