"""Incoming instances as an async stream (asyncdicom.inbox via ``AE.inbox()``), both backends:
the identity and command fields of each instance, the filters (calling AE, called AE, SOP
class, study) with the AE's handler serving what no inbox claims, both answer modes, the
timeouts (ours and the sender's), closing while stores are pending, a consumer that raises
(what was acknowledged is on disk), and 100 instances from DCMTK storescu to a slow consumer."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from asyncdicom import AE, uids
from asyncdicom.errors import AssociationError
from asyncdicom.inbox import IncomingInstance
from asyncdicom.protocol.pdu import UserIdentityRQSubItem
from asyncdicom.storage.synthetic import make_ct_instance, write_ct_files

pytestmark = pytest.mark.anyio

GUARD = 60.0
CT = uids.CT_IMAGE_STORAGE
MR = uids.MR_IMAGE_STORAGE


def ct(size: int = 2048, *, study: str | None = None) -> Dataset:
    return make_ct_instance(size, study_instance_uid=study)


def mr(size: int = 2048) -> Dataset:
    ds = make_ct_instance(size)
    ds.SOPClassUID = MR
    ds.file_meta.MediaStorageSOPClassUID = MR
    return ds


@asynccontextmanager
async def serving(ae: AE) -> AsyncIterator[int]:
    async with ae.server("127.0.0.1", 0) as server:
        yield server.port


def spooled(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.dcm"))


def staged(folder: Path) -> list[Path]:
    return sorted((folder / ".incoming").iterdir())


# ------------------------------------------------------------------------- fields and files


async def test_identity_and_command_fields(anyio_backend: str, tmp_path: Path) -> None:
    scp = AE("INBOX-SCP", accept_any_storage=True)
    sender = AE("SENDER")
    identity = UserIdentityRQSubItem(
        identity_type=1, positive_response_requested=0, primary_field=b"alice", secondary_field=b""
    )
    datasets = [ct(), ct()]
    got: list[IncomingInstance] = []
    decoded: list[Dataset] = []
    existed: list[bool] = []
    statuses: list[int] = []
    spool = tmp_path / "spool"
    with anyio.fail_after(GUARD):
        async with serving(scp) as port, scp.inbox(spool) as inbox:

            async def send() -> None:
                async with sender.associate(
                    "127.0.0.1",
                    port,
                    called_aet="INBOX-SCP",
                    contexts=[CT],
                    user_identity=identity,
                ) as assoc:
                    statuses.append((await assoc.store(datasets[0])).status)
                    rsp = await assoc.store(
                        datasets[1], move_originator_aet="MOVER", move_originator_message_id=7
                    )
                    statuses.append(rsp.status)

            async with anyio.create_task_group() as tg:
                tg.start_soon(send)
                async for item in inbox:
                    existed.append(item.path.exists() and item.path.parent == spool)
                    decoded.append(await item.dataset())
                    got.append(item)
                    if len(got) == 2:
                        break
    assert statuses == [0, 0]
    first, second = got
    for item, ds in zip(got, datasets, strict=True):
        assert item.sop_instance_uid == ds.SOPInstanceUID
        assert item.sop_class_uid == CT
        assert item.calling_ae_title == "SENDER"
        assert item.called_ae_title == "INBOX-SCP"
        assert item.peer_host == "127.0.0.1" and item.peer_port > 0
        assert item.user == "alice"
        assert item.user_identity is not None and item.user_identity.primary_field == b"alice"
        assert not item.recovered
    assert decoded[1].SOPInstanceUID == datasets[1].SOPInstanceUID
    assert decoded[1].PixelData == datasets[1].PixelData
    assert (first.move_originator_aet, first.move_originator_message_id) == (None, None)
    assert (second.move_originator_aet, second.move_originator_message_id) == ("MOVER", 7)
    assert second.message_id != first.message_id
    assert existed == [True, True]
    # finished: the files left the spool, nothing staged remains
    assert spooled(spool) == [] and staged(spool) == []


async def test_move_to_keeps_the_file(anyio_backend: str, tmp_path: Path) -> None:
    scp = AE("INBOX-SCP", accept_any_storage=True)
    ds = ct()
    kept = tmp_path / "kept"
    with anyio.fail_after(GUARD):
        async with serving(scp) as port, scp.inbox(tmp_path / "spool") as inbox:
            async with AE("SENDER").associate("127.0.0.1", port, contexts=[CT]) as assoc:
                assert (await assoc.store(ds)).status == 0
            async for item in inbox:
                path = await item.move_to(kept)
                break
    assert path == kept / f"{ds.SOPInstanceUID}.dcm" and path.exists()
    assert spooled(tmp_path / "spool") == []


# ------------------------------------------------------------------------- filters


async def test_filters_and_the_handler_for_the_rest(anyio_backend: str, tmp_path: Path) -> None:
    scp = AE("INBOX-SCP", accept_any_storage=True)
    handled: list[str] = []

    @scp.on_store
    async def on_store(request: Any) -> int:
        path = await request.save_to(tmp_path / "handler")
        handled.append(path.stem)
        return 0

    study = generate_uid()
    by_calling, by_class, by_study, rest = ct(), mr(), ct(200_000, study=study), ct()
    other_study = ct(200_000)
    results: dict[str, list[str]] = {}
    with anyio.fail_after(GUARD):
        async with (
            serving(scp) as port,
            scp.inbox(tmp_path / "a", calling_ae="MODALITY-A") as a,
            scp.inbox(tmp_path / "mr", sop_class=[MR]) as mr_inbox,
            scp.inbox(tmp_path / "s", study=study, called_ae="INBOX-SCP") as s,
        ):
            async with AE("MODALITY-A").associate(
                "127.0.0.1", port, called_aet="INBOX-SCP", contexts=[CT, MR]
            ) as assoc:
                assert (await assoc.store(by_calling)).status == 0
            async with AE("MODALITY-B").associate(
                "127.0.0.1", port, called_aet="INBOX-SCP", contexts=[CT, MR]
            ) as assoc:
                for ds in (by_class, by_study, other_study, rest):
                    assert (await assoc.store(ds)).status == 0
            async with AE("MODALITY-B").associate(
                "127.0.0.1", port, called_aet="OTHER", contexts=[CT]
            ) as assoc:
                other_called = ct(200_000, study=study)  # study matches, called AE does not
                assert (await assoc.store(other_called)).status == 0
            for name, inbox in (("a", a), ("mr", mr_inbox), ("s", s)):
                results[name] = [i.sop_instance_uid for i in await _queued(inbox)]
    assert results["a"] == [by_calling.SOPInstanceUID]
    assert results["mr"] == [by_class.SOPInstanceUID]
    assert results["s"] == [by_study.SOPInstanceUID]
    assert sorted(handled) == sorted(
        [other_study.SOPInstanceUID, rest.SOPInstanceUID, other_called.SOPInstanceUID]
    )
    # what the handler saved after the inbox read the head of the data set is whole
    from pydicom import dcmread

    saved = dcmread(tmp_path / "handler" / f"{other_study.SOPInstanceUID}.dcm")
    assert saved.PixelData == other_study.PixelData
    assert saved.StudyInstanceUID == other_study.StudyInstanceUID


@pytest.mark.parametrize(
    "syntax", [uids.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, uids.IMPLICIT_VR_LITTLE_ENDIAN]
)
async def test_the_study_filter_reads_every_transfer_syntax(tmp_path: Path, syntax: str) -> None:
    """The study filter finds the Study Instance UID in a deflated data set too (it was never
    found there, so such instances never matched), and in one cut into many small PDUs."""
    from asyncdicom import ContextRequest

    # small PDUs: the head of the data set comes in many fragments
    scp = AE("INBOX-SCP", accept_any_storage=True, max_pdu_length=4096)
    handled: list[str] = []

    @scp.on_store
    async def on_store(request: Any) -> int:
        await request.discard()
        handled.append(request.message.affected_sop_instance_uid)
        return 0

    study = generate_uid()
    mine, other = ct(20_000, study=study), ct(20_000)
    with anyio.fail_after(GUARD):
        async with serving(scp) as port, scp.inbox(tmp_path / "s", study=study) as inbox:
            async with AE("MODALITY").associate(
                "127.0.0.1", port, called_aet="INBOX-SCP", contexts=[ContextRequest(CT, (syntax,))]
            ) as assoc:
                assert assoc.accepted_contexts[0].transfer_syntax == syntax
                for ds in (mine, other):
                    # a file in that syntax, sent as it is (pydicom deflates when saving)
                    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
                    ds.file_meta.TransferSyntaxUID = syntax
                    ds.save_as(path, implicit_vr=syntax == uids.IMPLICIT_VR_LITTLE_ENDIAN)
                    assert (await assoc.store(path)).status == 0
            queued = [i.sop_instance_uid for i in await _queued(inbox)]
    assert queued == [mine.SOPInstanceUID]
    assert handled == [other.SOPInstanceUID]


def _count_queued(inbox: Any, n: int) -> anyio.Event:
    """An event set once ``n`` records were queued (the queue's send_nowait, observed)."""
    reached = anyio.Event()
    send = inbox._send
    count = 0

    class Counting:
        def send_nowait(self, item: Any) -> None:
            nonlocal count
            send.send_nowait(item)
            count += 1
            if count >= n:
                reached.set()

        def close(self) -> None:
            send.close()

    inbox._send = Counting()
    return reached


async def _queued(inbox: Any) -> list[IncomingInstance]:
    """What is queued now (every store was answered: it is all there)."""
    return [await inbox.__anext__() for _ in range(inbox.queued)]


async def test_no_inbox_no_handler_answers_as_before(anyio_backend: str, tmp_path: Path) -> None:
    scp = AE("INBOX-SCP", accept_any_storage=True)
    with anyio.fail_after(GUARD):
        async with serving(scp) as port:
            async with AE("SENDER").associate("127.0.0.1", port, contexts=[CT]) as assoc:
                before = (await assoc.store(ct())).status
                async with scp.inbox(tmp_path / "spool", calling_ae="NOT-ME"):
                    during = (await assoc.store(ct())).status
    assert before == during == 0x0122  # no handler: SOP class not supported (PS3.4 B.2.3)


# ------------------------------------------------------------------------- answer modes


async def test_verdict_mode(anyio_backend: str, tmp_path: Path) -> None:
    scp = AE("INBOX-SCP", accept_any_storage=True)
    datasets = [ct(), ct(), ct()]
    spool = tmp_path / "spool"
    responses: list[Any] = []
    with anyio.fail_after(GUARD):
        async with serving(scp) as port, scp.inbox(spool, answer="verdict") as inbox:

            async def send() -> None:
                async with AE("SENDER").associate("127.0.0.1", port, contexts=[CT]) as assoc:
                    for ds in datasets:
                        responses.append(await assoc.store(ds))

            async with anyio.create_task_group() as tg:
                tg.start_soon(send)
                n = 0
                async for item in inbox:
                    n += 1
                    assert responses == [] or len(responses) == n - 1  # each waits for us
                    if n == 1:
                        pass  # finished by asking for the next one: Success
                    elif n == 2:
                        item.reject(0xA900, "not the data set we want")
                    else:
                        item.accept()
                        break
    assert [r.status for r in responses] == [0x0000, 0xA900, 0x0000]
    assert responses[1].message.error_comment == "not the data set we want"
    assert spooled(spool) == []


async def test_saved_mode_answers_before_the_consumer(anyio_backend: str, tmp_path: Path) -> None:
    scp = AE("INBOX-SCP", accept_any_storage=True)
    spool = tmp_path / "spool"
    with anyio.fail_after(GUARD):
        async with serving(scp) as port, scp.inbox(spool) as inbox:
            async with AE("SENDER").associate("127.0.0.1", port, contexts=[CT]) as assoc:
                for _ in range(3):
                    assert (await assoc.store(ct())).status == 0
            # all answered with nobody consuming yet: durably in the folder, queued
            assert len(spooled(spool)) == 3 and inbox.queued == 3
            assert 0 < inbox.queued_memory < 3 * 4096


# ------------------------------------------------------------------------- timeouts


async def test_full_queue_refuses_after_timeout(anyio_backend: str, tmp_path: Path) -> None:
    scp = AE("INBOX-SCP", accept_any_storage=True)
    spool = tmp_path / "spool"
    with anyio.fail_after(GUARD):
        async with (
            serving(scp) as port,
            scp.inbox(spool, max_queued=1, timeout=0.3) as inbox,
        ):
            async with AE("SENDER").associate("127.0.0.1", port, contexts=[CT]) as assoc:
                first = await assoc.store(ct())
                second = await assoc.store(ct())
            assert inbox.queued == 1
    assert first.status == 0
    assert second.status == 0xA700
    assert "busy" in (second.message.error_comment or "")
    assert len(spooled(spool)) == 1  # the refused one was not kept


async def test_full_queue_makes_the_answer_wait(anyio_backend: str, tmp_path: Path) -> None:
    scp = AE("INBOX-SCP", accept_any_storage=True)
    statuses: list[int] = []
    taken = 0
    with anyio.fail_after(GUARD):
        async with serving(scp) as port, scp.inbox(tmp_path / "spool", max_queued=1) as inbox:

            async def send() -> None:
                async with AE("SENDER").associate("127.0.0.1", port, contexts=[CT]) as assoc:
                    for _ in range(3):
                        statuses.append((await assoc.store(ct())).status)

            async with anyio.create_task_group() as tg:
                tg.start_soon(send)
                async for _item in inbox:
                    taken += 1
                    # the queue holds one: the sender cannot be more than two ahead
                    assert len(statuses) <= taken + 1
                    if taken == 3:
                        break
    assert statuses == [0, 0, 0]


async def test_verdict_not_given_in_time(anyio_backend: str, tmp_path: Path) -> None:
    scp = AE("INBOX-SCP", accept_any_storage=True)
    spool = tmp_path / "spool"
    with anyio.fail_after(GUARD):
        async with serving(scp) as port, scp.inbox(spool, answer="verdict", timeout=1.0) as inbox:
            async with AE("SENDER").associate("127.0.0.1", port, contexts=[CT]) as assoc:
                late = await assoc.store(ct())
                assert spooled(spool) == []
                on_time = ct()

                async def consume() -> None:
                    async for item in inbox:
                        item.accept()
                        break

                async with anyio.create_task_group() as tg:
                    tg.start_soon(consume)
                    answered = await assoc.store(on_time)
    assert late.status == 0xA700
    assert "did not answer" in (late.message.error_comment or "")
    assert answered.status == 0  # the expired one was skipped, not yielded


async def test_sender_times_out_first(anyio_backend: str, tmp_path: Path) -> None:
    """A consumer slower than the sender's DIMSE timeout: the sender aborts, the instance
    was not acknowledged and is not kept."""
    from asyncdicom.testing import memory_stream_pair

    scp = AE("INBOX-SCP", accept_any_storage=True)
    spool = tmp_path / "spool"
    client, server = memory_stream_pair()
    with anyio.fail_after(GUARD):
        async with scp.inbox(spool, answer="verdict", timeout=30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(scp.serve_stream, server)  # ends with the association's tasks
                sender = AE("SENDER", timeouts={"dimse": 0.3})
                with pytest.raises(AssociationError):
                    async with sender.associate_over(client, contexts=[CT]) as assoc:
                        await assoc.store(ct())
            assert spooled(spool) == [] and staged(spool) == []


async def test_an_instance_cut_short_leaves_nothing(anyio_backend: str, tmp_path: Path) -> None:
    from asyncdicom.protocol import messages
    from asyncdicom.storage.codec import encode_dataset
    from asyncdicom.testing import memory_stream_pair

    scp = AE("INBOX-SCP", accept_any_storage=True)
    spool = tmp_path / "spool"
    ds = ct(300_000)
    client, server = memory_stream_pair()

    class Cut(Exception):
        pass

    with anyio.fail_after(GUARD):
        async with scp.inbox(spool) as inbox:
            async with anyio.create_task_group() as tg:
                tg.start_soon(scp.serve_stream, server)  # ends with the association's tasks
                with pytest.raises(Cut):
                    async with AE("SENDER").associate_over(client, contexts=[CT]) as assoc:
                        context = assoc.find_context(CT, [uids.EXPLICIT_VR_LITTLE_ENDIAN])
                        assert context is not None
                        data = encode_dataset(ds, uids.EXPLICIT_VR_LITTLE_ENDIAN)

                        async def half() -> AsyncIterator[bytes]:
                            yield data[: len(data) // 2]
                            raise Cut

                        rq = messages.CStoreRQ(
                            message_id=assoc.next_message_id(),
                            affected_sop_class_uid=CT,
                            affected_sop_instance_uid=ds.SOPInstanceUID,
                            has_dataset=True,
                        )
                        await assoc.request(context, rq, half())
            assert inbox.queued == 0
    assert sorted(os.listdir(spool)) == [".inbox.lock", ".incoming"] and staged(spool) == []


# ------------------------------------------------------------------------- closing, failing


async def test_closing_with_stores_pending(anyio_backend: str, tmp_path: Path) -> None:
    scp = AE("INBOX-SCP", accept_any_storage=True)
    spool = tmp_path / "spool"
    responses: list[int] = []
    with anyio.fail_after(GUARD):
        async with serving(scp) as port:
            async with scp.inbox(spool, answer="verdict") as inbox:
                three = _count_queued(inbox, 3)

                async def send() -> None:
                    async with AE("SENDER").associate("127.0.0.1", port, contexts=[CT]) as assoc:
                        responses.append((await assoc.store(ct())).status)

                async with anyio.create_task_group() as tg:
                    for _ in range(3):
                        tg.start_soon(send)
                    await three.wait()
                    async for _item in inbox:
                        break  # the first is finished by leaving normally, two are pending
                    await inbox.aclose()
    assert sorted(responses) == [0x0000, 0xA700, 0xA700]
    assert spooled(spool) == []


async def test_saved_mode_closing_keeps_queued_for_the_next_inbox(
    anyio_backend: str, tmp_path: Path
) -> None:
    scp = AE("INBOX-SCP", accept_any_storage=True)
    spool = tmp_path / "spool"
    sent = [ct(), ct(), ct()]
    with anyio.fail_after(GUARD):
        async with serving(scp) as port:
            async with scp.inbox(spool):
                async with AE("SENDER").associate("127.0.0.1", port, contexts=[CT]) as assoc:
                    for ds in sent:
                        assert (await assoc.store(ds)).status == 0
            # a partial file of a killed process in the staging folder: never yielded
            (spool / ".incoming" / "cut.dcm").write_bytes(b"\0" * 10)
            again: list[IncomingInstance] = []
            async with scp.inbox(spool) as inbox:
                assert inbox.queued == 3
                async for item in inbox:
                    again.append(item)
                    if len(again) == 3:
                        break
    assert [i.sop_instance_uid for i in again] == [d.SOPInstanceUID for d in sent]
    assert all(i.recovered and i.calling_ae_title == "SENDER" for i in again)
    # the association's fields were kept with each file (the sender called the default title)
    fields = [(i.called_ae_title, i.peer_host) for i in again]
    assert fields == [("ANY-SCP", "127.0.0.1")] * 3
    assert [i.message_id for i in again] == [1, 2, 3]
    assert all(i.peer_port > 0 and i.move_originator_aet is None for i in again)
    assert spooled(spool) == [] and staged(spool) == []


def test_a_file_without_kept_fields_is_recovered_from_its_meta(tmp_path: Path) -> None:
    """A file put in the folder by someone else, or one whose kept fields are damaged: its
    Source AE Title, nothing else, and never a crash."""
    from asyncdicom.inbox import ORIGIN_XATTR, _recovered_instance

    (path,) = write_ct_files(tmp_path, 1, 2048)
    meta_source = "SOURCE-AE"
    import pydicom

    ds = pydicom.dcmread(path)
    ds.file_meta.SourceApplicationEntityTitle = meta_source
    ds.save_as(path)
    plain = _recovered_instance(path)
    assert (plain.calling_ae_title, plain.called_ae_title, plain.peer_port) == (meta_source, "", 0)
    for damaged in (b"not json", b"[1, 2]", b'{"peer_port": "x", "called_ae_title": 7}'):
        os.setxattr(path, ORIGIN_XATTR, damaged)
        item = _recovered_instance(path)
        assert (item.calling_ae_title, item.called_ae_title, item.peer_port) == (meta_source, "", 0)
    os.setxattr(path, ORIGIN_XATTR, b'{"called_ae_title": "ME", "peer_port": 104, "extra": 1}')
    item = _recovered_instance(path)
    assert (item.calling_ae_title, item.called_ae_title, item.peer_port) == (meta_source, "ME", 104)


@pytest.mark.parametrize("answer", ["saved", "verdict"])
async def test_consumer_raises_nothing_acknowledged_is_lost(
    anyio_backend: str, tmp_path: Path, answer: str
) -> None:
    scp = AE("INBOX-SCP", accept_any_storage=True)
    spool = tmp_path / "spool"
    acknowledged: list[str] = []
    refused: list[str] = []
    consumed: list[str] = []

    class Boom(Exception):
        pass

    async def send(port: int) -> None:
        async with AE("SENDER").associate("127.0.0.1", port, contexts=[CT]) as assoc:
            for _ in range(40):
                ds = ct()
                status = (await assoc.store(ds)).status
                (acknowledged if status == 0 else refused).append(ds.SOPInstanceUID)

    with anyio.fail_after(GUARD):
        async with serving(scp) as port, anyio.create_task_group() as tg:
            tg.start_soon(send, port)
            with pytest.raises(Boom):
                async with scp.inbox(spool, answer=answer) as inbox:  # type: ignore[arg-type]
                    async for item in inbox:
                        if len(consumed) == 20:
                            raise Boom
                        consumed.append(item.sop_instance_uid)
                        await anyio.sleep(0.02)  # slower than the sender
    assert len(acknowledged) + len(refused) == 40
    on_disk: list[str] = []
    async with scp.inbox(spool) as inbox:
        for _ in range(inbox.queued):
            on_disk.append((await inbox.__anext__()).sop_instance_uid)
    assert set(consumed).isdisjoint(on_disk)
    assert set(acknowledged) <= set(consumed) | set(on_disk)
    assert set(refused).isdisjoint(on_disk)
    if answer == "verdict":
        assert acknowledged == consumed  # the 21st was being consumed: refused, not kept
        assert on_disk == []


# ------------------------------------------------------------------------- DCMTK, slow consumer


@pytest.mark.requires_peer("dcmtk")
async def test_dcmtk_storescu_100_to_a_slow_consumer(anyio_backend: str, tmp_path: Path) -> None:
    files = write_ct_files(tmp_path / "src", 100, 100_000)
    scp = AE("INBOX-SCP", accept_any_storage=True)
    spool = tmp_path / "spool"
    got: list[str] = []
    most_memory = 0
    with anyio.fail_after(180):
        async with serving(scp) as port, scp.inbox(spool) as inbox:
            from tests.harness.peers import dcmtk_env, storescu_command

            command = storescu_command(
                "127.0.0.1", port, [tmp_path / "src"], called_aet="INBOX-SCP", timeout=120
            )

            async def run() -> None:
                done = await anyio.run_process(command, check=False, env=dcmtk_env())
                assert done.returncode == 0, done.stderr.decode(errors="replace")

            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                async for item in inbox:
                    most_memory = max(most_memory, inbox.queued_memory)
                    got.append(item.sop_instance_uid)
                    await anyio.sleep(0.01)  # a slow consumer
                    if len(got) == len(files):
                        break
    assert sorted(got) == sorted(p.stem for p in files)
    assert most_memory < 100 * 4096  # records only: no data set is held in memory
    assert sorted(os.listdir(spool)) == [".inbox.lock", ".incoming"]


async def test_a_c_get_keeps_its_instances(anyio_backend: str, tmp_path: Path) -> None:
    """C-STOREs on an association this AE requested (a C-GET's) go to its own handler."""
    from asyncdicom import presets
    from asyncdicom.testing import associated

    sources = []
    for n in range(3):
        path = tmp_path / "archive" / f"{n}.dcm"
        path.parent.mkdir(exist_ok=True)
        ct().save_as(path, enforce_file_format=True)
        sources.append(path)
    qr = AE(
        "QRSCP",
        supported_contexts=presets.qr_supported() + presets.storage_supported(scu_role=True),
    )

    @qr.on("C-GET")
    async def retrieve(request: Any) -> AsyncIterator[Any]:
        for path in sources:
            yield str(path)

    us = AE("US", accept_any_storage=True)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = "1.2.3"
    with anyio.fail_after(GUARD):
        async with (
            us.inbox(tmp_path / "spool") as inbox,
            associated(qr, us, contexts=presets.retrieve_contexts("get", storage=[CT])) as a,
        ):
            async with a.get(query, store=tmp_path / "got") as retrieval:
                async for _ in retrieval:
                    pass
            assert inbox.queued == 0
    assert retrieval.completed == 3
    assert len(list((tmp_path / "got").iterdir())) == 3
    assert spooled(tmp_path / "spool") == []


async def test_one_inbox_per_folder(tmp_path: Path) -> None:
    """A second inbox on a folder an open one holds is refused with InboxBusy (the two would
    hand out and remove each other's instances); once the first closes, it opens."""
    from asyncdicom.errors import InboxBusy

    scp = AE("INBOX-SCP", accept_any_storage=True)
    folder = tmp_path / "spool"
    async with scp.inbox(folder):
        with pytest.raises(InboxBusy, match="another inbox"):
            async with AE("OTHER", accept_any_storage=True).inbox(folder):
                pass
        async with scp.inbox(tmp_path / "elsewhere"):  # another folder: fine
            pass
    async with AE("OTHER", accept_any_storage=True).inbox(folder) as again:
        assert again.folder == folder
