"""The Query/Retrieve benchmark's data set: small synthetic CT and MR instances in a cache folder.

Shape: ``patients x studies x series x instances`` (``bench_qr.py`` defaults to 125 x 4 x 2 x 20
= 20 000 instances, 500 studies).  Everything is deterministic, so a cached folder is reused
as long as its manifest matches the shape:

* UIDs are ``2.25.<uuid5>`` of the entity's position (PS3.5 B.2);
* Patient ID ``QRB000042``; Patient Name ``<SURNAME>^P00042`` where the surname cycles over
  :data:`SURNAMES` (distinct three-letter prefixes: ``SMI*`` matches one patient in ten);
* Study Date: the studies are spread evenly over 2015-01-01 .. 2024-12-31 in a shuffled order
  (not by patient), so a date range matches a predictable share of them; Study Time, Accession
  Number (``ACC0000042``), Study ID and Study Description are set too;
* even studies are CT (CT Image Storage), odd ones MR (MR Image Storage); every series of a
  study has its modality; each instance is 64 x 64, 16 bit, about 9 KiB as a file.

``manifest.json`` (written last, so a half-written cache is never taken for a complete one)
lists patients, studies and series with the attributes the queries match on; the benchmark
computes the expected number of matches of every query from it, independently of any peer.
"""

from __future__ import annotations

import datetime
import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"

#: surnames with distinct three-letter prefixes (the Patient Name wildcard query uses one)
SURNAMES = (
    "SMITH",
    "JONES",
    "TAYLOR",
    "BROWN",
    "WILSON",
    "EVANS",
    "THOMAS",
    "JOHNSON",
    "ROBERTS",
    "WALKER",
)
FIRST_DATE = datetime.date(2015, 1, 1)
SPAN_DAYS = 3652  # up to 2024-12-31
ROWS = COLUMNS = 64
MANIFEST = "manifest.json"
#: bump when the generated content changes (an old cache is then rebuilt)
FORMAT_VERSION = 1

_LOW_NIBBLE = bytes(b & 0x0F for b in range(256))
_NAMESPACE = uuid.UUID("6c1b1f0e-7d59-4f7e-9a43-2f0b6a4f9e51")


def uid_for(*parts: object) -> str:
    """A deterministic UID (``2.25.<uuid5 as an integer>``, at most 44 characters)."""
    key = "/".join(str(p) for p in parts)
    return f"2.25.{uuid.uuid5(_NAMESPACE, key).int}"


@dataclass(frozen=True)
class Shape:
    """How many patients, studies per patient, series per study and instances per series."""

    patients: int
    studies: int
    series: int
    instances: int

    @property
    def total_studies(self) -> int:
        return self.patients * self.studies

    @property
    def total_instances(self) -> int:
        return self.patients * self.studies * self.series * self.instances

    @property
    def label(self) -> str:
        return f"{self.patients}x{self.studies}x{self.series}x{self.instances}"


@dataclass
class Series:
    uid: str
    number: int
    modality: str
    instances: int


@dataclass
class Study:
    uid: str
    date: str
    time: str
    accession: str
    study_id: str
    modality: str
    series: list[Series]


@dataclass
class Patient:
    patient_id: str
    name: str
    studies: list[Study]


def _stride(total: int) -> int:
    """A step coprime with ``total`` that scatters consecutive studies over the date span."""
    for candidate in (7919, 104729, 1299709, 15485863):
        if total % candidate:
            return candidate
    return 1  # pragma: no cover - total a multiple of four large primes


def study_date(global_index: int, total: int) -> str:
    """The Study Date of study number ``global_index`` of ``total`` (DA, YYYYMMDD)."""
    slot = (global_index * _stride(total)) % total
    day = FIRST_DATE + datetime.timedelta(days=slot * SPAN_DAYS // total)
    return day.strftime("%Y%m%d")


def build_manifest(shape: Shape) -> list[Patient]:
    """The patients, studies and series of ``shape`` (no files touched)."""
    patients: list[Patient] = []
    for p in range(shape.patients):
        studies: list[Study] = []
        for s in range(shape.studies):
            g = p * shape.studies + s
            modality = "CT" if s % 2 == 0 else "MR"
            series = [
                Series(uid_for("series", p, s, se), se + 1, modality, shape.instances)
                for se in range(shape.series)
            ]
            studies.append(
                Study(
                    uid=uid_for("study", p, s),
                    date=study_date(g, shape.total_studies),
                    time=f"{8 + g % 10:02d}{(g * 7) % 60:02d}00",
                    accession=f"ACC{g:07d}",
                    study_id=str(s + 1),
                    modality=modality,
                    series=series,
                )
            )
        patients.append(Patient(f"QRB{p:06d}", f"{SURNAMES[p % len(SURNAMES)]}^P{p:05d}", studies))
    return patients


def sop_instance_uid(p: int, s: int, se: int, i: int) -> str:
    return uid_for("instance", p, s, se, i)


def instance_path(root: Path, p: int, s: int, se: int, i: int) -> Path:
    return root / f"P{p:05d}" / f"S{s:02d}_{se:02d}_{i:05d}.dcm"


def iter_instances(root: Path, shape: Shape) -> Iterator[Path]:
    """Every file of the data set, patient by patient, study by study, series by series."""
    for p in range(shape.patients):
        for s in range(shape.studies):
            for se in range(shape.series):
                for i in range(shape.instances):
                    yield instance_path(root, p, s, se, i)


def _series_template(patient: Patient, p: int, study: Study, series: Series) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CT_IMAGE_STORAGE if series.modality == "CT" else MR_IMAGE_STORAGE
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study.date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = study.time
    ds.AccessionNumber = study.accession
    ds.Modality = series.modality
    ds.Manufacturer = "asyncdicom benchmark"
    ds.ReferringPhysicianName = "REFERRER^A"
    ds.StudyDescription = f"Benchmark {series.modality} study"
    ds.SeriesDescription = f"Benchmark series {series.number}"
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = f"{1940 + p % 60}{1 + p % 12:02d}{1 + p % 28:02d}"
    ds.PatientSex = "MF"[p % 2]
    ds.StudyInstanceUID = study.uid
    ds.SeriesInstanceUID = series.uid
    ds.StudyID = study.study_id
    ds.SeriesNumber = series.number
    ds.FrameOfReferenceUID = uid_for("frame", series.uid)
    ds.PositionReferenceIndicator = ""
    ds.SliceThickness = "1.0"
    ds.PatientPosition = "HFS"
    if series.modality == "CT":
        ds.KVP = "120"
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
    else:
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime = "500"
        ds.EchoTime = "20"
        ds.EchoTrainLength = 1
        ds.MagneticFieldStrength = "1.5"
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ROWS
    ds.Columns = COLUMNS
    ds.PixelSpacing = [0.5, 0.5]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(ds.SOPClassUID)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def index_headers(patients: list[Patient]) -> Iterator[tuple[Dataset, str]]:
    """The headers of every instance of ``patients`` (no file meta, no pixel data), each with
    the path of a file that does not exist: what an index is filled with through its API when
    only the index is measured."""
    for p, patient in enumerate(patients):
        for s, study in enumerate(patient.studies):
            for se, series in enumerate(study.series):
                template = _series_template(patient, p, study, series)
                del template.file_meta
                for i in range(series.instances):
                    # a new data set sharing the template's elements (those are not changed:
                    # only new ones are added)
                    ds = Dataset()
                    ds.update(template)
                    ds.SOPInstanceUID = sop_instance_uid(p, s, se, i)
                    ds.InstanceNumber = i + 1
                    yield ds, f"/nonexistent/{ds.SOPInstanceUID}.dcm"


def manifest_to_json(shape: Shape, patients: list[Patient]) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "shape": asdict(shape),
        "patients": [asdict(p) for p in patients],
    }


def load_manifest(root: Path, shape: Shape) -> list[Patient] | None:
    """The cached manifest of ``shape`` in ``root``, or None when absent or for another shape."""
    try:
        data = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if data.get("format") != FORMAT_VERSION or data.get("shape") != asdict(shape):
        return None
    return [
        Patient(
            p["patient_id"],
            p["name"],
            [Study(**{**s, "series": [Series(**se) for se in s["series"]]}) for s in p["studies"]],
        )
        for p in data["patients"]
    ]


def ensure_dataset(root: Path, shape: Shape, *, progress: bool = True) -> list[Patient]:
    """Write the data set of ``shape`` into ``root`` unless a complete one is already there;
    return its manifest."""
    cached = load_manifest(root, shape)
    if cached is not None:
        return cached
    (root / MANIFEST).unlink(missing_ok=True)
    patients = build_manifest(shape)
    pixel_bytes = ROWS * COLUMNS * 2
    written = 0
    for p, patient in enumerate(patients):
        (root / f"P{p:05d}").mkdir(parents=True, exist_ok=True)
        for s, study in enumerate(patient.studies):
            for se, series in enumerate(study.series):
                ds = _series_template(patient, p, study, series)
                for i in range(series.instances):
                    uid = sop_instance_uid(p, s, se, i)
                    ds.SOPInstanceUID = uid
                    ds.file_meta.MediaStorageSOPInstanceUID = UID(uid)
                    ds.InstanceNumber = i + 1
                    ds.ImagePositionPatient = [0.0, 0.0, float(i)]
                    # 12-bit noise: deterministic per instance, cheap to make
                    noise = bytearray(random.Random(uid).randbytes(pixel_bytes))
                    noise[1::2] = noise[1::2].translate(_LOW_NIBBLE)
                    ds.PixelData = bytes(noise)
                    ds["PixelData"].VR = "OW"
                    dcmwrite(instance_path(root, p, s, se, i), ds, enforce_file_format=True)
                    written += 1
        if progress and (p + 1) % max(1, shape.patients // 10) == 0:
            print(f"  data set: {written:,}/{shape.total_instances:,} instances", flush=True)
    (root / MANIFEST).write_text(json.dumps(manifest_to_json(shape, patients)))
    return patients
