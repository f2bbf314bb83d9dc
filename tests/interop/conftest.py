"""Fixtures that start real DICOM peers (DCMTK, pynetdicom) on 127.0.0.1.

The peers are external processes managed by :mod:`asyncdicom.testing.peers`; fixtures here are
synchronous (a subprocess needs no event loop) and work with ``@pytest.mark.anyio`` tests.

Missing DCMTK programs make the tests that need them FAIL, not skip: CI installs DCMTK, and a
silent skip would hide a broken CI image.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pydicom.data
import pytest
from pydicom import dcmread

from asyncdicom.testing.peers import (
    DCMTK_PROGRAMS,
    DcmtkStoreSCP,
    PynetdicomSCP,
    missing_dcmtk_programs,
)

# pydicom's bundled samples (never the download helpers). Chosen to be valid storage instances
# with distinct SOP Instance UIDs, in uncompressed little-endian transfer syntaxes (so any SCP
# accepts them with default settings), covering: explicit and implicit VR, images, a
# multi-frame RT Dose, an RT Plan and an SR without pixel data, and a ~290 kB ECG waveform that
# spans many PDUs at the default 16 kB PDU size.
SAMPLE_FILE_NAMES: tuple[str, ...] = (
    "CT_small.dcm",  # CT Image, explicit VR LE
    "MR_small.dcm",  # MR Image, explicit VR LE
    "rtplan.dcm",  # RT Plan, implicit VR LE, no pixel data
    "rtdose.dcm",  # RT Dose, implicit VR LE, multi-frame
    "test-SR.dcm",  # Comprehensive SR, explicit VR LE
    "waveform_ecg.dcm",  # 12-lead ECG, explicit VR LE, large
)

SAMPLES_DIR = Path(pydicom.data.__file__).parent / "test_files"


def _show_log(peer: DcmtkStoreSCP | PynetdicomSCP) -> None:
    """Stop the peer and print its log: pytest shows it (teardown stderr) if the test failed."""
    peer.stop()
    log = peer.log_text()
    if log:
        sys.stderr.write(f"--- {peer.name} log ---\n{log}\n")


@pytest.fixture(scope="session")
def require_dcmtk() -> None:
    """Fail (never skip) when a DCMTK program the interop tests use is not on PATH."""
    missing = missing_dcmtk_programs(DCMTK_PROGRAMS)
    if missing:
        pytest.fail(
            "DCMTK is required for the interop tests but these programs are not on PATH: "
            + ", ".join(missing)
            + ". Install DCMTK (Debian/Ubuntu: `apt-get install dcmtk`).",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def sample_files() -> list[Path]:
    """Paths of the sample instances, each checked to be a usable storage instance."""
    files: list[Path] = []
    seen_uids: set[str] = set()
    for name in SAMPLE_FILE_NAMES:
        path = SAMPLES_DIR / name
        if not path.is_file():
            pytest.fail(f"pydicom sample {name} not found in {SAMPLES_DIR}", pytrace=False)
        ds = dcmread(path)
        for keyword in ("SOPClassUID", "SOPInstanceUID"):
            if not ds.get(keyword):
                pytest.fail(f"sample {name} has no {keyword}", pytrace=False)
        if not ds.file_meta.get("TransferSyntaxUID"):
            pytest.fail(f"sample {name} has no file meta Transfer Syntax UID", pytrace=False)
        uid = str(ds.SOPInstanceUID)
        if uid in seen_uids:
            pytest.fail(f"sample {name} repeats SOP Instance UID {uid}", pytrace=False)
        seen_uids.add(uid)
        files.append(path)
    return files


@pytest.fixture
def dcmtk_storescp(require_dcmtk: None, tmp_path: Path) -> Iterator[DcmtkStoreSCP]:
    """A running DCMTK storescp (``+xa``) writing to a fresh directory.

    Attributes: ``host``, ``port``, ``aet``, ``output_dir``; ``received_files()``.
    """
    with DcmtkStoreSCP(output_dir=tmp_path / "dcmtk-storescp") as scp:
        yield scp
        _show_log(scp)


@pytest.fixture
def dcmtk_storescp_factory(
    require_dcmtk: None,
) -> Iterator[Callable[..., DcmtkStoreSCP]]:
    """Start storescp with custom options (``DcmtkStoreSCP`` keyword arguments); all are
    stopped at teardown."""
    with ExitStack() as stack:
        started: list[DcmtkStoreSCP] = []

        def start(**kwargs: Any) -> DcmtkStoreSCP:
            started.append(stack.enter_context(DcmtkStoreSCP(**kwargs)))
            return started[-1]

        yield start
        for scp in started:
            _show_log(scp)


@pytest.fixture
def pynetdicom_scp(tmp_path: Path) -> Iterator[PynetdicomSCP]:
    """A running pynetdicom Storage/Verification SCP (separate process) writing to a fresh
    directory. Attributes: ``host``, ``port``, ``aet``, ``output_dir``; ``received_files()``;
    ``stats`` after ``stop()``."""
    with PynetdicomSCP(output_dir=tmp_path / "pynetdicom-scp") as scp:
        yield scp
        _show_log(scp)


@pytest.fixture
def pynetdicom_scp_factory() -> Iterator[Callable[..., PynetdicomSCP]]:
    """Start pynetdicom SCPs with custom options (``PynetdicomSCP`` keyword arguments); all are
    stopped at teardown."""
    with ExitStack() as stack:
        started: list[PynetdicomSCP] = []

        def start(**kwargs: Any) -> PynetdicomSCP:
            started.append(stack.enter_context(PynetdicomSCP(**kwargs)))
            return started[-1]

        yield start
        for scp in started:
            _show_log(scp)
