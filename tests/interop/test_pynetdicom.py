"""Interop of asyncdicom with pynetdicom 2.x/3.x, both directions, on 127.0.0.1.

* pynetdicom as SCU runs **in a worker thread** of the test process
  (``anyio.to_thread.run_sync``): its API blocks, while our SCP serves in the test's event
  loop.  Each pynetdicom association gets TCP_NODELAY on its socket (EVT_CONN_OPEN), as the
  harness scripts do: pynetdicom leaves Nagle's algorithm on, and every request/response
  round trip would then wait for a delayed ACK.
* pynetdicom as SCP is the harness's separate process (``tests/harness/pynetdicom_scp.py``),
  shared by the whole session (it takes a second or two to start and stop); the
  ``pynetdicom_peer`` fixture empties its output folder before each test.

pynetdicom behaviour these tests rely on: it proposes exactly the contexts it is given, answers
an asynchronous operations window only if it was asked (it performs operations one at a time),
writes received data sets unchanged as ``<SOP Instance UID>.dcm``, and rejects an abstract
syntax it does not support with result 3 (abstract syntax not supported).
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import anyio
import pydicom.data
import pytest
from harness.peers import (
    PynetdicomSCP,
    assert_instances_match,
    instance_uid,
    transfer_syntax_of,
)
from pydicom import dcmread
from pydicom.dataset import Dataset

from asyncdicom import AE, IdentityDecision, SupportedContext
from asyncdicom.errors import NoAcceptedContext
from asyncdicom.hooks import HookEvent
from asyncdicom.presets import storage_commitment_scp_supported
from asyncdicom.protocol import uids
from asyncdicom.protocol.errors import RejectReason, RejectResult, RejectSource
from asyncdicom.protocol.negotiation import ContextResult
from asyncdicom.protocol.pdu import AssociateRQ, UserIdentityRQSubItem
from asyncdicom.storage.synthetic import write_ct_files

try:
    from harness.pynetdicom_race import close_reactor_race
    from pynetdicom import AE as PynetdicomAE
    from pynetdicom import build_role, evt
    from pynetdicom.pdu_primitives import (
        AsynchronousOperationsWindowNegotiation,
        UserIdentityNegotiation,
    )

    # pynetdicom's reactor thread could drop our (fast) response to its own send_c_echo() and
    # then wait for it until its DIMSE timeout: its race, not ours (harness.pynetdicom_race)
    close_reactor_race()
except ImportError:  # every test here is skipped (or failed) by its requires_peer marker
    pass

pytestmark = [pytest.mark.interop, pytest.mark.anyio, pytest.mark.requires_peer("pynetdicom")]

SAMPLES = Path(pydicom.data.__file__).parent / "test_files"
JPEG2000 = SAMPLES / "JPEG2000.dcm"  # Secondary Capture, JPEG 2000
RLE = SAMPLES / "MR_small_RLE.dcm"  # MR Image, RLE Lossless (same SOP Instance as MR_small)
CT_SMALL = SAMPLES / "CT_small.dcm"

#: bound on each test's network activity: a hang fails the test instead of the whole run
TEST_TIMEOUT = 60.0


# --------------------------------------------------------------------------- helpers


_uid_of = instance_uid
_transfer_syntax_of = transfer_syntax_of


def _file_contexts(files: Iterable[Path]) -> dict[str, list[str]]:
    """SOP class -> the transfer syntaxes of the files of that class."""
    out: dict[str, list[str]] = {}
    for path in files:
        meta = dcmread(path, stop_before_pixels=True).file_meta
        syntaxes = out.setdefault(str(meta.MediaStorageSOPClassUID), [])
        if str(meta.TransferSyntaxUID) not in syntaxes:
            syntaxes.append(str(meta.TransferSyntaxUID))
    return out


def _set_nodelay(event: Any) -> None:
    raw = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if isinstance(raw, socket.socket):
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _pynetdicom_ae(*contexts: tuple[str, Sequence[str]] | str) -> Any:
    ae = PynetdicomAE(ae_title="PYNETSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for context in contexts:
        if isinstance(context, str):
            ae.add_requested_context(context)
        else:
            ae.add_requested_context(context[0], list(context[1]))
    return ae


def _associate(ae: Any, port: int, *, ext_neg: list[Any] | None = None) -> Any:
    return ae.associate(
        "127.0.0.1",
        port,
        ae_title="OURSCP",
        ext_neg=ext_neg,
        evt_handlers=[(evt.EVT_CONN_OPEN, _set_nodelay)],
    )


def _status(response: Any) -> int | None:
    return int(response.Status) if response is not None and "Status" in response else None


# --------------------------------------------------------------------------- 7. pynetdicom -> us


async def test_pynetdicom_echo_to_our_scp(our_scp_factory: Any) -> None:
    def run(port: int) -> list[int | None]:
        assoc = _associate(_pynetdicom_ae(uids.VERIFICATION), port)
        assert assoc.is_established
        try:
            return [_status(assoc.send_c_echo(msg_id=i)) for i in range(1, 4)]
        finally:
            assoc.release()

    async with our_scp_factory() as scp:
        with anyio.fail_after(TEST_TIMEOUT):
            statuses = await anyio.to_thread.run_sync(run, scp.port)
            await scp.accepted[0].wait_closed()
    assert statuses == [0x0000] * 3
    assert len(scp.accepted) == 1
    assert scp.released == scp.accepted
    assert scp.accepted[0].calling_ae_title == "PYNETSCU"


async def test_pynetdicom_store_to_our_scp(our_scp_factory: Any, sample_files: list[Path]) -> None:
    files = [*sample_files, JPEG2000]  # a compressed one too: sent in its own syntax
    contexts: list[tuple[str, Sequence[str]]] = []
    for sop_class, syntaxes in _file_contexts(files).items():
        contexts.append((sop_class, syntaxes))
        contexts.append(
            (sop_class, [uids.EXPLICIT_VR_LITTLE_ENDIAN, uids.IMPLICIT_VR_LITTLE_ENDIAN])
        )

    def run(port: int) -> list[int | None]:
        assoc = _associate(_pynetdicom_ae(*contexts), port)
        assert assoc.is_established
        try:
            return [
                _status(assoc.send_c_store(dcmread(path), msg_id=i + 1))
                for i, path in enumerate(files)
            ]
        finally:
            assoc.release()

    async with our_scp_factory() as scp:
        with anyio.fail_after(TEST_TIMEOUT):
            statuses = await anyio.to_thread.run_sync(run, scp.port)
    assert statuses == [0x0000] * len(files)
    assert_instances_match(scp.stored_paths(), files)
    for path, ts in scp.stored:
        assert _transfer_syntax_of(path) == ts
    assert uids.JPEG_2000 in {ts for _, ts in scp.stored}


@pytest.mark.parametrize(
    ("username", "passcode", "accepted"),
    [
        pytest.param(b"alice", b"secret", True, id="accepted"),
        pytest.param(b"mallory", b"guess", False, id="rejected"),
    ],
)
async def test_pynetdicom_user_identity_and_async_window(
    our_scp_factory: Any, username: bytes, passcode: bytes, accepted: bool
) -> None:
    seen: list[UserIdentityRQSubItem] = []

    def run(port: int) -> dict[str, Any]:
        identity = UserIdentityNegotiation()
        identity.user_identity_type = 2  # username and passcode
        identity.primary_field = username
        identity.secondary_field = passcode
        identity.positive_response_requested = True
        window = AsynchronousOperationsWindowNegotiation()
        window.maximum_number_operations_invoked = 5
        window.maximum_number_operations_performed = 3
        received: list[Any] = []
        assoc = _pynetdicom_ae(uids.VERIFICATION).associate(
            "127.0.0.1",
            port,
            ae_title="OURSCP",
            ext_neg=[identity, window],
            evt_handlers=[
                (evt.EVT_CONN_OPEN, _set_nodelay),
                (evt.EVT_PDU_RECV, lambda event: received.append(event.pdu)),
            ],
        )
        if not assoc.is_established:
            # What pynetdicom received on the wire: its ACSE sometimes reports a rejection it
            # received as an abort (pynetdicom 3.0.4: its reactor thread closes the socket on
            # the A-ASSOCIATE-RJ before the requesting thread reads the confirmation, about
            # one time in eight on a fast loopback), so its is_rejected flag is not reliable.
            rjs = [pdu for pdu in received if type(pdu).__name__ == "A_ASSOCIATE_RJ"]
            return {
                "established": False,
                "rejected": [(pdu.result, pdu.source, pdu.reason_diagnostic) for pdu in rjs],
            }
        try:
            response = assoc.acceptor.user_identity
            return {
                "established": True,
                "identity_response": None if response is None else response.server_response,
                "window": assoc.acceptor.asynchronous_operations,
                "echo": _status(assoc.send_c_echo()),
            }
        finally:
            assoc.release()

    async def check(rq: AssociateRQ, item: UserIdentityRQSubItem) -> IdentityDecision:
        seen.append(item)
        ok = (item.primary_field, item.secondary_field) == (b"alice", b"secret")
        return IdentityDecision(accepted=ok)

    async with our_scp_factory() as scp:
        scp.ae.on_user_identity(check)
        with anyio.fail_after(TEST_TIMEOUT):
            outcome = await anyio.to_thread.run_sync(run, scp.port)

    (item,) = seen
    assert (item.identity_type, item.positive_response_requested) == (2, True)
    assert (item.primary_field, item.secondary_field) == (username, passcode)
    if not accepted:
        assert outcome == {"established": False, "rejected": [(1, 1, 1)]}
        assert scp.accepted == []
        (_assoc, rj) = scp.rejected[0]
        assert (rj.result, rj.source, rj.reason) == (
            RejectResult.REJECTED_PERMANENT,
            RejectSource.SERVICE_USER,
            RejectReason.USER_NO_REASON,
        )
        return
    # A positive response was requested: for username + passcode it is an empty server
    # response (PS3.7 D.3.3.7.2), but the sub-item is there.
    assert outcome["established"]
    assert outcome["identity_response"] == b""
    assert outcome["echo"] == 0x0000
    # pynetdicom invokes at most 5 on us (we allow 16), we at most 3 on it
    assert outcome["window"] == (5, 3)
    (assoc,) = scp.accepted
    assert assoc.negotiated is not None
    assert assoc.negotiated.max_operations_performed == 5
    assert assoc.negotiated.max_operations_invoked == 3
    assert assoc.negotiated.user_identity is not None


@pytest.mark.parametrize("we_allow_scu", [False, True], ids=["acceptor-scp-only", "both-roles"])
async def test_pynetdicom_role_selection_for_storage(
    our_scp_factory: Any, we_allow_scu: bool
) -> None:
    syntaxes = [uids.EXPLICIT_VR_LITTLE_ENDIAN, uids.IMPLICIT_VR_LITTLE_ENDIAN]

    def run(port: int) -> dict[str, Any]:
        ae = _pynetdicom_ae((uids.CT_IMAGE_STORAGE, syntaxes))
        role = build_role(uids.CT_IMAGE_STORAGE, scu_role=True, scp_role=True)
        assoc = _associate(ae, port, ext_neg=[role])
        assert assoc.is_established
        try:
            (context,) = assoc.accepted_contexts
            return {
                "as_scu": context.as_scu,
                "as_scp": context.as_scp,
                "store": _status(assoc.send_c_store(dcmread(CT_SMALL))),
            }
        finally:
            assoc.release()

    config: dict[str, Any] = {}
    if we_allow_scu:
        config["supported_contexts"] = (
            SupportedContext(uids.CT_IMAGE_STORAGE, tuple(syntaxes), scu_role_allowed=True),
        )
    async with our_scp_factory(**config) as scp:
        with anyio.fail_after(TEST_TIMEOUT):
            outcome = await anyio.to_thread.run_sync(run, scp.port)
    # pynetdicom keeps its SCU role; it gets the SCP role only if we may act as SCU
    assert outcome == {"as_scu": True, "as_scp": we_allow_scu, "store": 0x0000}
    (ours,) = scp.accepted[0].accepted_contexts
    assert (ours.scp_role, ours.scu_role) == (True, we_allow_scu)
    assert_instances_match(scp.stored_paths(), [CT_SMALL])


async def test_pynetdicom_scp_only_role_for_commitment_gets_default_roles(
    our_scp_factory: Any,
) -> None:
    # build_role(uid, scp_role=True) proposes SCU=0, SCP=1; an AE that is Storage Commitment
    # SCP only cannot grant it: the default roles apply (no role answer, PS3.7 D.3.3.4), as
    # with DCMTK's and pynetdicom's own acceptors, and the context is usable for N-ACTION
    commitment = "1.2.840.10008.1.20.1"

    def run(port: int) -> dict[str, Any]:
        ae = _pynetdicom_ae(commitment)
        assoc = _associate(ae, port, ext_neg=[build_role(commitment, scp_role=True)])
        assert assoc.is_established
        try:
            (context,) = assoc.accepted_contexts
            return {"as_scu": context.as_scu, "as_scp": context.as_scp}
        finally:
            assoc.release()

    refused: list[Any] = []
    async with our_scp_factory(supported_contexts=storage_commitment_scp_supported()) as scp:
        scp.ae.hooks.add(
            HookEvent.ASSOCIATION_ACCEPTED, lambda event, assoc, **data: refused.append(data)
        )
        with anyio.fail_after(TEST_TIMEOUT):
            outcome = await anyio.to_thread.run_sync(run, scp.port)
    assert outcome == {"as_scu": True, "as_scp": False}
    assert refused == [{"refused": ()}]
    (ours,) = scp.accepted[0].negotiated.contexts
    assert (ours.scu_role, ours.scp_role) == (False, True)
    assert "default roles" in ours.reason


# --------------------------------------------------------------------------- 8. us -> pynetdicom


async def test_our_scu_echo_and_store_to_pynetdicom(
    pynetdicom_peer: PynetdicomSCP, sample_files: list[Path]
) -> None:
    files = [*sample_files, JPEG2000]
    contexts: list[Any] = [uids.VERIFICATION]
    for sop_class, syntaxes in _file_contexts(files).items():
        contexts.append((sop_class, syntaxes))
    with anyio.fail_after(TEST_TIMEOUT):
        async with AE("OURSCU").associate(
            pynetdicom_peer.host,
            pynetdicom_peer.port,
            called_aet=pynetdicom_peer.aet,
            contexts=contexts,
        ) as assoc:
            assert (await assoc.echo()).status == 0x0000
            # several stores on one association: paths, and a pydicom Dataset
            statuses = [(await assoc.store(p)).status for p in files[1:]]
            statuses.append((await assoc.store(dcmread(files[0]))).status)
            assert (await assoc.echo()).status == 0x0000
        assert assoc.released
    assert statuses == [0x0000] * len(files)
    received = pynetdicom_peer.received_files()
    assert_instances_match(received, files)
    jpeg = next(p for p in received if p.name == f"{_uid_of(JPEG2000)}.dcm")
    assert _transfer_syntax_of(jpeg) == _transfer_syntax_of(JPEG2000)


async def test_our_scu_concurrent_stores_to_pynetdicom(
    pynetdicom_peer: PynetdicomSCP, tmp_path: Path
) -> None:
    # pynetdicom answers no asynchronous operations window: 1 outstanding operation.  Our
    # concurrent store() calls must queue on the association instead of overrunning it.
    files = await anyio.to_thread.run_sync(write_ct_files, tmp_path / "ct", 6, 50_000)
    statuses: dict[Path, int] = {}
    with anyio.fail_after(TEST_TIMEOUT):
        async with AE("OURSCU").associate(
            pynetdicom_peer.host,
            pynetdicom_peer.port,
            called_aet=pynetdicom_peer.aet,
            contexts=[uids.CT_IMAGE_STORAGE],
            async_ops_window=(4, 1),
        ) as assoc:
            assert assoc.negotiated is not None
            assert assoc.negotiated.max_operations_invoked == 1

            async def store(path: Path) -> None:
                statuses[path] = (await assoc.store(path)).status

            async with anyio.create_task_group() as tg:
                for path in files:
                    tg.start_soon(store, path)
    assert statuses == {path: 0x0000 for path in files}
    assert_instances_match(pynetdicom_peer.received_files(), files)


# --------------------------------------------------------------------------- 9. rejected context


async def test_pynetdicom_rejects_unknown_abstract_syntax(
    pynetdicom_peer: PynetdicomSCP,
) -> None:
    unknown = "1.2.3.4.5"
    ds = Dataset()
    ds.SOPClassUID = unknown
    ds.SOPInstanceUID = "1.2.3.4.5.6"
    with anyio.fail_after(TEST_TIMEOUT):
        async with AE("OURSCU").associate(
            pynetdicom_peer.host,
            pynetdicom_peer.port,
            called_aet=pynetdicom_peer.aet,
            contexts=[uids.VERIFICATION, unknown],
        ) as assoc:
            assert [c.abstract_syntax for c in assoc.accepted_contexts] == [uids.VERIFICATION]
            assert assoc.negotiated is not None
            (refused,) = [c for c in assoc.negotiated.contexts if not c.accepted]
            assert refused.abstract_syntax == unknown
            assert refused.result == ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED
            with pytest.raises(NoAcceptedContext):
                await assoc.store(ds)
            with pytest.raises(NoAcceptedContext):
                await assoc.store(RLE)  # MR Image Storage was not proposed at all
            assert (await assoc.echo()).status == 0x0000
        assert assoc.released
    assert pynetdicom_peer.received_files() == []
