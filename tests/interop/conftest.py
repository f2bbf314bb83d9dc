"""Fixtures that start real DICOM peers (DCMTK, pynetdicom, Orthanc) on 127.0.0.1.

The peers are external processes managed by :mod:`harness.peers` and :mod:`harness.orthanc`;
fixtures here are synchronous (a subprocess needs no event loop) and work with
``@pytest.mark.anyio`` tests.

A missing peer SKIPS the tests that need it (declared with the ``requires_peer`` marker, and
checked again by the fixtures that start peers), and the run ends with a summary line saying
what to install; with ``ASYNCDICOM_REQUIRE_PEERS=1``, which CI sets, those tests FAIL instead,
so a broken CI image cannot hide behind skips (see :mod:`harness.requirements`).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, ExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom.data
import pytest
from harness.orthanc import OrthancPeer
from harness.peers import DcmtkStoreSCP, OdilStoreSCP, PynetdicomSCP
from harness.requirements import require
from pydicom import dcmread

from asyncdicom import AE, Association, HookEvent, Server, ServiceRequest
from asyncdicom.protocol.pdu import AssociateRJ

# pydicom's bundled samples (never the download helpers). Chosen to be valid storage instances
# with distinct SOP Instance UIDs, in uncompressed little-endian transfer syntaxes (so any SCP
# accepts them with default settings), covering: explicit and implicit VR, images, a
# multi-frame RT Dose, an RT Plan and an SR without pixel data, and a ~290 kB ECG waveform that
# spans many PDUs at the default 16 kB PDU size.
SAMPLE_FILE_NAMES: tuple[str, ...] = (
    "CT_small.dcm",  # CT Image, explicit VR LE
    "MR_small.dcm",  # MR Image, explicit VR LE
    "rtplan.dcm",  # RT Plan, implicit VR LE, no pixel data
    "rtdose.dcm",  # RT Dose, implicit VR LE, multi-frame
    "test-SR.dcm",  # Comprehensive SR, explicit VR LE
    "waveform_ecg.dcm",  # 12-lead ECG, explicit VR LE, large
)

SAMPLES_DIR = Path(pydicom.data.__file__).parent / "test_files"


def _show_log(peer: DcmtkStoreSCP | PynetdicomSCP | OdilStoreSCP) -> None:
    """Stop the peer and print its log: pytest shows it (teardown stderr) if the test failed."""
    peer.stop()
    log = peer.log_text()
    if log:
        sys.stderr.write(f"--- {peer.name} log ---\n{log}\n")


@pytest.fixture(scope="session")
def require_dcmtk() -> None:
    """Skip (fail under ASYNCDICOM_REQUIRE_PEERS=1) when a DCMTK program the interop tests use
    cannot be found."""
    require("dcmtk")


@pytest.fixture(scope="session")
def require_pynetdicom() -> None:
    """Skip (fail under ASYNCDICOM_REQUIRE_PEERS=1) when pynetdicom cannot be imported."""
    require("pynetdicom")


@pytest.fixture(scope="session")
def require_orthanc() -> None:
    """Skip (fail under ASYNCDICOM_REQUIRE_PEERS=1) when there is no Orthanc executable."""
    require("orthanc")


@pytest.fixture(scope="session")
def sample_files() -> list[Path]:
    """Paths of the sample instances, each checked to be a usable storage instance."""
    files: list[Path] = []
    seen_uids: set[str] = set()
    for name in SAMPLE_FILE_NAMES:
        path = SAMPLES_DIR / name
        if not path.is_file():
            pytest.fail(f"pydicom sample {name} not found in {SAMPLES_DIR}", pytrace=False)
        ds = dcmread(path)
        for keyword in ("SOPClassUID", "SOPInstanceUID"):
            if not ds.get(keyword):
                pytest.fail(f"sample {name} has no {keyword}", pytrace=False)
        if not ds.file_meta.get("TransferSyntaxUID"):
            pytest.fail(f"sample {name} has no file meta Transfer Syntax UID", pytrace=False)
        uid = str(ds.SOPInstanceUID)
        if uid in seen_uids:
            pytest.fail(f"sample {name} repeats SOP Instance UID {uid}", pytrace=False)
        seen_uids.add(uid)
        files.append(path)
    return files


@pytest.fixture
def dcmtk_storescp(require_dcmtk: None, tmp_path: Path) -> Iterator[DcmtkStoreSCP]:
    """A running DCMTK storescp (``+xa``) writing to a fresh directory.

    Attributes: ``host``, ``port``, ``aet``, ``output_dir``; ``received_files()``.
    """
    with DcmtkStoreSCP(output_dir=tmp_path / "dcmtk-storescp") as scp:
        yield scp
        _show_log(scp)


@pytest.fixture
def dcmtk_storescp_factory(
    require_dcmtk: None,
) -> Iterator[Callable[..., DcmtkStoreSCP]]:
    """Start storescp with custom options (``DcmtkStoreSCP`` keyword arguments); all are
    stopped at teardown."""
    with ExitStack() as stack:
        started: list[DcmtkStoreSCP] = []

        def start(**kwargs: Any) -> DcmtkStoreSCP:
            started.append(stack.enter_context(DcmtkStoreSCP(**kwargs)))
            return started[-1]

        yield start
        for scp in started:
            _show_log(scp)


@pytest.fixture
def odil_store_scp(tmp_path: Path) -> Iterator[OdilStoreSCP]:
    """A running odil Storage SCP (Debian's python3-odil, in its own interpreter) writing to a
    fresh directory. Attributes: ``host``, ``port``, ``aet``, ``output_dir``;
    ``received_files()``, ``stored_uids()``."""
    require("odil")
    with OdilStoreSCP(output_dir=tmp_path / "odil-storescp") as scp:
        yield scp
        _show_log(scp)


@pytest.fixture
def pynetdicom_scp(require_pynetdicom: None, tmp_path: Path) -> Iterator[PynetdicomSCP]:
    """A running pynetdicom Storage/Verification SCP (separate process) writing to a fresh
    directory. Attributes: ``host``, ``port``, ``aet``, ``output_dir``; ``received_files()``;
    ``stats`` after ``stop()``."""
    with PynetdicomSCP(output_dir=tmp_path / "pynetdicom-scp") as scp:
        yield scp
        _show_log(scp)


@pytest.fixture
def pynetdicom_scp_factory(require_pynetdicom: None) -> Iterator[Callable[..., PynetdicomSCP]]:
    """Start pynetdicom SCPs with custom options (``PynetdicomSCP`` keyword arguments); all are
    stopped at teardown."""
    with ExitStack() as stack:
        started: list[PynetdicomSCP] = []

        def start(**kwargs: Any) -> PynetdicomSCP:
            started.append(stack.enter_context(PynetdicomSCP(**kwargs)))
            return started[-1]

        yield start
        for scp in started:
            _show_log(scp)


# ---------------------------------------------------------------------------------------------
# Fixtures for asyncdicom's own interop tests (test_dcmtk.py, test_pynetdicom.py)
# ---------------------------------------------------------------------------------------------


@dataclass
class OurSCP:
    """An asyncdicom acceptor running in the test's event loop, with what it saw.

    ``stored`` lists ``(path, transfer syntax)`` of every instance saved (in arrival order),
    ``accepted`` / ``rejected`` the associations our AE accepted or rejected (the rejected ones
    with their A-ASSOCIATE-RJ), ``released`` / ``aborted`` how associations ended.
    """

    ae: AE
    server: Server
    output_dir: Path
    stored: list[tuple[Path, str]] = field(default_factory=list)
    accepted: list[Association] = field(default_factory=list)
    rejected: list[tuple[Association, AssociateRJ]] = field(default_factory=list)
    released: list[Association] = field(default_factory=list)
    aborted: list[Association] = field(default_factory=list)

    host = "127.0.0.1"

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def aet(self) -> str:
        return self.ae.ae_title

    def stored_paths(self) -> list[Path]:
        return [path for path, _ in self.stored]


@pytest.fixture
def our_scp_factory(
    tmp_path: Path,
) -> Callable[..., AbstractAsyncContextManager[OurSCP]]:
    """``async with our_scp_factory(**AE config) as scp:`` runs an asyncdicom SCP on
    127.0.0.1 (OS-chosen port) that accepts Verification and every storage SOP class (unless
    the config says otherwise) and saves each C-STORE to ``scp.output_dir`` with ``save_to``.
    The server lives in the test's own event loop, so blocking peers must run in a worker
    thread or with ``anyio.run_process``."""

    counter = iter(range(1_000_000))

    @asynccontextmanager
    async def start(*, ae_title: str = "OURSCP", **config: Any) -> AsyncIterator[OurSCP]:
        config.setdefault("accept_any_storage", True)
        output = tmp_path / f"our-scp-{next(counter)}"
        ae = AE(ae_title, **config)
        scp: OurSCP | None = None

        @ae.on_store
        async def on_store(request: ServiceRequest) -> int:
            path = await request.save_to(output)
            assert scp is not None
            scp.stored.append((path, request.context.transfer_syntax or ""))
            return 0x0000

        def on_accepted(event: HookEvent, assoc: Association, **data: Any) -> None:
            assert scp is not None
            scp.accepted.append(assoc)

        def on_rejected(event: HookEvent, assoc: Association, **data: Any) -> None:
            assert scp is not None
            scp.rejected.append((assoc, data["reject"]))

        def on_released(event: HookEvent, assoc: Association, **data: Any) -> None:
            assert scp is not None
            scp.released.append(assoc)

        def on_aborted(event: HookEvent, assoc: Association, **data: Any) -> None:
            assert scp is not None
            scp.aborted.append(assoc)

        ae.hooks.add(HookEvent.ASSOCIATION_ACCEPTED, on_accepted)
        ae.hooks.add(HookEvent.ASSOCIATION_REJECTED, on_rejected)
        ae.hooks.add(HookEvent.ASSOCIATION_RELEASED, on_released)
        ae.hooks.add(HookEvent.ASSOCIATION_ABORTED, on_aborted)
        async with ae.server("127.0.0.1", 0) as server:
            scp = OurSCP(ae, server, output)
            yield scp

    return start


@pytest.fixture(scope="session")
def shared_pynetdicom_scp(
    require_pynetdicom: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PynetdicomSCP]:
    """One pynetdicom SCP process for the whole session (it takes about a second to start and
    more to stop).  Use it through :func:`pynetdicom_peer`, which empties its output folder."""
    with PynetdicomSCP(output_dir=tmp_path_factory.mktemp("shared-pynetdicom-scp")) as scp:
        yield scp
        _show_log(scp)


@pytest.fixture
def pynetdicom_peer(shared_pynetdicom_scp: PynetdicomSCP) -> PynetdicomSCP:
    """The shared pynetdicom SCP with an empty output folder (a pytest process runs one test
    at a time, and each pytest-xdist worker has its own SCP, so what it holds after the test
    was received during the test)."""
    scp = shared_pynetdicom_scp
    if not scp.is_running():
        pytest.fail(f"the shared pynetdicom SCP died:\n{scp.log_text()}", pytrace=False)
    assert scp.output_dir is not None
    for path in scp.output_dir.iterdir():
        if path.is_file():
            path.unlink()
    return scp


# ---------------------------------------------------------------------------------------------
# Orthanc (harness.orthanc), for test_orthanc.py
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_orthanc(require_orthanc: None) -> Iterator[OrthancPeer]:
    """One private Orthanc per test module (it starts in a fraction of a second but takes 2 to
    3 s to stop). A missing Orthanc skips the tests (fails them under
    ASYNCDICOM_REQUIRE_PEERS=1). Use it through :func:`orthanc`, which empties it first."""
    with OrthancPeer(aet="ORTHANC") as peer:
        yield peer
        peer.stop()
        log = peer.log_text()
        if log:
            sys.stderr.write(f"--- {peer.name} log ---\n{log}\n")


@pytest.fixture
def orthanc(shared_orthanc: OrthancPeer) -> OrthancPeer:
    """The module's Orthanc with no stored instances and only its configured modalities."""
    if not shared_orthanc.is_running():
        pytest.fail(f"the shared Orthanc died:\n{shared_orthanc.log_text()}", pytrace=False)
    shared_orthanc.reset()
    return shared_orthanc
