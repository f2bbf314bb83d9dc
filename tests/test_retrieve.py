"""Query/Retrieve GET and MOVE (PS3.4 C.4.2/C.4.3, PS3.7 9.1.3/9.1.4): ``assoc.get()`` and
``assoc.move()`` against retrieve handlers, the sub-operation engine (counts, Pending responses,
final status, Failed SOP Instance UID List, Move Originator, window, C-CANCEL, unknown
destination, several associations beyond 128 contexts), both backends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from asyncdicom import AE, HookEvent, Status, presets, uids
from asyncdicom.errors import NoAcceptedContext
from asyncdicom.services.retrieve import (
    GET_MODELS,
    MOVE_MODELS,
    Retrieval,
    RetrieveFailed,
    _batches,
    _Instance,
    retrieve_model_uid,
)
from asyncdicom.testing import associated

pytestmark = pytest.mark.anyio

CT = uids.CT_IMAGE_STORAGE
MR = uids.MR_IMAGE_STORAGE
STUDY_UID = "1.2.826.0.1.3680043.2.1125.7.1"


def _instance(sop_class: str = CT, uid: str | None = None) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid or generate_uid()
    ds.PatientName = "RETRIEVE^TEST"
    ds.PatientID = "R1"
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = STUDY_UID + ".1"
    ds.Modality = "CT"
    return ds


def _write(folder: Path, count: int, sop_class: str = CT) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for _ in range(count):
        ds = _instance(sop_class)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _query() -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = STUDY_UID
    return ds


def _qr_scp(items: list[Any], seen: list[Dataset] | None = None) -> AE:
    """A Q/R SCP whose GET and MOVE handlers (every model) yield ``items``."""
    scp = AE(
        "QRSCP",
        supported_contexts=presets.qr_supported() + presets.storage_supported(scu_role=True),
    )

    @scp.on("C-GET")
    @scp.on("C-MOVE")
    def retrieve(request: Any) -> Iterator[Any]:  # a plain generator: runs in a thread
        if seen is not None:
            seen.append(request.decode())
        yield from items

    return scp


class _Destination:
    """A storage SCP (``AE`` on a socket) that records what it receives."""

    def __init__(
        self, *, window: tuple[int, int] | None = None, status: Any = None, delay: Any = None
    ) -> None:
        self.ae = AE("DEST", accept_any_storage=True, async_ops_window=window)
        self.received: list[Any] = []
        self.active = 0
        self.most_active = 0
        self.arrived = anyio.Event()

        @self.ae.on_store
        async def on_store(request: Any) -> int:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
            try:
                await request.read()
                self.received.append(request.message)
                self.arrived.set()
                if delay is not None:
                    await delay.wait()
                if status is not None:
                    return int(status(request.message))
                return 0
            finally:
                self.active -= 1

    @property
    def uids(self) -> list[str]:
        return [m.affected_sop_instance_uid for m in self.received]


def test_models() -> None:
    assert retrieve_model_uid("study", "get") == uids.STUDY_ROOT_QR_GET
    assert retrieve_model_uid("patient", "move") == uids.PATIENT_ROOT_QR_MOVE
    assert retrieve_model_uid(uids.PATIENT_STUDY_ONLY_QR_MOVE, "move") in MOVE_MODELS.values()
    assert set(GET_MODELS.values()) == set(presets.QR_GET)
    with pytest.raises(ValueError, match="unknown Query/Retrieve model 'image' for GET"):
        retrieve_model_uid("image", "get")
    with pytest.raises(ValueError, match="for MOVE"):
        retrieve_model_uid(uids.STUDY_ROOT_QR_GET, "move")


def test_retrieve_contexts() -> None:
    plain = set(uids.UNCOMPRESSED_TRANSFER_SYNTAXES) & set(uids.ALL_TRANSFER_SYNTAXES)
    packed = set(uids.ALL_TRANSFER_SYNTAXES) - plain
    get = presets.retrieve_contexts("get", model="patient", storage=[CT, MR, CT])
    assert [c.abstract_syntax for c in get[:2]] == [
        uids.PATIENT_ROOT_QR_GET,
        uids.PATIENT_ROOT_QR_FIND,
    ]
    assert [c.abstract_syntax for c in get[2:]] == [CT] * (1 + len(packed)) + [MR] * (
        1 + len(packed)
    )
    assert {(c.scu_role, c.scp_role) for c in get[2:]} == {(False, True)}
    # few classes: the uncompressed syntaxes together, each compressed one on its own
    assert set(get[2].transfer_syntaxes) == plain
    assert {c.transfer_syntaxes for c in get[3 : 3 + len(packed)]} == {(t,) for t in packed}
    common = presets.retrieve_contexts("get")  # 24 classes: two contexts each
    assert len(common) == 2 + 2 * len(presets.COMMON_STORAGE)
    assert set(common[3].transfer_syntaxes) == packed
    wide = presets.retrieve_contexts("get", storage=[f"1.2.3.{i}" for i in range(100)])
    assert len(wide) == 102  # two per class would not fit: one with every syntax
    assert set(wide[2].transfer_syntaxes) == set(uids.ALL_TRANSFER_SYNTAXES)
    chosen = presets.retrieve_contexts(
        "get", storage=[CT], storage_transfer_syntaxes=["1.2.840.10008.1.2"]
    )
    assert [c.transfer_syntaxes for c in chosen[2:]] == [("1.2.840.10008.1.2",)]
    move = presets.retrieve_contexts("move")
    assert [c.abstract_syntax for c in move] == [uids.STUDY_ROOT_QR_MOVE, uids.STUDY_ROOT_QR_FIND]
    assert not any(c.proposes_roles for c in move)
    with pytest.raises(ValueError, match="128 contexts at most"):
        presets.retrieve_contexts("get", storage=[f"1.2.3.{i}" for i in range(127)])
    with pytest.raises(ValueError, match="'get' or 'move'"):
        presets.retrieve_contexts("find")


def test_batches_keep_each_sop_class_whole_within_128_contexts() -> None:
    classes = [f"1.2.840.99.{i}" for i in range(130)]
    instances = [_Instance(None, c, f"9.{n}", None) for n, c in enumerate(classes)]
    # one SOP class in a compressed and an uncompressed syntax: two contexts, never split
    instances.append(_Instance(None, classes[127], "9.999", uids.JPEG_BASELINE_8BIT))
    batches = _batches(instances)
    assert [len(contexts) for contexts, _ in batches] == [127, 4]
    assert sum(len(batch) for _, batch in batches) == len(instances)
    first_contexts, first_batch = batches[0]
    assert {c.abstract_syntax for c in first_contexts} == {i.sop_class_uid for i in first_batch}
    second_contexts = [c for c in batches[1][0] if c.abstract_syntax == classes[127]]
    assert sorted(c.transfer_syntaxes for c in second_contexts) == sorted(
        [
            (uids.EXPLICIT_VR_LITTLE_ENDIAN, uids.IMPLICIT_VR_LITTLE_ENDIAN),
            (uids.JPEG_BASELINE_8BIT,),
        ]
    )


# ---------------------------------------------------------------------- C-GET


async def test_get_into_a_folder(tmp_path: Path) -> None:
    paths = _write(tmp_path / "archive", 5)
    seen: list[Dataset] = []
    scp = _qr_scp([str(p) for p in paths], seen)
    out = tmp_path / "out"
    progress: list[tuple[Any, ...]] = []
    with anyio.fail_after(20):
        async with associated(scp, contexts=presets.retrieve_contexts("get", storage=[CT])) as a:
            async with a.get(_query(), store=out) as retrieval:
                assert isinstance(retrieval, Retrieval)
                async for response in retrieval:
                    assert response.status == Status.PENDING
                    progress.append((retrieval.remaining, retrieval.completed, retrieval.failed))
    assert seen[0].StudyInstanceUID == STUDY_UID
    assert retrieval.status == 0x0000 and retrieval.ok
    assert (retrieval.completed, retrieval.failed, retrieval.warning) == (5, 0, 0)
    assert retrieval.remaining == 0
    assert progress == [(4 - n, n + 1, 0) for n in range(5)]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)
    assert sorted(f.name for f in retrieval.received) == sorted(p.name for p in paths)
    assert retrieval.failed_instances == []


async def test_get_with_a_store_handler_counts_failures_and_warnings(tmp_path: Path) -> None:
    paths = _write(tmp_path, 4)
    scp = _qr_scp([str(p) for p in paths])
    answers = iter([0x0000, 0xA700, 0xB000, 0x0000])
    refused: list[str] = []

    async def on_store(request: Any) -> int:
        await request.read()
        status = next(answers)
        if status == 0xA700:
            refused.append(request.message.affected_sop_instance_uid)
        return status

    with anyio.fail_after(20):
        async with associated(scp, contexts=presets.retrieve_contexts("get", storage=[CT])) as a:
            async with a.get(_query(), store=on_store) as retrieval:
                final = await retrieval.wait()
    assert final.status == 0xB000
    assert (retrieval.completed, retrieval.failed, retrieval.warning) == (2, 1, 1)
    assert retrieval.failed_instances == refused
    assert final.message.number_of_remaining_suboperations is None


async def test_get_without_the_storage_scp_role_fails_every_sub_operation(
    tmp_path: Path,
) -> None:
    paths = _write(tmp_path, 3)
    scp = _qr_scp([str(p) for p in paths])
    with anyio.fail_after(20):
        async with associated(scp, contexts=presets.retrieve_contexts("get", storage=[MR])) as a:
            with pytest.raises(RetrieveFailed) as caught:
                async with a.get(_query(), store=tmp_path / "out") as retrieval:
                    await retrieval.wait()
    assert caught.value.response.status == 0xA702
    assert sorted(caught.value.failed_instances) == sorted(p.stem for p in paths)
    assert retrieval.failed == 3 and retrieval.completed == 0


async def test_get_yields_datasets_too(tmp_path: Path) -> None:
    datasets = [_instance() for _ in range(3)]
    scp = _qr_scp(datasets)
    with anyio.fail_after(20):
        async with associated(scp, contexts=presets.retrieve_contexts("get", storage=[CT])) as a:
            async with a.get(_query(), store=tmp_path) as retrieval:
                await retrieval.wait()
    assert retrieval.completed == 3
    assert sorted(p.stem for p in tmp_path.iterdir()) == sorted(d.SOPInstanceUID for d in datasets)


async def test_get_model_not_accepted_raises(tmp_path: Path) -> None:
    scp = _qr_scp([])
    async with associated(scp, contexts=presets.retrieve_contexts("move")) as a:
        with pytest.raises(NoAcceptedContext, match="study GET"):
            async with a.get(_query(), store=tmp_path):
                pass


async def test_unreadable_items_are_failed_sub_operations(tmp_path: Path) -> None:
    paths = _write(tmp_path, 2)
    missing = tmp_path / "gone.dcm"
    scp = _qr_scp([str(paths[0]), str(missing), object(), str(paths[1])])
    async with associated(scp, contexts=presets.retrieve_contexts("get", storage=[CT])) as a:
        async with a.get(_query(), store=tmp_path / "out") as retrieval:
            final = await retrieval.wait()
    assert final.status == 0xB000
    assert (retrieval.completed, retrieval.failed) == (2, 2)
    assert final.error_comment


# ---------------------------------------------------------------------- handler answers


@pytest.mark.parametrize("answer", [0xA900, (0xC000, None)])
async def test_a_handler_can_refuse_with_a_status(answer: Any) -> None:
    scp = AE("QRSCP", supported_contexts=presets.qr_supported())

    @scp.on("C-MOVE")
    async def refuse(request: Any) -> AsyncIterator[Any]:
        await request.dataset()
        yield answer

    async with associated(scp, contexts=presets.retrieve_contexts("move")) as a:
        with pytest.raises(RetrieveFailed, match="C-MOVE failed") as caught:
            async with a.move(_query(), destination="ANY") as retrieval:
                await retrieval.wait()
    status = answer if isinstance(answer, int) else answer[0]
    assert caught.value.response.status == status


async def test_handler_exception_and_no_handler() -> None:
    scp = AE("QRSCP", supported_contexts=presets.qr_supported())

    @scp.on("C-GET")
    def broken(request: Any) -> Iterator[Any]:
        raise RuntimeError("index unavailable")
        yield  # pragma: no cover

    async with associated(
        scp, contexts=presets.retrieve_contexts("get") + presets.retrieve_contexts("move")
    ) as a:
        with pytest.raises(RetrieveFailed) as caught:
            async with a.get(_query(), store=".") as retrieval:
                await retrieval.wait()
        assert caught.value.response.status == 0xC000
        with pytest.raises(RetrieveFailed) as caught:
            async with a.move(_query(), destination="ANY") as retrieval:
                await retrieval.wait()
        assert caught.value.response.status == 0xC000
        assert "no C-MOVE handler" in (caught.value.response.error_comment or "")


# ---------------------------------------------------------------------- C-MOVE


async def test_move_to_a_destination(tmp_path: Path) -> None:
    paths = _write(tmp_path, 6)
    scp = _qr_scp([str(p) for p in paths])
    dest = _Destination()
    with anyio.fail_after(20):
        async with dest.ae.server(port=0) as server:
            scp.move_destinations["DEST"] = ("127.0.0.1", server.port)
            async with associated(scp, contexts=presets.retrieve_contexts("move")) as a:
                pending = 0
                async with a.move(_query(), destination="DEST") as retrieval:
                    async for _ in retrieval:
                        pending += 1
                message_id = retrieval.operation.message_id
    assert retrieval.status == 0x0000
    assert pending == 6
    assert (retrieval.completed, retrieval.failed, retrieval.warning) == (6, 0, 0)
    assert sorted(dest.uids) == sorted(p.stem for p in paths)
    assert {(m.move_originator_aet, m.move_originator_message_id) for m in dest.received} == {
        ("TEST-SCU", message_id)
    }


async def test_move_keeps_several_sub_operations_outstanding(tmp_path: Path) -> None:
    paths = _write(tmp_path, 12)
    scp = _qr_scp([str(p) for p in paths])
    release = anyio.Event()
    dest = _Destination(window=(8, 8), delay=release)

    async def open_gate() -> None:
        # let the C-STOREs pile up: more than one arrives before any is answered
        with anyio.fail_after(10):
            while len(dest.received) < 4:
                await dest.arrived.wait()
                dest.arrived = anyio.Event()
        release.set()

    with anyio.fail_after(30):
        async with dest.ae.server(port=0) as server, anyio.create_task_group() as tg:
            tg.start_soon(open_gate)
            scp.move_destinations["DEST"] = ("127.0.0.1", server.port)
            async with associated(scp, contexts=presets.retrieve_contexts("move")) as a:
                async with a.move(_query(), destination="DEST") as retrieval:
                    await retrieval.wait()
    assert retrieval.completed == 12
    assert dest.most_active >= 4


async def test_move_to_an_unknown_destination_is_a801(tmp_path: Path) -> None:
    paths = _write(tmp_path, 1)
    scp = _qr_scp([str(p) for p in paths])
    scp.move_destinations["KNOWN"] = ("127.0.0.1", 1)
    async with associated(scp, contexts=presets.retrieve_contexts("move")) as a:
        with pytest.raises(RetrieveFailed) as caught:
            async with a.move(_query(), destination="NOBODY") as retrieval:
                await retrieval.wait()
    assert caught.value.response.status == 0xA801
    assert "NOBODY" in (caught.value.response.error_comment or "")


async def test_move_to_a_destination_that_is_down_fails_every_sub_operation(
    tmp_path: Path,
) -> None:
    paths = _write(tmp_path, 3)
    scp = _qr_scp([str(p) for p in paths])
    dest = _Destination()
    async with dest.ae.server(port=0) as server:
        port = server.port
    scp.move_destinations["DEST"] = ("127.0.0.1", port)  # nobody listens there any more
    with anyio.fail_after(20):
        async with associated(scp, contexts=presets.retrieve_contexts("move")) as a:
            with pytest.raises(RetrieveFailed) as caught:
                async with a.move(_query(), destination="DEST") as retrieval:
                    await retrieval.wait()
    response = caught.value.response
    assert response.status == 0xA702
    assert response.message.number_of_failed_suboperations == 3
    assert sorted(caught.value.failed_instances) == sorted(p.stem for p in paths)
    assert "DEST" in (response.error_comment or "")


async def test_move_with_refused_sub_operations_is_a_warning(tmp_path: Path) -> None:
    paths = _write(tmp_path, 4)
    refuse = paths[1].stem
    scp = _qr_scp([str(p) for p in paths])
    dest = _Destination(
        status=lambda m: 0xA700 if m.affected_sop_instance_uid == refuse else 0x0000
    )
    async with dest.ae.server(port=0) as server:
        scp.move_destinations["DEST"] = ("127.0.0.1", server.port)
        async with associated(scp, contexts=presets.retrieve_contexts("move")) as a:
            async with a.move(_query(), destination="DEST") as retrieval:
                final = await retrieval.wait()
    assert final.status == 0xB000
    assert retrieval.failed_instances == [refuse]
    assert (retrieval.completed, retrieval.failed) == (3, 1)


async def test_move_over_more_than_128_sop_classes_uses_several_associations() -> None:
    classes = sorted(uids.storage_sop_classes())[:130]
    datasets = [_instance(c) for c in classes]
    scp = _qr_scp(datasets)
    dest = _Destination()
    associations: list[Any] = []

    @dest.ae.on_hook(HookEvent.ASSOCIATION_ACCEPTED)
    def accepted(event: Any, association: Any, **_: Any) -> None:
        associations.append(association)

    with anyio.fail_after(30):
        async with dest.ae.server(port=0) as server:
            scp.move_destinations["DEST"] = ("127.0.0.1", server.port)
            async with associated(scp, contexts=presets.retrieve_contexts("move")) as a:
                async with a.move(_query(), destination="DEST") as retrieval:
                    final = await retrieval.wait()
    assert final.status == 0x0000, final
    assert retrieval.completed == 130
    assert len(associations) == 2
    assert sorted(dest.uids) == sorted(d.SOPInstanceUID for d in datasets)


async def test_leaving_a_long_move_early_cancels_it(tmp_path: Path) -> None:
    paths = _write(tmp_path, 40)
    scp = _qr_scp([str(p) for p in paths])
    gate = anyio.Event()
    dest = _Destination(delay=gate)  # every C-STORE waits for the gate
    with anyio.fail_after(30):
        async with dest.ae.server(port=0) as server:
            scp.move_destinations["DEST"] = ("127.0.0.1", server.port)
            async with associated(scp, contexts=presets.retrieve_contexts("move")) as a:
                async with a.move(_query(), destination="DEST") as retrieval:
                    await dest.arrived.wait()
                    gate.set()
                    async for _ in retrieval:
                        break  # leave after the first Pending response: C-CANCEL-RQ
                assert retrieval.cancelled
                final = retrieval.final
                assert final is not None and final.status == 0xFE00
                assert a.is_established  # still usable
    message = final.message
    done = message.number_of_completed_suboperations
    remaining = message.number_of_remaining_suboperations
    assert done is not None and remaining is not None
    assert done + remaining + message.number_of_failed_suboperations == 40
    assert remaining > 0
    assert len(dest.received) == done


async def test_a_plain_generator_is_drained_in_batches_and_its_final_status_wins() -> None:
    calls: list[int] = []
    scp = AE("QRSCP", supported_contexts=presets.qr_supported())

    @scp.on("C-GET")
    def many(request: Any) -> Iterator[Any]:
        for n in range(600):
            calls.append(n)
            yield object()  # not an instance: each one a failed sub-operation
        yield 0xA701  # then a final status: it wins, nothing is sent

    async with associated(scp, contexts=presets.retrieve_contexts("get")) as a:
        with pytest.raises(RetrieveFailed) as caught:
            async with a.get(_query(), store=".") as retrieval:
                await retrieval.wait()
    assert caught.value.response.status == 0xA701
    assert len(calls) == 600

    scp2 = AE("QRSCP", supported_contexts=presets.qr_supported())

    @scp2.on("C-GET")
    def unreadable(request: Any) -> Iterator[Any]:
        yield from [object()] * 600

    async with associated(scp2, contexts=presets.retrieve_contexts("get")) as a:
        with pytest.raises(RetrieveFailed) as caught:
            async with a.get(_query(), store=".") as retrieval:
                await retrieval.wait()
    assert caught.value.response.status == 0xA702
    assert caught.value.response.message.number_of_failed_suboperations == 600


@pytest.mark.parametrize("form", ["async", "plain"])
async def test_a_handler_may_return_its_instances_or_a_status(form: str, tmp_path: Path) -> None:
    paths = _write(tmp_path / "archive", 3)
    scp = AE(
        "QRSCP",
        supported_contexts=presets.qr_supported() + presets.storage_supported(scu_role=True),
    )
    if form == "async":

        @scp.on("C-GET")
        async def listing(request: Any) -> Any:
            query = await request.dataset()
            return [str(p) for p in paths] if query.StudyInstanceUID == STUDY_UID else 0xA900

    else:

        @scp.on("C-GET")
        def listing(request: Any) -> Any:
            query = request.decode()
            return [str(p) for p in paths] if query.StudyInstanceUID == STUDY_UID else 0xA900

    contexts = presets.retrieve_contexts("get", storage=[CT])
    async with associated(scp, contexts=contexts) as a:
        async with a.get(_query(), store=tmp_path / "out") as retrieval:
            await retrieval.wait()
        assert retrieval.completed == 3
        other = _query()
        other.StudyInstanceUID = "1.2.3"
        with pytest.raises(RetrieveFailed) as caught:
            async with a.get(other, store=tmp_path / "out") as retrieval:
                await retrieval.wait()
        assert caught.value.response.status == 0xA900


TREE = {
    "P1": {"1.9.1": {"1.9.1.1": [CT, CT], "1.9.1.2": [MR]}, "1.9.2": {"1.9.2.1": [CT]}},
    "P2": {"1.9.3": {"1.9.3.1": [uids.SECONDARY_CAPTURE_IMAGE_STORAGE]}},
}


def _tree_scp(queries: list[Dataset]) -> AE:
    """A FIND SCP over TREE, hierarchical: each level needs the unique keys above it."""
    scp = AE("QRSCP", supported_contexts=presets.qr_supported())

    @scp.on("C-FIND")
    async def find(request: Any) -> AsyncIterator[Any]:
        q = await request.dataset()
        queries.append(q)
        level = q.QueryRetrieveLevel
        for pid, studies in TREE.items():
            if q.get("PatientID") and q.PatientID != pid:
                continue
            if level == "PATIENT":
                yield _keys(level, PatientID=pid)
                continue
            wanted = q.get("StudyInstanceUID")
            wanted = [] if not wanted else [wanted] if isinstance(wanted, str) else list(wanted)
            for study, series in studies.items():
                if wanted and study not in wanted:
                    continue
                if level == "STUDY":
                    yield _keys(level, StudyInstanceUID=study)
                    continue
                assert wanted, "hierarchical: SERIES and IMAGE need the Study Instance UID"
                for se, classes in series.items():
                    if q.get("SeriesInstanceUID") and q.SeriesInstanceUID != se:
                        continue
                    if level == "SERIES":
                        yield _keys(level, SeriesInstanceUID=se)
                        continue
                    assert q.get("SeriesInstanceUID"), "IMAGE needs the Series Instance UID"
                    for n, sop_class in enumerate(classes):
                        yield _keys(level, SOPInstanceUID=f"{se}.{n}", SOPClassUID=sop_class)

    return scp


def _keys(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


async def test_sop_classes_to_retrieve_walks_the_hierarchy() -> None:
    from asyncdicom.services.retrieve import sop_classes_to_retrieve

    queries: list[Dataset] = []
    scp = _tree_scp(queries)
    contexts = presets.retrieve_contexts("get") + presets.retrieve_contexts("get", model="patient")
    async with associated(scp, contexts=contexts) as a:
        one = await sop_classes_to_retrieve(a, _keys("STUDY", StudyInstanceUID="1.9.1"))
        assert one == {CT, MR}
        assert len(queries) == 3  # the study's series, then each series' images
        two = await sop_classes_to_retrieve(a, _keys("STUDY", StudyInstanceUID="1.9.2\\1.9.3"))
        assert two == {CT, uids.SECONDARY_CAPTURE_IMAGE_STORAGE}
        patient = await sop_classes_to_retrieve(
            a, _keys("PATIENT", PatientID="P1"), model="patient"
        )
        assert patient == {CT, MR}
        series = await sop_classes_to_retrieve(
            a, _keys("SERIES", StudyInstanceUID="1.9.1", SeriesInstanceUID="1.9.1.2")
        )
        assert series == {MR}
        with pytest.raises(ValueError, match="more than 2 queries"):
            await sop_classes_to_retrieve(a, _keys("STUDY", StudyInstanceUID="1.9.1"), limit=2)
        with pytest.raises(ValueError, match="Query/Retrieve Level 'PATIENT'"):
            await sop_classes_to_retrieve(a, _keys("PATIENT", PatientID="P1"))


async def test_get_brings_compressed_and_uncompressed_instances_of_one_class(
    tmp_path: Path,
) -> None:
    from samples import sample

    files = [sample("MR_small.dcm"), sample("MR_small_RLE.dcm")]
    scp = _qr_scp([str(f) for f in files])
    contexts = presets.retrieve_contexts("get", storage=[MR])
    async with associated(scp, contexts=contexts) as a:
        async with a.get(_query(), store=tmp_path) as retrieval:
            final = await retrieval.wait()
    assert final.status == 0x0000, final
    assert retrieval.completed == 2
    syntaxes = sorted(str(dcmread(f).file_meta.TransferSyntaxUID) for f in retrieval.received)
    assert syntaxes == sorted([uids.EXPLICIT_VR_LITTLE_ENDIAN, uids.RLE_LOSSLESS])
