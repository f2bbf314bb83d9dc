"""DICOM over TLS with DCMTK 3.6.x (``+tls``), both directions, through the apps.

Certificates come from a throw-away CA made by trustme, written as PEM files.  DCMTK's TLS
options used (3.6.7): ``+tls KEY CERT`` (our own key and certificate, PEM by default),
``-pw`` (the key has no password: never prompt), ``+cf FILE`` (a trusted CA certificate) and
the default peer authentication ``-rc`` (verify the peer's certificate, fail if absent).
DCMTK's default security profile is "Non-downgrading BCP 195" (TLS 1.2 or later).
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
import trustme
from harness.peers import DcmtkStoreSCP, dcmtk_env, free_port
from test_cli import StoreSCPProcess, app_process, err, run_cli

from asyncdicom.storage.synthetic import write_ct_files

pytestmark = [pytest.mark.interop, pytest.mark.anyio, pytest.mark.requires_peer("dcmtk")]

TEST_TIMEOUT = 60.0


class PKI:
    """PEM files: the CA, a server certificate for 127.0.0.1 and a client certificate."""

    def __init__(self, folder: Path) -> None:
        ca = trustme.CA()
        self.ca = folder / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca))
        for name, identity in (("server", "127.0.0.1"), ("client", "client@example.org")):
            leaf = ca.issue_cert(identity)
            leaf.cert_chain_pems[0].write_to_path(str(folder / f"{name}.pem"))
            leaf.private_key_pem.write_to_path(str(folder / f"{name}.key"))
        self.server_cert, self.server_key = folder / "server.pem", folder / "server.key"
        self.client_cert, self.client_key = folder / "client.pem", folder / "client.key"

    def dcmtk(self, role: str) -> list[str]:
        """DCMTK's TLS options with the ``role`` ("server"/"client") key and certificate."""
        return ["+tls", str(self.__dict__[f"{role}_key"]), str(self.__dict__[f"{role}_cert"]),
                "-pw", "+cf", str(self.ca)]  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


async def run_dcmtk(*command: str) -> tuple[int, str]:
    with anyio.fail_after(TEST_TIMEOUT):
        result = await anyio.run_process(list(command), env=dcmtk_env(), check=False)
    return result.returncode, (result.stdout + result.stderr).decode("utf-8", "replace")


async def test_dcmtk_clients_to_our_storescp(pki: PKI, tmp_path: Path, anyio_backend: str) -> None:
    """DCMTK echoscu and storescu ``+tls`` (with their client certificate) against our
    storescp ``--tls-cert --tls-key --tls-ca``; without TLS DCMTK is refused."""
    files = write_ct_files(tmp_path / "src", 2, 100_000, seed=11)
    (tmp_path / "cwd").mkdir()
    args = [
        "storescp", "--port", "0", "--host", "127.0.0.1", "--output-dir", str(tmp_path / "out"),
        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
        "--tls-ca", str(pki.ca), "--backend", anyio_backend,
    ]  # fmt: skip
    async with app_process(*args, cwd=tmp_path / "cwd") as process:
        scp = StoreSCPProcess(process)
        port = str(await scp.wait_listening())
        rc, output = await run_dcmtk("echoscu", *pki.dcmtk("client"), "127.0.0.1", port)
        assert rc == 0, output
        rc, output = await run_dcmtk(
            "storescu", *pki.dcmtk("client"), "127.0.0.1", port, *map(str, files)
        )
        assert rc == 0, output
        rc, output = await run_dcmtk("echoscu", "127.0.0.1", port)  # plain TCP
        assert rc != 0, output
        # TLS without a client certificate (+tla): refused, as --tls-ca requires one
        rc, output = await run_dcmtk("echoscu", "+tla", "+cf", str(pki.ca), "127.0.0.1", port)
        assert rc != 0, output
        # and the server still serves a client that has one
        rc, output = await run_dcmtk("echoscu", *pki.dcmtk("client"), "127.0.0.1", port)
        assert rc == 0, output
        assert await scp.stop() == 0, scp.stderr
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == 2


async def test_dcmtk_anonymous_tls_without_tls_ca(
    pki: PKI, tmp_path: Path, anyio_backend: str
) -> None:
    """Without ``--tls-ca`` our storescp asks for no client certificate: DCMTK's anonymous
    TLS (``+tla``, verifying our certificate against the CA) echoes and stores."""
    files = write_ct_files(tmp_path / "src", 1, 50_000, seed=13)
    (tmp_path / "cwd").mkdir()
    args = [
        "storescp", "--port", "0", "--host", "127.0.0.1", "--output-dir", str(tmp_path / "out"),
        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
        "--backend", anyio_backend,
    ]  # fmt: skip
    anonymous = ["+tla", "+cf", str(pki.ca)]
    async with app_process(*args, cwd=tmp_path / "cwd") as process:
        scp = StoreSCPProcess(process)
        port = str(await scp.wait_listening())
        rc, output = await run_dcmtk("echoscu", *anonymous, "127.0.0.1", port)
        assert rc == 0, output
        rc, output = await run_dcmtk("storescu", *anonymous, "127.0.0.1", port, str(files[0]))
        assert rc == 0, output
        assert await scp.stop() == 0, scp.stderr
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == 1


async def test_our_clients_to_dcmtk_storescp(pki: PKI, tmp_path: Path, anyio_backend: str) -> None:
    """Our echoscu and storescu ``--tls`` against DCMTK storescp ``+tls``, which requires a
    client certificate (``-rc``, its default): with ours it works, without it is refused."""
    files = write_ct_files(tmp_path / "src", 2, 100_000, seed=12)
    ours = ["--tls", "--tls-ca", str(pki.ca), "--backend", anyio_backend]
    with DcmtkStoreSCP(
        port=free_port(), output_dir=tmp_path / "dcmtk-out", extra_args=pki.dcmtk("server")
    ) as peer:
        port = str(peer.port)
        client = ["--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]
        echo = await run_cli("echoscu", "127.0.0.1", port, *ours, *client, cwd=tmp_path)
        assert echo.returncode == 0, err(echo) + peer.log_text()
        sent = await run_cli(
            "storescu", "127.0.0.1", port, *map(str, files), *ours, *client, cwd=tmp_path
        )
        assert sent.returncode == 0, err(sent) + peer.log_text()
        refused = await run_cli("echoscu", "127.0.0.1", port, *ours, cwd=tmp_path)
        assert refused.returncode == 1
        assert len(err(refused).strip().splitlines()) == 1, err(refused)
        assert len(peer.received_files()) == 2
