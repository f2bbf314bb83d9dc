"""Synthetic CT instances for tests, benchmarks and the demo (no patient data involved).

The instances follow the CT Image IOD (PS3.3 A.3) closely enough for any C-STORE SCP to accept
them as CT Image Storage (1.2.840.10008.5.1.4.1.1.2): Patient, General Study, General Series,
Frame of Reference, General Equipment, General/CT Image, Image Plane, Image Pixel and SOP Common
modules with plausible values.  Pixel data is 16-bit unsigned, MONOCHROME2, pseudo-random from
``seed``.  UIDs are fresh UUID-derived UIDs (``2.25.<uuid>``, PS3.5 B.2) on every call.
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from .names import safe_filename

__all__ = ["CT_IMAGE_STORAGE", "make_ct_instance", "write_ct_files"]

#: CT Image Storage SOP Class UID (PS3.4 B.5).
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

_MAX_SIDE = 0xFFFF  # Rows and Columns are US (PS3.3 C.7.6.3)


def _shape_for(size_bytes: int) -> tuple[int, int]:
    """Rows x Columns of 2-byte pixels: at least ``size_bytes`` (at most one row more), >= 1x1."""
    pixels = max(1, (size_bytes + 1) // 2)
    columns = min(_MAX_SIDE, max(1, math.isqrt(pixels)))
    rows = min(_MAX_SIDE, -(-pixels // columns))
    return rows, columns


def make_ct_instance(
    size_bytes: int,
    *,
    patient_id: str = "ANON",
    seed: int = 0,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    instance_number: int = 1,
) -> Dataset:
    """Return a CT Image Storage data set whose Pixel Data is about ``size_bytes`` long.

    Pixel Data is ``size_bytes`` rounded up to whole rows (up to 65535 x 65535 pixels); the
    encoded instance adds roughly 1 KiB of attributes.  ``seed`` makes the pixel values
    reproducible; the UIDs are always new unless a study or series UID is given (to put several
    instances in one series).  The data set carries a ``file_meta`` with Explicit VR Little
    Endian so that it can be saved directly.
    """
    if size_bytes < 0:
        raise ValueError("size_bytes must be >= 0")
    rows, columns = _shape_for(size_bytes)
    sop_instance_uid = generate_uid(prefix=None)

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyDate = "20240101"
    ds.SeriesDate = "20240101"
    ds.ContentDate = "20240101"
    ds.StudyTime = "120000"
    ds.SeriesTime = "120000"
    ds.ContentTime = "120000"
    ds.AccessionNumber = ""
    ds.Modality = "CT"
    ds.Manufacturer = "asyncdicom synthetic"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Synthetic CT"
    ds.SeriesDescription = "Synthetic CT series"
    ds.PatientName = "SYNTHETIC^PATIENT"
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.SliceThickness = "1.0"
    ds.KVP = "120"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_instance_uid or generate_uid(prefix=None)
    ds.SeriesInstanceUID = series_instance_uid or generate_uid(prefix=None)
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [0.0, 0.0, float(instance_number)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.FrameOfReferenceUID = generate_uid(prefix=None)
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.PixelSpacing = [0.5, 0.5]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    # randbytes is fast (no per-pixel Python work) and reproducible for a given seed.
    ds.PixelData = random.Random(seed).randbytes(rows * columns * 2)
    ds["PixelData"].VR = "OW"

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(CT_IMAGE_STORAGE)
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def write_ct_files(
    folder: str | os.PathLike[str],
    count: int,
    size_bytes: int,
    *,
    patient_id: str = "ANON",
    seed: int = 0,
) -> list[Path]:
    """Write ``count`` synthetic CT instances of one series into ``folder`` (created if needed).

    Files are Part 10, Explicit VR Little Endian, named ``<SOP Instance UID>.dcm``.  Instance
    ``i`` uses pixel seed ``seed + i``.  Returns the paths in instance order.
    """
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    study = generate_uid(prefix=None)
    series = generate_uid(prefix=None)
    paths: list[Path] = []
    for index in range(count):
        ds = make_ct_instance(
            size_bytes,
            patient_id=patient_id,
            seed=seed + index,
            study_instance_uid=study,
            series_instance_uid=series,
            instance_number=index + 1,
        )
        path = target / safe_filename(str(ds.SOPInstanceUID))
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
