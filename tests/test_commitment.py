"""Storage Commitment Push Model (asyncdicom.services.commitment), both roles, both backends,
in memory (asyncdicom.testing.associated) and over sockets on 127.0.0.1: the report on the
requesting association and on a new one, committed and failed instances with their reasons, a
report that never comes, a report nobody awaits, many commitments in flight at once, bad
N-ACTION requests, and the SCP's fallback to a new association when the requestor left."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from asyncdicom import AE, HookEvent, presets, uids
from asyncdicom.protocol.negotiation import ContextRequest
from asyncdicom.services.commitment import (
    STORAGE_COMMITMENT,
    STORAGE_COMMITMENT_INSTANCE,
    CommitmentRefused,
    CommitmentSCP,
    CommitmentTimeout,
    awaiting_report,
    commitment_request,
)
from asyncdicom.testing import associated

pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("ignore::UserWarning")]

GUARD = 30.0
CT = uids.CT_IMAGE_STORAGE
MR = uids.MR_IMAGE_STORAGE
#: the context an SCP proposes to report on a new association (it is the SCP of the SOP class)
REPORTER = ContextRequest(
    STORAGE_COMMITMENT, (uids.EXPLICIT_VR_LITTLE_ENDIAN,), scu_role=False, scp_role=True
)


def instances(n: int, prefix: str = "1.2.826.0.1.3680043.10.1") -> list[tuple[str, str]]:
    return [(CT, f"{prefix}.{i}") for i in range(1, n + 1)]


def holding(stored: set[str]) -> Callable[[list[tuple[str, str]]], dict[str, int]]:
    """A ``check`` that commits the instances in ``stored`` (a plain function: a thread)."""

    def check(references: list[tuple[str, str]]) -> dict[str, int]:
        return {uid: 0x0112 for _cls, uid in references if uid not in stored}

    return check


def scp_ae(title: str = "COMMIT-SCP") -> AE:
    return AE(title, supported_contexts=presets.storage_commitment_scp_supported())


def scu_ae(title: str = "COMMIT-SCU", **config: Any) -> AE:
    """An SCU that also accepts reports on associations the SCP opens."""
    return AE(title, supported_contexts=presets.storage_commitment_scu_supported(), **config)


@asynccontextmanager
async def serving(ae: AE) -> AsyncIterator[int]:
    async with ae.server("127.0.0.1", 0) as server:
        yield server.port


# ------------------------------------------------------------------------- the report comes


async def test_same_association_three_committed_one_failed(anyio_backend: str) -> None:
    stored = instances(3)
    unknown = (CT, "1.2.826.0.1.3680043.10.99")
    ae = scp_ae()
    seen: list[str] = []
    scu = AE("COMMIT-SCU")
    scu.hooks.add(HookEvent.DIMSE_RECEIVED, lambda _e, _a, message: seen.append(message.NAME))
    known = holding({uid for _c, uid in stored})

    async def check(references: list[tuple[str, str]]) -> Mapping[str, int]:
        return known(references)  # at once: the report is ready before the response is sent

    with anyio.fail_after(GUARD):
        async with (
            CommitmentSCP(ae, check) as scp,
            associated(ae, scu, contexts=presets.STORAGE_COMMITMENT) as assoc,
        ):
            result = await assoc.commit([*stored, unknown], timeout=10)
    assert sorted(result.committed) == sorted(stored)
    assert result.failed == ((CT, unknown[1], 0x0112),)
    assert result.event_type == 2 and not result.ok
    assert result.reported_by == "COMMIT-SCP"
    assert scp.reports == [(result.transaction_uid, 2, "same")]
    # the report never overtakes the N-ACTION-RSP
    assert seen == ["N-ACTION-RSP", "N-EVENT-REPORT-RQ"]


async def test_all_committed_is_event_type_1(anyio_backend: str) -> None:
    stored = instances(2)
    ae = scp_ae()
    with anyio.fail_after(GUARD):
        async with (
            CommitmentSCP(ae, holding({uid for _c, uid in stored})),
            associated(ae, contexts=presets.STORAGE_COMMITMENT) as assoc,
        ):
            result = await assoc.commit(stored, timeout=10)
    assert result.ok and result.event_type == 1
    assert sorted(result.committed) == sorted(stored) and result.failed == ()


async def test_datasets_and_files_are_instances(anyio_backend: str, tmp_path: Any) -> None:
    from asyncdicom.storage.synthetic import make_ct_instance

    ds = make_ct_instance(16)
    on_disk = make_ct_instance(16)
    path = tmp_path / "one.dcm"
    on_disk.save_as(path, enforce_file_format=True)
    ae = scp_ae()
    with anyio.fail_after(GUARD):
        async with (
            CommitmentSCP(ae, holding({str(ds.SOPInstanceUID)})),
            associated(ae, contexts=presets.STORAGE_COMMITMENT) as assoc,
        ):
            result = await assoc.commit([ds, path], timeout=10)
    assert result.committed == ((str(ds.SOPClassUID), str(ds.SOPInstanceUID)),)
    assert result.failed == ((str(on_disk.SOPClassUID), str(on_disk.SOPInstanceUID), 0x0112),)


async def test_report_on_a_new_association(anyio_backend: str) -> None:
    stored = instances(3)
    unknown = (MR, "1.2.826.0.1.3680043.10.98")
    scu = scu_ae()
    ae = scp_ae()
    with anyio.fail_after(GUARD):
        async with serving(scu) as scu_port, serving(ae) as scp_port:
            async with CommitmentSCP(
                ae,
                holding({uid for _c, uid in stored}),
                peers={"COMMIT-SCU": ("127.0.0.1", scu_port)},
                always_new_association=True,
            ) as scp:
                async with scu.associate(
                    "127.0.0.1", scp_port, called_aet="COMMIT-SCP",
                    contexts=presets.STORAGE_COMMITMENT,
                ) as assoc:  # fmt: skip
                    result = await assoc.commit([*stored, unknown], timeout=10)
    assert sorted(result.committed) == sorted(stored)
    assert result.failed == ((MR, unknown[1], 0x0112),)
    assert scp.reports == [(result.transaction_uid, 2, "new")]
    assert result.reported_by == "COMMIT-SCP"


async def test_the_report_association_calls_the_requestor_by_its_ae_title(
    anyio_backend: str,
) -> None:
    """The new association of a report has the requestor's AE title as Called AE Title (the
    key of ``peers``) and the SCP's own as Calling AE Title; a requestor that checks the
    called AE title accepts it."""
    titles: list[tuple[str, str]] = []
    scu = scu_ae("REQUESTOR", require_called_ae_title=True)
    scu.hooks.add(
        HookEvent.ASSOCIATION_ACCEPTED,
        lambda event, assoc, **_: titles.append((assoc.called_ae_title, assoc.calling_ae_title)),
    )
    ae = scp_ae()
    with anyio.fail_after(GUARD):
        async with serving(scu) as scu_port, serving(ae) as scp_port:
            async with CommitmentSCP(
                ae,
                holding(set()),
                peers={"REQUESTOR": ("127.0.0.1", scu_port)},
                always_new_association=True,
            ) as scp:
                async with scu.associate(
                    "127.0.0.1", scp_port, called_aet="COMMIT-SCP",
                    contexts=presets.STORAGE_COMMITMENT,
                ) as assoc:  # fmt: skip
                    result = await assoc.commit(instances(1), timeout=10)
    assert scp.reports == [(result.transaction_uid, 2, "new")]
    # (called, calling): the requestor's own association to the SCP, then the report's
    assert titles == [("COMMIT-SCP", "REQUESTOR"), ("REQUESTOR", "COMMIT-SCP")]


async def test_report_falls_back_to_a_new_association_after_release(anyio_backend: str) -> None:
    """The requestor releases before the SCP is done checking: the report goes on a new
    association to its configured address, and resolves the wait there."""
    released = anyio.Event()

    async def check(references: list[tuple[str, str]]) -> Mapping[str, int]:
        await released.wait()
        return {references[-1][1]: 0x0119}

    refs = instances(4)
    transaction = generate_uid()
    scu = scu_ae()
    ae = scp_ae()
    with anyio.fail_after(GUARD):
        async with serving(scu) as scu_port, serving(ae) as scp_port:
            async with CommitmentSCP(
                ae, check, peers={"COMMIT-SCU": ("127.0.0.1", scu_port)}
            ) as scp:
                with awaiting_report(scu, transaction) as pending:
                    async with scu.associate(
                        "127.0.0.1", scp_port, called_aet="COMMIT-SCP",
                        contexts=presets.STORAGE_COMMITMENT,
                    ) as assoc:  # fmt: skip
                        rsp = await assoc.n_action(
                            STORAGE_COMMITMENT,
                            STORAGE_COMMITMENT_INSTANCE,
                            1,
                            commitment_request(transaction, refs),
                        )
                        assert rsp.status == 0x0000
                    released.set()
                    result = await pending.wait(10)
    assert result.transaction_uid == transaction
    assert sorted(result.committed) == sorted(refs[:3])
    assert result.failed == ((CT, refs[3][1], 0x0119),)
    assert scp.reports == [(transaction, 2, "new")]


async def test_a_report_the_requestor_refuses_is_not_sent_again(anyio_backend: str) -> None:
    """A report answered with a failure status (here 0x0115: nobody awaits the Transaction UID)
    was delivered: it does not go again on a new association."""
    scu = scu_ae()
    incoming: list[str] = []
    scu.hooks.add(
        HookEvent.ASSOCIATION_ACCEPTED,
        lambda _e, a, **_: a.role.name == "ACCEPTOR" and incoming.append(a.peer_ae_title),
    )
    ae = scp_ae()
    transaction = generate_uid()
    with anyio.fail_after(GUARD):
        async with serving(scu) as scu_port, serving(ae) as scp_port:
            async with scu.associate(
                "127.0.0.1", scp_port, called_aet="COMMIT-SCP",
                contexts=presets.STORAGE_COMMITMENT,
            ) as assoc:  # fmt: skip
                async with CommitmentSCP(
                    ae, holding(set()), peers={"COMMIT-SCU": ("127.0.0.1", scu_port)}
                ) as scp:
                    rsp = await assoc.n_action(
                        STORAGE_COMMITMENT,
                        STORAGE_COMMITMENT_INSTANCE,
                        1,
                        commitment_request(transaction, instances(1)),
                    )
                # (leaving the CommitmentSCP waited for its report to end)
                assert assoc.is_established
    assert rsp.status == 0x0000
    assert scp.reports == [(transaction, 2, "same")]
    assert scp.undelivered == []
    assert incoming == []


async def test_requestor_gone_without_a_peer_address_is_logged_not_raised(
    anyio_backend: str,
) -> None:
    released = anyio.Event()

    async def check(references: list[tuple[str, str]]) -> Mapping[str, int]:
        await released.wait()
        return {}

    transaction = generate_uid()
    ae = scp_ae()
    with anyio.fail_after(GUARD):
        async with CommitmentSCP(ae, check) as scp:
            async with associated(ae, contexts=presets.STORAGE_COMMITMENT) as assoc:
                rsp = await assoc.n_action(
                    STORAGE_COMMITMENT,
                    STORAGE_COMMITMENT_INSTANCE,
                    1,
                    commitment_request(transaction, instances(1)),
                )
                assert rsp.status == 0x0000
            released.set()
    assert scp.reports == []
    assert len(scp.undelivered) == 1 and scp.undelivered[0][0] == transaction
    assert "address is unknown" in scp.undelivered[0][1]


# ------------------------------------------------------------------------- no report


async def test_timeout_is_quick_and_the_association_stays_usable(anyio_backend: str) -> None:
    gate = anyio.Event()
    calls: list[int] = []

    async def check(references: list[tuple[str, str]]) -> Mapping[str, int]:
        calls.append(len(references))
        if len(calls) == 1:
            await gate.wait()  # the first request is never answered in time
        return {}

    ae = scp_ae()  # (Verification is accepted by default)
    with anyio.fail_after(GUARD):
        async with (
            CommitmentSCP(ae, check) as scp,
            associated(ae, contexts=[*presets.STORAGE_COMMITMENT, uids.VERIFICATION]) as assoc,
        ):
            started = anyio.current_time()
            with pytest.raises(CommitmentTimeout) as caught:
                await assoc.commit(instances(2), timeout=0.3)
            assert anyio.current_time() - started < 5.0
            assert isinstance(caught.value, TimeoutError)
            assert "no storage commitment report" in str(caught.value)
            assert (await assoc.echo()).status == 0x0000
            second = await assoc.commit(instances(1), timeout=10)
            assert second.ok
            gate.set()  # the late report of the first: nobody awaits it any more
    assert second.transaction_uid != caught.value.transaction_uid
    assert (second.transaction_uid, 1, "same") in scp.reports


async def test_refused_request_raises(anyio_backend: str) -> None:
    ae = scp_ae()  # accepts the SOP class, but runs no CommitmentSCP
    with anyio.fail_after(GUARD):
        async with associated(ae, contexts=presets.STORAGE_COMMITMENT) as assoc:
            with pytest.raises(CommitmentRefused) as caught:
                await assoc.commit(instances(1), timeout=10)
    assert caught.value.response.status == 0x0110


# ------------------------------------------------------------------------- reports nobody awaits


async def test_unknown_transaction_uid_is_0115_and_resolves_nobody_else(
    anyio_backend: str,
) -> None:
    gate = anyio.Event()
    checking = anyio.Event()

    async def check(references: list[tuple[str, str]]) -> Mapping[str, int]:
        checking.set()
        await gate.wait()
        return {}

    scu = scu_ae()
    ae = scp_ae()
    rogue = AE("ROGUE")
    waiting: list[Any] = []

    async def waiter(assoc: Any) -> None:
        waiting.append(await assoc.commit(instances(2), timeout=10))

    with anyio.fail_after(GUARD):
        async with (
            CommitmentSCP(ae, check),
            associated(ae, scu, contexts=presets.STORAGE_COMMITMENT) as assoc,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(waiter, assoc)
            await checking.wait()  # the request is with the SCP: its report is awaited
            (awaited,) = scu.commitments.expected()
            async with associated(scu, rogue, contexts=[REPORTER]) as report_assoc:
                info = commitment_request(generate_uid(), instances(1))
                unknown = await report_assoc.n_event_report(
                    STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE, 1, info
                )
                no_uid = await report_assoc.n_event_report(
                    STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE, 1, Dataset()
                )
                bad_event = await report_assoc.n_event_report(
                    STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE, 7, info
                )
            assert waiting == []  # nobody else's wait was resolved
            assert scu.commitments.expected() == {awaited}
            gate.set()
    assert unknown.status == 0x0115
    assert no_uid.status == 0x0115
    assert bad_event.status == 0x0113
    (result,) = waiting
    assert result.ok and len(result.committed) == 2
    assert ("storage-commitment", result.transaction_uid) == awaited


# ------------------------------------------------------------------------- many in flight


def _own(result: Any, refs: list[tuple[str, str]], odd: set[str]) -> None:
    """``result`` is the answer to ``refs``: the odd ones failed, the others committed."""
    assert sorted(result.committed) == sorted(r for r in refs if r[1] not in odd)
    assert sorted(result.failed) == sorted((c, i, 0x0112) for c, i in refs if i in odd)


async def test_a_hundred_commitments_on_several_associations(anyio_backend: str) -> None:
    every = [instances(3, f"1.2.826.0.1.3680043.10.{n}") for n in range(100)]
    odd = {refs[n % 3][1] for n, refs in enumerate(every)}
    stored = {uid for refs in every for _c, uid in refs} - odd
    ae = scp_ae()
    scu = AE("COMMIT-SCU")
    results: dict[int, Any] = {}

    async def one_association(first: int) -> None:
        async with associated(ae, scu, contexts=presets.STORAGE_COMMITMENT) as assoc:
            async with anyio.create_task_group() as tg:
                for n in range(first, first + 10):
                    tg.start_soon(commit, assoc, n)

    async def commit(assoc: Any, n: int) -> None:
        results[n] = await assoc.commit(every[n], timeout=20)

    with anyio.fail_after(GUARD * 2):
        async with CommitmentSCP(ae, holding(stored)), anyio.create_task_group() as tg:
            for first in range(0, 100, 10):
                tg.start_soon(one_association, first)
    assert sorted(results) == list(range(100))
    assert len({r.transaction_uid for r in results.values()}) == 100
    for n, result in results.items():
        _own(result, every[n], odd)


async def test_a_hundred_commitments_on_one_association(anyio_backend: str) -> None:
    every = [instances(2, f"1.2.826.0.1.3680043.11.{n}") for n in range(100)]
    odd = {refs[1][1] for n, refs in enumerate(every) if n % 2}
    stored = {uid for refs in every for _c, uid in refs} - odd
    ae = scp_ae()
    results: dict[int, Any] = {}

    async def commit(assoc: Any, n: int) -> None:
        results[n] = await assoc.commit(every[n], timeout=20)

    with anyio.fail_after(GUARD * 2):
        async with (
            CommitmentSCP(ae, holding(stored)),
            associated(ae, contexts=presets.STORAGE_COMMITMENT, async_ops_window=(16, 16)) as assoc,
        ):
            assert assoc.negotiated is not None
            assert assoc.negotiated.max_operations_invoked == 16
            async with anyio.create_task_group() as tg:
                for n in range(100):
                    tg.start_soon(commit, assoc, n)
    assert sorted(results) == list(range(100))
    for n, result in results.items():
        _own(result, every[n], odd)


async def test_many_reports_on_new_associations(anyio_backend: str) -> None:
    every = [instances(2, f"1.2.826.0.1.3680043.12.{n}") for n in range(20)]
    odd = {refs[0][1] for refs in every[::2]}
    stored = {uid for refs in every for _c, uid in refs} - odd
    scu = scu_ae()
    ae = scp_ae()
    results: dict[int, Any] = {}

    async def commit(assoc: Any, n: int) -> None:
        results[n] = await assoc.commit(every[n], timeout=20)

    with anyio.fail_after(GUARD * 2):
        async with serving(scu) as scu_port, serving(ae) as scp_port:
            async with CommitmentSCP(
                ae, holding(stored), peers={"COMMIT-SCU": ("127.0.0.1", scu_port)},
                always_new_association=True,
            ) as scp:  # fmt: skip
                async with scu.associate(
                    "127.0.0.1", scp_port, called_aet="COMMIT-SCP",
                    contexts=presets.STORAGE_COMMITMENT, async_ops_window=(8, 8),
                ) as assoc, anyio.create_task_group() as tg:  # fmt: skip
                    for n in range(len(every)):
                        tg.start_soon(commit, assoc, n)
    assert sorted(results) == list(range(len(every)))
    for n, result in results.items():
        _own(result, every[n], odd)
    assert {how for _t, _e, how in scp.reports} == {"new"}


# ------------------------------------------------------------------------- bad requests


def _information(**fields: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in fields.items():
        setattr(ds, keyword, value)
    return ds


def _item(sop_class: str, sop_instance: str) -> Dataset:
    return _information(ReferencedSOPClassUID=sop_class, ReferencedSOPInstanceUID=sop_instance)


@pytest.mark.parametrize(
    ("action_type", "information", "status"),
    [
        (2, commitment_request("1.2.3", instances(1)), 0x0123),
        (1, None, 0x0115),
        (1, _information(ReferencedSOPSequence=[_item(CT, "1.2.3.4")]), 0x0115),
        (1, _information(TransactionUID="1.2.3", ReferencedSOPSequence=[]), 0x0115),
        (1, _information(TransactionUID="1.2.3"), 0x0115),
        (1, _information(TransactionUID="1.2.3", ReferencedSOPSequence=[_item(CT, "")]), 0x0115),
        (1, b"\x08\x00\x95\x11\xff\xff\xff\x7f", 0x0115),
    ],
    ids=[
        "action-type-2",
        "no-information",
        "no-transaction",
        "empty-sequence",
        "no-sequence",
        "empty-instance",
        "undecodable",
    ],
)
async def test_bad_requests_are_refused(
    anyio_backend: str, action_type: int, information: Any, status: int
) -> None:
    ae = scp_ae()
    with anyio.fail_after(GUARD):
        async with (
            CommitmentSCP(ae, holding(set())) as scp,
            associated(ae, contexts=presets.STORAGE_COMMITMENT) as assoc,
        ):
            rsp = await assoc.n_action(
                STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE, action_type, information
            )
            # the association is fine afterwards
            good = await assoc.commit(instances(1), timeout=10)
    assert rsp.status == status, rsp
    assert good.failed and scp.reports == [(good.transaction_uid, 2, "same")]


async def test_a_check_that_raises_fails_every_instance(anyio_backend: str) -> None:
    def check(references: list[tuple[str, str]]) -> dict[str, int]:
        raise RuntimeError("the disk is on fire")

    ae = scp_ae()
    refs = instances(2)
    with anyio.fail_after(GUARD):
        async with (
            CommitmentSCP(ae, check),
            associated(ae, contexts=presets.STORAGE_COMMITMENT) as assoc,
        ):
            result = await assoc.commit(refs, timeout=10)
    assert sorted(result.failed) == sorted((c, i, 0x0110) for c, i in refs)


async def test_an_empty_request_is_a_value_error(anyio_backend: str) -> None:
    ae = scp_ae()
    with anyio.fail_after(GUARD):
        async with (
            CommitmentSCP(ae, holding(set())) as scp,
            associated(ae, contexts=presets.STORAGE_COMMITMENT) as assoc,
        ):
            with pytest.raises(ValueError, match="no instances"):
                await assoc.commit([], timeout=1)
    assert scp.reports == []
