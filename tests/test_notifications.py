"""N-EVENT-REPORTs nobody awaits as an async stream (``AE.notifications()``), both backends:
a storage commitment report of an unknown Transaction UID and a print job event reach streams
filtered by SOP class and event type; what no stream takes is answered as without streams; a
report a task awaits still goes to it."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from asyncdicom import AE, presets, uids
from asyncdicom.config import SupportedContext
from asyncdicom.protocol.negotiation import ContextRequest
from asyncdicom.services.commitment import (
    STORAGE_COMMITMENT,
    STORAGE_COMMITMENT_INSTANCE,
    awaiting_report,
    commitment_request,
)
from asyncdicom.testing import associated

pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("ignore::UserWarning")]

GUARD = 30.0
CT = uids.CT_IMAGE_STORAGE
#: Print Job SOP Class (PS3.4 H.4.4): its SCP reports the job's status with N-EVENT-REPORT
PRINT_JOB = "1.2.840.10008.5.1.1.14"
TS = (uids.EXPLICIT_VR_LITTLE_ENDIAN,)
#: the contexts of a peer that sends reports (it is the SCP of the SOP class)
REPORTERS = [
    ContextRequest(STORAGE_COMMITMENT, TS, scu_role=False, scp_role=True),
    ContextRequest(PRINT_JOB, TS, scu_role=False, scp_role=True),
]


def receiver() -> AE:
    """An AE that accepts reports for both SOP classes (as their SCU)."""
    return AE(
        "RECEIVER",
        supported_contexts=(
            *presets.storage_commitment_scu_supported(),
            SupportedContext(PRINT_JOB, TS, scu_role_allowed=True, scp_role_allowed=False),
        ),
    )


def job_status(status: str) -> Dataset:
    ds = Dataset()
    ds.ExecutionStatus = status
    return ds


async def report(assoc: Any, kind: str, event_type: int, info: Dataset) -> Any:
    if kind == "commitment":
        return await assoc.n_event_report(
            STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE, event_type, info
        )
    return await assoc.n_event_report(PRINT_JOB, "1.2.3.4.5", event_type, info)


async def test_reports_nobody_awaits_reach_filtered_streams(anyio_backend: str) -> None:
    ae = receiver()
    unknown = commitment_request(generate_uid(), [(CT, "1.2.826.0.1.3680043.10.7")])
    with anyio.fail_after(GUARD):
        async with associated(ae, AE("PRINTER"), contexts=REPORTERS) as assoc:
            # without streams: as before (0x0115 nobody awaits it; the print job: no handler)
            before_commit = await report(assoc, "commitment", 1, unknown)
            before_print = await report(assoc, "print", 3, job_status("DONE"))
            async with (
                ae.notifications(sop_class=STORAGE_COMMITMENT) as commitments,
                ae.notifications(sop_class=PRINT_JOB, event_type=3) as done_jobs,
            ):
                commit_rsp = await report(assoc, "commitment", 1, unknown)
                print_rsp = await report(assoc, "print", 3, job_status("DONE"))
                # an event type the print stream does not take: answered as without it
                other_rsp = await report(assoc, "print", 2, job_status("PRINTING"))
                got_commit = await commitments.__anext__()
                got_print = await done_jobs.__anext__()
            after = await report(assoc, "commitment", 1, unknown)
    assert before_commit.status == 0x0115
    assert before_print.status != 0
    assert commit_rsp.status == 0 and print_rsp.status == 0
    assert other_rsp.status == before_print.status
    assert after.status == before_commit.status  # closed: as before again
    assert got_commit.sop_class_uid == STORAGE_COMMITMENT
    assert got_commit.event_type_id == 1
    assert got_commit.calling_ae_title == "PRINTER"
    assert got_commit.result.transaction_uid == unknown.TransactionUID
    assert got_commit.result.committed == ((CT, "1.2.826.0.1.3680043.10.7"),)
    assert got_print.sop_class_uid == PRINT_JOB and got_print.event_type_id == 3
    assert got_print.sop_instance_uid == "1.2.3.4.5"
    assert got_print.information is not None
    assert got_print.information.ExecutionStatus == "DONE"


async def test_an_awaited_report_still_goes_to_its_task(anyio_backend: str) -> None:
    ae = receiver()
    transaction = generate_uid()
    info = commitment_request(transaction, [(CT, "1.2.826.0.1.3680043.10.8")])
    with anyio.fail_after(GUARD):
        async with (
            ae.notifications() as stream,
            associated(ae, AE("COMMIT-SCP"), contexts=REPORTERS) as assoc,
        ):
            with awaiting_report(ae, transaction) as pending:
                rsp = await report(assoc, "commitment", 1, info)
                result = await pending.wait(5)
            other = commitment_request(generate_uid(), [(CT, "1.2.3")])
            assert (await report(assoc, "commitment", 1, other)).status == 0
            got = await stream.__anext__()
    assert rsp.status == 0 and result.transaction_uid == transaction
    # the stream got only the one nobody awaited
    assert got.result.transaction_uid == other.TransactionUID


async def test_report_without_event_information(anyio_backend: str) -> None:
    ae = receiver()
    with anyio.fail_after(GUARD):
        async with (
            ae.notifications(sop_class=PRINT_JOB) as stream,
            associated(ae, AE("PRINTER"), contexts=REPORTERS) as assoc,
        ):
            rsp = await assoc.n_event_report(PRINT_JOB, "1.2.3.4.6", 1)
            got = await stream.__anext__()
    assert rsp.status == 0
    assert got.information is None and got.event_type_id == 1


async def test_a_full_stream_answers_as_without_it_after_its_timeout(anyio_backend: str) -> None:
    ae = receiver()
    first = commitment_request(generate_uid(), [(CT, "1.2.3.1")])
    second = commitment_request(generate_uid(), [(CT, "1.2.3.2")])
    third = commitment_request(generate_uid(), [(CT, "1.2.3.3")])
    with anyio.fail_after(GUARD):
        async with (
            ae.notifications(max_queued=1, timeout=0.5) as stream,
            associated(ae, AE("COMMIT-SCP"), contexts=REPORTERS) as assoc,
        ):
            taken = await report(assoc, "commitment", 1, first)
            refused = await report(assoc, "commitment", 1, second)  # full, nobody reads
            answers = []
            async with anyio.create_task_group() as tg:

                async def send_third() -> None:
                    answers.append(await report(assoc, "commitment", 1, third))

                tg.start_soon(send_third)  # full again: waits until the first is read
                got = [await stream.__anext__()]
                got.append(await stream.__anext__())
            (waited,) = answers
    assert (taken.status, refused.status, waited.status) == (0, 0x0115, 0)
    assert [g.result.transaction_uid for g in got] == [
        first.TransactionUID,
        third.TransactionUID,
    ]


async def wait_queued(stream: Any, count: int) -> None:
    """Until ``count`` reports wait in the stream (the reporter's task has queued them)."""
    while stream.queued < count:
        await anyio.sleep(0.005)


async def test_taken_answers_success_once_the_consumer_has_the_report(
    anyio_backend: str,
) -> None:
    ae = receiver()
    info = commitment_request(generate_uid(), [(CT, "1.2.3.7")])
    answers: list[Any] = []
    with anyio.fail_after(GUARD):
        async with (
            ae.notifications(answer="taken") as stream,
            associated(ae, AE("COMMIT-SCP"), contexts=REPORTERS) as assoc,
            anyio.create_task_group() as tg,
        ):

            async def send() -> None:
                answers.append(await report(assoc, "commitment", 1, info))

            tg.start_soon(send)
            await wait_queued(stream, 1)
            assert answers == []  # queued, not taken: the reporter still waits
            got = await stream.__anext__()
    (answer,) = answers
    assert answer.status == 0
    assert got.result.transaction_uid == info.TransactionUID


async def test_taken_a_report_left_in_a_closed_stream_is_answered_as_without_it(
    anyio_backend: str,
) -> None:
    ae = receiver()
    info = commitment_request(generate_uid(), [(CT, "1.2.3.8")])
    answers: list[Any] = []
    with anyio.fail_after(GUARD):
        async with associated(ae, AE("COMMIT-SCP"), contexts=REPORTERS) as assoc:
            async with anyio.create_task_group() as tg:
                stream = ae.notifications(answer="taken")
                async with stream:

                    async def send() -> None:
                        answers.append(await report(assoc, "commitment", 1, info))

                    tg.start_soon(send)
                    await wait_queued(stream, 1)
                # closed with the report unread: not Success, as with no stream at all
            without = await report(assoc, "commitment", 1, info)
    (answer,) = answers
    assert without.status == 0x0115  # the service's answer to an unknown transaction
    assert answer.status == without.status


async def test_taken_a_report_not_taken_in_time_is_withdrawn(anyio_backend: str) -> None:
    ae = receiver()
    late = commitment_request(generate_uid(), [(CT, "1.2.3.9")])
    later = commitment_request(generate_uid(), [(CT, "1.2.3.10")])
    answers: list[Any] = []
    with anyio.fail_after(GUARD):
        async with (
            ae.notifications(answer="taken", timeout=0.3) as stream,
            associated(ae, AE("COMMIT-SCP"), contexts=REPORTERS) as assoc,
        ):
            timed_out = await report(assoc, "commitment", 1, late)  # nobody reads in time
            async with anyio.create_task_group() as tg:

                async def send() -> None:
                    answers.append(await report(assoc, "commitment", 1, later))

                tg.start_soon(send)
                got = await stream.__anext__()  # skips the withdrawn one
    assert timed_out.status == 0x0115
    assert [a.status for a in answers] == [0]
    assert got.result.transaction_uid == later.TransactionUID


def test_an_unknown_answer_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="answer must be one of"):
        receiver().notifications(answer="saved")  # type: ignore[arg-type]
