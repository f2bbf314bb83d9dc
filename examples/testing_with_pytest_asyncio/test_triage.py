"""Tests of triage.py with pytest-asyncio: ``pytest`` in this folder runs them.

:func:`asyncdicom.testing.associated` serves the AE over an in-memory pipe and yields an
association to it, so each test is a few lines and needs no free port.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from triage import REFUSED, build_scp

from asyncdicom.protocol import uids
from asyncdicom.testing import associated

CT = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage


def instance(modality: str, patient_id: str | None = "P1") -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = modality
    if patient_id is not None:
        ds.PatientID = patient_id
    return ds


@pytest.mark.asyncio
async def test_instances_are_sorted_by_modality(tmp_path: Path) -> None:
    sent = [instance("CT"), instance("MR"), instance("CT")]
    async with associated(build_scp(tmp_path), contexts=[CT]) as assoc:
        for ds in sent:
            assert (await assoc.store(ds)).status == 0x0000
    assert sorted(p.name for p in (tmp_path / "CT").iterdir()) == sorted(
        f"{ds.SOPInstanceUID}.dcm" for ds in sent if ds.Modality == "CT"
    )
    assert [p.name for p in (tmp_path / "MR").iterdir()] == [f"{sent[1].SOPInstanceUID}.dcm"]


@pytest.mark.asyncio
async def test_an_instance_without_patient_id_is_refused_and_not_kept(tmp_path: Path) -> None:
    contexts = [CT, uids.VERIFICATION]
    async with associated(build_scp(tmp_path), contexts=contexts) as assoc:
        assert (await assoc.store(instance("CT", patient_id=None))).status == REFUSED
        assert (await assoc.echo()).status == 0x0000  # the association goes on
    assert not (tmp_path / "CT").exists()
    assert list((tmp_path / ".incoming").iterdir()) == []


@pytest.mark.asyncio
async def test_verification_is_answered(tmp_path: Path) -> None:
    async with associated(build_scp(tmp_path), contexts=[uids.VERIFICATION]) as assoc:
        assert (await assoc.echo()).status == 0x0000


@pytest.mark.anyio
async def test_anyio_marked_tests_run_beside_them(tmp_path: Path) -> None:
    """anyio's pytest plugin (asyncdicom's own test suite uses it) and pytest-asyncio work
    side by side: this test is run by anyio's plugin, once per backend it finds installed."""
    async with associated(build_scp(tmp_path), contexts=[CT]) as assoc:
        assert (await assoc.store(instance("OT"))).status == 0x0000
    assert len(list((tmp_path / "OT").iterdir())) == 1
