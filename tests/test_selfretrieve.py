"""Retrieving to ourselves (``assoc.retrieve()``): a C-MOVE whose destination is our own
listening AE, or a C-GET, yielding the instances as they arrive; both backends.

* against our Query/Retrieve SCP (an :class:`~asyncdicom.archive.Archive`, what ``asyncdicom
  qrscp`` serves) holding a 200-instance study: every instance yielded, the iteration ending
  only once the last arrived, C-CANCEL after 50 leaving the association usable;
* against a scripted move SCP (our AE with a C-MOVE handler that answers as the test says, and
  the sub-operations sent by the test itself): the final response overtaking the last C-STORE,
  C-STOREs without Move Originator fields (matched by the association the SCP opened and, at
  IMAGE level, by the SOP Instance UIDs asked for; others go to the AE's own handler), and
  instances that never arrive (a bounded wait, then :class:`RetrieveIncomplete`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from asyncdicom import AE, HookEvent, presets
from asyncdicom.archive import Archive, qrscp_config
from asyncdicom.correlation import Correlator
from asyncdicom.errors import RetrieveFailed, RetrieveIncomplete
from asyncdicom.protocol import messages
from asyncdicom.services import QR_MOVE_SERVICE, make_response
from asyncdicom.services.selfretrieve import RetrievedInstance, RetrievedInstances
from asyncdicom.storage.synthetic import CT_IMAGE_STORAGE, make_ct_instance, write_ct_files

pytestmark = pytest.mark.anyio

GUARD = 60.0
ME = "ME"
STUDY_SIZE = 200


def _study_query(study_uid: str) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    return query


def _receiver() -> AE:
    """Our AE: serves (any storage SOP class) and retrieves."""
    return AE(ME, accept_any_storage=True)


@asynccontextmanager
async def _archive(folder: Path, count: int) -> AsyncIterator[tuple[AE, int, list[Path], str]]:
    """Our Q/R SCP (an Archive) holding ``count`` instances of one study, serving; yields the
    AE, its port, the files and the study's UID.  Move destinations are added by the caller."""
    files = write_ct_files(folder / "source", count, 512, patient_id="SELF")
    ae = AE(config=qrscp_config("QRSCP"))
    async with Archive(folder / "archive") as archive:
        archive.install(ae)
        async with ae.server() as server:
            async with AE("LOADER").associate(
                "127.0.0.1", server.port, called_aet="QRSCP", contexts=[CT_IMAGE_STORAGE]
            ) as assoc:
                for path in files:
                    assert (await assoc.store(path)).status == 0x0000
            study = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
            yield ae, server.port, files, study


def _uids(files: list[Path]) -> set[str]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}


def _contexts(via: str) -> list[Any]:
    return [*presets.retrieve_contexts(via), *presets.VERIFICATION]


@pytest.mark.parametrize("via", ["move", "get"])
async def test_retrieve_a_study_from_our_qrscp(tmp_path: Path, via: Any) -> None:
    me = _receiver()
    got: list[RetrievedInstance] = []
    with anyio.fail_after(GUARD):
        async with _archive(tmp_path, STUDY_SIZE) as (qr, port, files, study), me.server() as srv:
            qr.move_destinations[ME] = ("127.0.0.1", srv.port)
            async with me.associate(
                "127.0.0.1", port, called_aet="QRSCP", contexts=_contexts(via)
            ) as assoc:
                async with assoc.retrieve(_study_query(study), via=via) as instances:
                    async for instance in instances:
                        got.append(instance)
                assert (await assoc.echo()).status == 0x0000
    assert instances.status == 0x0000
    assert (instances.completed, instances.failed, instances.warning) == (STUDY_SIZE, 0, 0)
    assert instances.arrived == instances.yielded == instances.expected == STUDY_SIZE
    assert len(got) == STUDY_SIZE
    assert {i.sop_instance_uid for i in got} == _uids(files)
    first = got[0]
    assert first.file is None and first.data is not None
    assert first.dataset().SOPInstanceUID == first.sop_instance_uid
    assert first.dataset().StudyInstanceUID == study
    if via == "move":
        assert {(i.move_originator_aet, i.move_originator_message_id) for i in got} == {
            (ME, instances.message_id)
        }
        assert {i.calling_ae_title for i in got} == {"QRSCP"}
    else:
        assert {i.move_originator_aet for i in got} == {None}


@pytest.mark.parametrize("via", ["move", "get"])
async def test_leaving_after_50_cancels_and_the_association_goes_on(
    tmp_path: Path, via: Any
) -> None:
    me = _receiver()
    got: list[str] = []
    with anyio.fail_after(GUARD):
        async with _archive(tmp_path, STUDY_SIZE) as (qr, port, files, study), me.server() as srv:
            qr.move_destinations[ME] = ("127.0.0.1", srv.port)
            async with me.associate(
                "127.0.0.1", port, called_aet="QRSCP", contexts=_contexts(via)
            ) as assoc:
                async with assoc.retrieve(_study_query(study), via=via, buffer=4) as first:
                    async for instance in first:
                        got.append(instance.sop_instance_uid)
                        if len(got) == 50:
                            break
                assert (await assoc.echo()).status == 0x0000
                async with assoc.retrieve(
                    _study_query(study), via=via, store=tmp_path / "again"
                ) as second:
                    again = [i async for i in second]
    assert len(got) == 50
    assert first.cancel_sent
    assert first.status == 0xFE00  # Cancel
    assert first.completed is not None and 50 <= first.completed < STUDY_SIZE
    assert second.status == 0x0000 and len(again) == STUDY_SIZE
    assert {i.sop_instance_uid for i in again} == _uids(files)
    assert all(i.file is not None and i.file.exists() for i in again)
    assert again[0].dataset().SOPInstanceUID == again[0].sop_instance_uid


# ---------------------------------------------------------------------- a scripted move SCP

MOVE_SCP = "MOVESCP"


class ScriptedMoveSCP:
    """A move SCP whose C-MOVE responses the test writes: the handler (the service's generic
    forms, not the sub-operation engine) waits for :meth:`finish` and answers with a final
    Success carrying the counts given; the sub-operations are the test's own C-STOREs on an
    association it opens from :attr:`ae` (calling AE title ``MOVESCP``)."""

    def __init__(self) -> None:
        self.ae = AE(MOVE_SCP, supported_contexts=presets.qr_supported())
        # the responses are the handler's results: no sub-operation engine
        self.ae.add_service(dataclasses.replace(QR_MOVE_SERVICE, responder=None))
        self.request: Any = None
        self.started = anyio.Event()
        self._finish = anyio.Event()
        self._completed = 0

        #: set when a C-CANCEL-RQ arrives
        self.cancelled = anyio.Event()

        def on_message(event: Any, association: Any, message: Any) -> None:
            if isinstance(message, messages.CCancelRQ):
                self.cancelled.set()

        self.ae.hooks.add(HookEvent.DIMSE_RECEIVED, on_message)

        @self.ae.on("C-MOVE")
        async def move(request: Any) -> AsyncIterator[Any]:
            self.request = request
            self.started.set()
            # a C-CANCEL-RQ does not end it: the test says when the final response goes
            with anyio.CancelScope(shield=True):
                await self._finish.wait()
            yield make_response(
                request.message,
                0x0000,
                number_of_completed_suboperations=self._completed,
                number_of_failed_suboperations=0,
                number_of_warning_suboperations=0,
            )

    @property
    def message_id(self) -> int:
        return int(self.request.message.message_id)

    def finish(self, completed: int) -> None:
        """Send the final C-MOVE-RSP now, saying ``completed`` sub-operations completed."""
        self._completed = completed
        self._finish.set()

    @asynccontextmanager
    async def sub_association(self, port: int, calling: str | None = None) -> AsyncIterator[Any]:
        ae = self.ae if calling is None else AE(calling)
        async with ae.associate(
            "127.0.0.1", port, called_aet=ME, contexts=[CT_IMAGE_STORAGE]
        ) as assoc:
            yield assoc


def _instances(count: int, study: str) -> list[Dataset]:
    return [
        make_ct_instance(256, study_instance_uid=study, seed=n, instance_number=n + 1)
        for n in range(count)
    ]


def _final_seen(ae: AE) -> anyio.Event:
    """Set when ``ae`` receives a final (non-Pending) C-MOVE-RSP."""
    seen = anyio.Event()

    def on_message(event: Any, association: Any, message: Any) -> None:
        if isinstance(message, messages.CMoveRSP) and message.status != 0xFF00:
            seen.set()

    ae.hooks.add(HookEvent.DIMSE_RECEIVED, on_message)
    return seen


STUDY = "1.2.826.0.1.3680043.10.1234.19.2"


async def test_the_final_response_can_overtake_the_last_instance() -> None:
    me = _receiver()
    scp = ScriptedMoveSCP()
    datasets = _instances(5, STUDY)
    final_seen = _final_seen(me)
    got: list[tuple[str, bool]] = []

    async def sub_operations(port: int) -> None:
        await scp.started.wait()
        originator = {"move_originator_aet": ME, "move_originator_message_id": scp.message_id}
        async with scp.sub_association(port) as sub:
            for ds in datasets[:-1]:
                assert (await sub.store(ds, **originator)).status == 0x0000
            scp.finish(completed=len(datasets))
            await final_seen.wait()  # our SCU has the final response: now the last C-STORE
            assert (await sub.store(datasets[-1], **originator)).status == 0x0000

    with anyio.fail_after(GUARD):
        async with me.server() as srv, scp.ae.server() as scp_srv:
            async with (
                me.associate(
                    "127.0.0.1", scp_srv.port, called_aet=MOVE_SCP, contexts=_contexts("move")
                ) as assoc,
                anyio.create_task_group() as tg,
            ):
                tg.start_soon(sub_operations, srv.port)
                async with assoc.retrieve(_study_query(STUDY)) as instances:
                    async for instance in instances:
                        got.append((instance.sop_instance_uid, final_seen.is_set()))
                assert (await assoc.echo()).status == 0x0000
    assert [uid for uid, _ in got] == [ds.SOPInstanceUID for ds in datasets]
    # the last instance came after the final response, and was still waited for
    assert got[-1][1] and not got[0][1]
    assert instances.status == 0x0000 and instances.arrived == instances.expected == 5


@pytest.mark.parametrize("level", ["STUDY", "IMAGE", "STUDY, the SCP named as originator"])
async def test_instances_without_move_originator(level: str) -> None:
    """Matched by the association the move SCP opened (and the UIDs asked for, at IMAGE
    level); a Move Originator naming the SCP itself (pynetdicom's qrscp) counts as none, one
    naming a third AE is that AE's."""
    me = _receiver()
    others: list[tuple[str, str]] = []

    @me.on_store
    async def on_store(request: Any) -> int:
        others.append(
            (request.association.calling_ae_title, request.message.affected_sop_instance_uid)
        )
        await request.discard()
        return 0x0000

    scp = ScriptedMoveSCP()
    datasets = _instances(4, STUDY)
    stranger = _instances(1, STUDY)[0]  # not asked for (IMAGE level)
    query = _study_query(STUDY)
    if level == "IMAGE":
        query.QueryRetrieveLevel = "IMAGE"
        query.SeriesInstanceUID = datasets[0].SeriesInstanceUID
        query.SOPInstanceUID = [ds.SOPInstanceUID for ds in datasets]

    async def sub_operations(port: int) -> None:
        await scp.started.wait()
        # another AE storing meanwhile: its instance is not the retrieve's
        async with scp.sub_association(port, calling="OTHER") as other:
            assert (await other.store(datasets[0])).status == 0x0000
        async with scp.sub_association(port) as sub:
            # the move of a third AE, from the same SCP: not ours
            third = {"move_originator_aet": "THIRD", "move_originator_message_id": 7}
            assert (await sub.store(datasets[1], **third)).status == 0x0000
            named = {}
            if level.endswith("originator"):
                named = {"move_originator_aet": MOVE_SCP, "move_originator_message_id": 99}
            for ds in datasets:
                assert (await sub.store(ds, **named)).status == 0x0000
            if level == "IMAGE":
                assert (await sub.store(stranger)).status == 0x0000
        scp.finish(completed=len(datasets))

    with anyio.fail_after(GUARD):
        async with me.server() as srv, scp.ae.server() as scp_srv:
            async with (
                me.associate(
                    "127.0.0.1", scp_srv.port, called_aet=MOVE_SCP, contexts=_contexts("move")
                ) as assoc,
                anyio.create_task_group() as tg,
            ):
                tg.start_soon(sub_operations, srv.port)
                async with assoc.retrieve(query) as instances:
                    got = [i async for i in instances]
    assert [i.sop_instance_uid for i in got] == [ds.SOPInstanceUID for ds in datasets]
    originators = {(i.move_originator_aet, i.move_originator_message_id) for i in got}
    if level.endswith("originator"):
        assert originators == {(MOVE_SCP, 99)}
    else:
        assert originators == {(None, None)}
    assert {i.calling_ae_title for i in got} == {MOVE_SCP}
    expected_others = [
        ("OTHER", datasets[0].SOPInstanceUID),
        (MOVE_SCP, datasets[1].SOPInstanceUID),
    ]
    if level == "IMAGE":
        expected_others.append((MOVE_SCP, stranger.SOPInstanceUID))
    assert others == expected_others


async def test_instances_that_never_arrive_end_with_a_clear_error() -> None:
    me = _receiver()
    scp = ScriptedMoveSCP()
    datasets = _instances(4, STUDY)
    query = _study_query(STUDY)
    query.QueryRetrieveLevel = "IMAGE"
    query.SeriesInstanceUID = datasets[0].SeriesInstanceUID
    query.SOPInstanceUID = [ds.SOPInstanceUID for ds in datasets]
    got: list[str] = []

    async def sub_operations(port: int) -> None:
        await scp.started.wait()
        originator = {"move_originator_aet": ME, "move_originator_message_id": scp.message_id}
        async with scp.sub_association(port) as sub:
            for ds in datasets[:2]:
                assert (await sub.store(ds, **originator)).status == 0x0000
        scp.finish(completed=len(datasets))  # claims 4; 2 never come

    with anyio.fail_after(GUARD):
        async with me.server() as srv, scp.ae.server() as scp_srv:
            async with (
                me.associate(
                    "127.0.0.1", scp_srv.port, called_aet=MOVE_SCP, contexts=_contexts("move")
                ) as assoc,
                anyio.create_task_group() as tg,
            ):
                tg.start_soon(sub_operations, srv.port)
                with pytest.raises(RetrieveIncomplete) as info:
                    async with assoc.retrieve(query, arrival_timeout=0.5) as instances:
                        async for instance in instances:
                            got.append(instance.sop_instance_uid)
                assert (await assoc.echo()).status == 0x0000
    assert got == [ds.SOPInstanceUID for ds in datasets[:2]]
    error = info.value
    assert (error.expected, error.arrived) == (4, 2)
    assert error.missing == sorted(ds.SOPInstanceUID for ds in datasets[2:])
    assert "completed 4 sub-operations but 2 instances arrived" in str(error)
    assert isinstance(instances, RetrievedInstances) and instances.status == 0x0000


async def test_subscription_backpressure_and_close() -> None:
    correlator: Correlator[int] = Correlator()
    assert not await correlator.publish("k", 0)  # nobody subscribes
    with correlator.subscribe("k", capacity=2) as subscription:
        with pytest.raises(KeyError):
            with correlator.subscribe("k"):
                pass
        assert await correlator.publish("k", 1)
        assert await correlator.publish("k", 2)
        blocked_result: list[bool] = []

        async def third() -> None:
            blocked_result.append(await correlator.publish("k", 3))

        async with anyio.create_task_group() as tg:
            tg.start_soon(third)
            await anyio.wait_all_tasks_blocked()
            assert blocked_result == [] and len(subscription) == 2  # waits for room
            assert await subscription.get() == 1
        assert blocked_result == [True]
        assert [await subscription.get(), await subscription.get()] == [2, 3]

        async def fourth() -> None:
            blocked_result.append(await correlator.publish("k", 4))

        await correlator.publish("k", 5)
        await correlator.publish("k", 6)
        async with anyio.create_task_group() as tg:
            tg.start_soon(fourth)
            await anyio.wait_all_tasks_blocked()
            assert subscription.close() == [5, 6]
        assert blocked_result == [True, False]  # released, not taken
    assert correlator.subscription("k") is None


async def test_a_move_the_scp_refuses_raises_retrieve_failed(tmp_path: Path) -> None:
    me = _receiver()
    with anyio.fail_after(GUARD):
        async with _archive(tmp_path, 2) as (_qr, port, _files, study), me.server():
            # the SCP does not know ME as a move destination: 0xA801
            async with me.associate(
                "127.0.0.1", port, called_aet="QRSCP", contexts=_contexts("move")
            ) as assoc:
                with pytest.raises(RetrieveFailed) as info:
                    async with assoc.retrieve(_study_query(study)) as instances:
                        async for _ in instances:
                            pass
                assert (await assoc.echo()).status == 0x0000
    assert info.value.response.status == 0xA801
    assert instances.arrived == 0 and instances.status == 0xA801


@pytest.mark.parametrize("saved", [False, True])
async def test_instances_after_leaving_are_refused_unless_saved(
    tmp_path: Path, saved: bool
) -> None:
    me = _receiver()
    handled: list[str] = []

    @me.on_store
    async def on_store(request: Any) -> int:
        handled.append(request.message.affected_sop_instance_uid)
        await request.discard()
        return 0x0000

    scp = ScriptedMoveSCP()
    datasets = _instances(3, STUDY)
    statuses: list[int] = []

    async def sub_operations(port: int) -> None:
        await scp.started.wait()
        originator = {"move_originator_aet": ME, "move_originator_message_id": scp.message_id}
        async with scp.sub_association(port) as sub:
            assert (await sub.store(datasets[0], **originator)).status == 0x0000
            await scp.cancelled.wait()  # the consumer left: C-CANCEL-RQ came
            for ds in datasets[1:]:
                statuses.append((await sub.store(ds, **originator)).status)
        scp.finish(completed=1)

    folder = tmp_path / "saved" if saved else None
    with anyio.fail_after(GUARD):
        async with me.server() as srv, scp.ae.server() as scp_srv:
            async with (
                me.associate(
                    "127.0.0.1", scp_srv.port, called_aet=MOVE_SCP, contexts=_contexts("move")
                ) as assoc,
                anyio.create_task_group() as tg,
            ):
                tg.start_soon(sub_operations, srv.port)
                async with assoc.retrieve(_study_query(STUDY), store=folder) as instances:
                    async for _ in instances:
                        break
                assert (await assoc.echo()).status == 0x0000
    assert instances.cancel_sent and instances.arrived == 1
    assert handled == []  # neither went to the AE's own handler
    if saved:
        assert statuses == [0x0000, 0x0000]
        assert folder is not None
        assert sorted(p.stem for p in folder.iterdir()) == sorted(
            ds.SOPInstanceUID for ds in datasets
        )
    else:
        assert statuses == [0xA700, 0xA700]


async def test_an_open_inbox_gets_the_other_stores_and_none_of_the_retrieves(
    tmp_path: Path,
) -> None:
    """An inbox without filters is open on the same AE while it retrieves to itself: the
    move's instances go to the retrieve (which claims them before any inbox), a C-STORE
    from another sender during the move goes to the inbox, as does one after it."""
    me = _receiver()
    got: list[str] = []
    inboxed: list[str] = []
    others = [make_ct_instance(256, patient_id="OTHER", seed=100 + n) for n in range(2)]
    with anyio.fail_after(GUARD):
        async with (
            _archive(tmp_path, 20) as (qr, port, files, study),
            me.server() as srv,
            me.inbox(tmp_path / "inbox") as inbox,
        ):
            qr.move_destinations[ME] = ("127.0.0.1", srv.port)

            async def other_sender(ds: Dataset) -> None:
                async with AE("MODALITY").associate(
                    "127.0.0.1", srv.port, called_aet=ME, contexts=[CT_IMAGE_STORAGE]
                ) as other:
                    assert (await other.store(ds)).status == 0x0000

            async with me.associate(
                "127.0.0.1", port, called_aet="QRSCP", contexts=_contexts("move")
            ) as assoc:
                async with assoc.retrieve(_study_query(study)) as instances:
                    async for instance in instances:
                        got.append(instance.sop_instance_uid)
                        if len(got) == 5:  # during the move
                            await other_sender(others[0])
            await other_sender(others[1])  # after it
            async for incoming in inbox:
                inboxed.append(incoming.sop_instance_uid)
                if len(inboxed) == len(others):
                    break
    assert sorted(got) == sorted(_uids(files))
    assert inboxed == [str(ds.SOPInstanceUID) for ds in others]
