"""Query/Retrieve FIND (PS3.4 Annex C, PS3.7 9.1.2): ``assoc.find()`` against generator
handlers, in memory and over sockets, both backends: several matches, none, a handler that
raises, no handler, leaving early (C-CANCEL), a model that was not accepted."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest
from pydicom.dataset import Dataset

from asyncdicom import AE, FindResults, QueryFailed, Status, presets, uids
from asyncdicom.errors import NoAcceptedContext
from asyncdicom.services.query_retrieve import QR_FIND_SERVICE, find_model_uid
from asyncdicom.testing import associated

pytestmark = pytest.mark.anyio

STUDY = uids.STUDY_ROOT_QR_FIND
PATIENT = uids.PATIENT_ROOT_QR_FIND
PATIENT_STUDY = uids.PATIENT_STUDY_ONLY_QR_FIND

STUDIES = [("1.2.3.1", "DOE^JOHN"), ("1.2.3.2", "DOE^JANE"), ("1.2.3.3", "ROE^RICHARD")]


def _scp() -> AE:
    return AE("QRSCP", supported_contexts=presets.qr_find_supported())


def _query(level: str = "STUDY", **keys: Any) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    ds.StudyInstanceUID = ""
    ds.PatientName = ""
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def _study(uid: str, name: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = uid
    ds.PatientName = name
    return ds


def _serving_list(scp: AE, seen: list[Dataset], *, sop_class: str = STUDY) -> None:
    @scp.on("C-FIND", sop_class=sop_class)
    async def find(request: Any) -> AsyncIterator[Dataset]:
        query = await request.dataset()
        seen.append(query)
        prefix = str(query.get("PatientName", "") or "").rstrip("*")
        for uid, name in STUDIES:
            if name.startswith(prefix):
                yield _study(uid, name)


def test_models() -> None:
    assert find_model_uid("study") == STUDY
    assert find_model_uid("patient") == PATIENT
    assert find_model_uid("patient-study") == PATIENT_STUDY
    assert find_model_uid(PATIENT) == PATIENT
    with pytest.raises(ValueError, match="unknown Query/Retrieve model 'image'"):
        find_model_uid("image")
    assert QR_FIND_SERVICE.sop_classes == {STUDY, PATIENT, PATIENT_STUDY}


async def test_find_several_matches() -> None:
    scp = _scp()
    seen: list[Dataset] = []
    _serving_list(scp, seen)
    with anyio.fail_after(10):
        async with associated(scp, contexts=presets.QR_FIND) as assoc:
            async with assoc.find(_query(PatientName="DOE*")) as results:
                assert isinstance(results, FindResults)
                found = [(m.StudyInstanceUID, str(m.PatientName)) async for m in results]
    assert found == STUDIES[:2]
    assert results.final is not None and results.status == Status.SUCCESS and results.ok
    assert results.count == 2 and not results.cancelled
    assert results.last_pending is not None and results.last_pending.status == 0xFF00
    assert seen[0].QueryRetrieveLevel == "STUDY" and str(seen[0].PatientName) == "DOE*"


@pytest.mark.parametrize("model", ["patient", "patient-study"])
async def test_find_on_the_other_models(model: str) -> None:
    scp = _scp()
    seen: list[Dataset] = []
    _serving_list(scp, seen, sop_class=find_model_uid(model))
    with anyio.fail_after(10):
        async with associated(scp, contexts=presets.QR_FIND) as assoc:
            async with assoc.find(_query("PATIENT"), model=model) as results:
                found = [m.StudyInstanceUID async for m in results]
            # the handler is registered for one model only: the study root gets no answer
            async with assoc.find(_query(), model="study") as other:
                with pytest.raises(QueryFailed) as failed:
                    [m async for m in other]
    assert found == [uid for uid, _ in STUDIES]
    assert failed.value.response.status == Status.UNABLE_TO_PROCESS
    assert other.final is failed.value.response


async def test_find_zero_matches() -> None:
    scp = _scp()
    _serving_list(scp, [])
    with anyio.fail_after(10):
        async with associated(scp, contexts=presets.QR_FIND) as assoc:
            async with assoc.find(_query(PatientName="NOBODY")) as results:
                found = [m async for m in results]
    assert found == []
    assert results.status == Status.SUCCESS and results.count == 0


async def test_handler_exception_is_unable_to_process() -> None:
    scp = _scp()

    @scp.on("C-FIND", sop_class=STUDY)
    async def find(request: Any) -> AsyncIterator[Dataset]:
        yield _study(*STUDIES[0])
        raise RuntimeError("the index is gone")

    with anyio.fail_after(10):
        async with associated(scp, contexts=[*presets.QR_FIND, uids.VERIFICATION]) as assoc:
            received: list[Dataset] = []
            async with assoc.find(_query()) as results:
                with pytest.raises(QueryFailed) as failed:
                    async for match in results:
                        received.append(match)
            assert (await assoc.echo()).status == 0
    assert len(received) == 1
    assert failed.value.response.status == 0xC000
    assert results.status == 0xC000 and not results.ok


async def test_memory_error_is_out_of_resources() -> None:
    scp = _scp()

    @scp.on("C-FIND")
    def find(request: Any) -> Iterator[Dataset]:  # a plain generator, in a worker thread
        raise MemoryError
        yield  # pragma: no cover

    with anyio.fail_after(10):
        async with associated(scp, contexts=presets.QR_FIND) as assoc:
            async with assoc.find(_query()) as results:
                with pytest.raises(QueryFailed):
                    [m async for m in results]
    assert results.status == Status.OUT_OF_RESOURCES


async def test_no_handler_answers_unable_to_process() -> None:
    with anyio.fail_after(10):
        async with associated(_scp(), contexts=presets.QR_FIND) as assoc:
            async with assoc.find(_query()) as results:
                with pytest.raises(QueryFailed, match="C-FIND failed") as failed:
                    [m async for m in results]
    assert results.status == 0xC000
    assert failed.value.response.error_comment == "no C-FIND handler is registered for this model"


async def test_pending_warning_identifiers_are_matches_too() -> None:
    scp = _scp()

    @scp.on("C-FIND", sop_class=STUDY)
    async def find(request: Any) -> AsyncIterator[Any]:
        yield Status.PENDING_WARNING, _study(*STUDIES[0])

    with anyio.fail_after(10):
        async with associated(scp, contexts=presets.QR_FIND) as assoc:
            async with assoc.find(_query()) as results:
                found = [m.StudyInstanceUID async for m in results]
    assert found == [STUDIES[0][0]]
    assert results.last_pending is not None and results.last_pending.status == 0xFF01


async def test_model_not_accepted_raises_no_accepted_context() -> None:
    scp = AE("QRSCP", supported_contexts=presets.qr_find_supported()[:1])  # patient root only
    with anyio.fail_after(10):
        async with associated(scp, contexts=[*presets.QR_FIND, uids.VERIFICATION]) as assoc:
            with pytest.raises(NoAcceptedContext, match="study Query/Retrieve FIND model"):
                async with assoc.find(_query()):
                    pass  # pragma: no cover
            assert (await assoc.echo()).status == 0


async def test_find_sop_classes_are_not_accepted_without_configuration() -> None:
    scp = AE("PLAIN")
    _serving_list(scp, [])
    with anyio.fail_after(10):
        async with associated(scp, contexts=presets.QR_FIND) as assoc:
            assert all(assoc.find_context(uid) is None for uid in presets.QR_FIND)
            with pytest.raises(NoAcceptedContext):
                async with assoc.find(_query()):
                    pass  # pragma: no cover


# ---------------------------------------------------------------------- C-CANCEL


def _endless_scp(total: int, state: dict[str, Any]) -> AE:
    scp = _scp()

    @scp.on("C-FIND", sop_class=STUDY)
    async def find(request: Any) -> AsyncIterator[Dataset]:
        await request.discard()
        try:
            for i in range(total):
                state["yielded"] = i + 1
                yield _study(f"1.2.3.{i}", "MANY^MATCHES")
        finally:
            state["closed"] = True

    return scp


async def test_leaving_early_cancels_in_memory() -> None:
    state: dict[str, Any] = {"yielded": 0, "closed": False}
    scp = _endless_scp(10_000, state)
    with anyio.fail_after(20):
        async with associated(scp, contexts=[*presets.QR_FIND, uids.VERIFICATION]) as assoc:
            async with assoc.find(_query()) as results:
                async for _ in results:
                    if results.count == 3:
                        break
            assert results.cancelled
            assert results.status == Status.CANCEL and not results.ok
            assert assoc.outstanding == 0
            assert (await assoc.echo()).status == 0
    assert state["closed"] and state["yielded"] < 10_000


async def test_leaving_early_cancels_over_sockets() -> None:
    state: dict[str, Any] = {"yielded": 0, "closed": False}
    scp = _endless_scp(10_000, state)
    with anyio.fail_after(20):
        async with (
            scp.server() as server,
            AE("SCU").associate(
                "127.0.0.1", server.port, contexts=[*presets.QR_FIND, uids.VERIFICATION]
            ) as assoc,
        ):
            async with assoc.find(_query()) as results:
                async for match in results:
                    assert match.PatientName == "MANY^MATCHES"
                    if results.count == 5:
                        break
            assert results.cancelled and results.status == 0xFE00
            assert (await assoc.echo()).status == 0
            # and the association still answers a query to the end
            async with assoc.find(_query()) as again:
                async for _ in again:
                    if again.count == 2:
                        break
            assert again.status == 0xFE00
    assert state["closed"] and state["yielded"] < 10_000


async def test_find_over_sockets() -> None:
    scp = _scp()
    _serving_list(scp, [])
    with anyio.fail_after(20):
        async with (
            scp.server() as server,
            AE("SCU").associate("127.0.0.1", server.port, contexts=presets.QR_FIND) as assoc,
        ):
            async with assoc.find(_query(), priority=2) as results:
                found = [m.StudyInstanceUID async for m in results]
    assert found == [uid for uid, _ in STUDIES]
    assert results.status == 0


# --------------------------------------------------------------------------- with asyncdicom.qr


async def test_handler_matching_with_the_qr_engine(anyio_backend: str) -> None:
    """The handler of docs/api.md: asyncdicom.qr decides the matches; a bad identifier ends
    the operation with the standard's failure status (0xA900)."""
    from asyncdicom.qr import QueryError, parse_query

    records = [_study("1.2.3.1", "DOE^JOHN"), _study("1.2.3.2", "ROE^JANE")]
    for record in records:
        record.StudyDate = "20200505"
    scp = AE("SCP", supported_contexts=presets.qr_find_supported())

    @scp.on("C-FIND", sop_class=STUDY)
    async def on_find(request: Any) -> AsyncIterator[Any]:
        try:
            query = parse_query(await request.dataset(), "study")
        except QueryError as exc:
            yield exc.status
            return
        for record in records:
            if query.matches(record):
                yield query.response(record)

    with anyio.fail_after(10):
        async with associated(scp, contexts=[STUDY]) as assoc:
            wanted = _query(PatientName="DOE*", StudyDate="20200101-20201231")
            async with assoc.find(wanted) as results:
                found = [str(m.StudyInstanceUID) async for m in results]
            assert found == ["1.2.3.1"]
            assert results.status == 0x0000
            bad = Dataset()
            bad.QueryRetrieveLevel = "SERIES"
            bad.SeriesInstanceUID = ""  # no Study Instance UID above: not hierarchical
            with pytest.raises(QueryFailed) as failed:
                async with assoc.find(bad) as results:
                    [m async for m in results]
            assert failed.value.response.status == 0xA900
