"""Instance Availability Notification (PS3.4 Annex R) in memory: the receiver's answers and
what it hands to the application; the SOP class is accepted only with a receiver."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from asyncdicom import AE, SupportedContext
from asyncdicom.config import DEFAULT_TRANSFER_SYNTAXES
from asyncdicom.errors import NoAcceptedContext
from asyncdicom.services import INSTANCE_AVAILABILITY_NOTIFICATION, AvailabilityReceiver
from asyncdicom.testing import associated

pytestmark = pytest.mark.anyio

IAN = INSTANCE_AVAILABILITY_NOTIFICATION
STUDY = "1.2.826.0.1.3680043.10.9.33.1"


def notification(**keywords: object) -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID = STUDY
    series = Dataset()
    series.SeriesInstanceUID = "1.2.826.0.1.3680043.10.9.33.2"
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ref.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.10.9.33.3"
    ref.InstanceAvailability = "ONLINE"
    series.ReferencedSOPSequence = [ref]
    ds.ReferencedSeriesSequence = [series]
    for keyword, value in keywords.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


async def test_a_notification_reaches_the_application() -> None:
    got: list[tuple[str, str]] = []

    def on_notification(uid: str, ds: Dataset) -> None:  # plain: in a worker thread
        got.append((uid, str(ds.StudyInstanceUID)))

    scp = AE("IANSCP")
    scp.install(AvailabilityReceiver(on_notification))
    async with associated(scp, contexts=[IAN]) as assoc:
        rsp = await assoc.notify_availability(notification(), sop_instance="1.2.3.4")
        made = await assoc.notify_availability(notification())
    assert rsp.status == 0x0000 and made.status == 0x0000
    assert got[0] == ("1.2.3.4", STUDY)
    # without a UID the SCU makes one, and the response carries it back
    assert got[1][0] and got[1][0] == made.message.affected_sop_instance_uid  # type: ignore[union-attr]


@pytest.mark.parametrize("missing", ["StudyInstanceUID", "ReferencedSeriesSequence"])
async def test_a_required_attribute_missing_is_0120(missing: str) -> None:
    got: list[str] = []
    scp = AE("IANSCP")
    scp.install(AvailabilityReceiver(lambda uid, ds: got.append(uid)))
    async with associated(scp, contexts=[IAN]) as assoc:
        rsp = await assoc.notify_availability(notification(**{missing: None}))
    assert rsp.status == 0x0120  # Missing Attribute (PS3.7 C.4.x)
    assert missing in str(rsp.message.error_comment)  # type: ignore[union-attr]
    assert got == []


async def test_an_application_failure_is_0110() -> None:
    async def on_notification(uid: str, ds: Dataset) -> None:
        raise RuntimeError("the RIS is down")

    scp = AE("IANSCP")
    scp.install(AvailabilityReceiver(on_notification))
    async with associated(scp, contexts=[IAN]) as assoc:
        rsp = await assoc.notify_availability(notification())
    assert rsp.status == 0x0110


async def test_without_a_receiver() -> None:
    async with associated(AE("PLAIN"), contexts=[IAN]) as assoc:
        with pytest.raises(NoAcceptedContext):
            await assoc.notify_availability(notification())
    # accepted by configuration but no receiver: the service's answer
    scp = AE("PLAIN", supported_contexts=[SupportedContext(IAN, DEFAULT_TRANSFER_SYNTAXES)])
    async with associated(scp, contexts=[IAN]) as assoc:
        rsp = await assoc.notify_availability(notification())
    assert rsp.status == 0x0110
    assert "notification" in str(rsp.message.error_comment)  # type: ignore[union-attr]
