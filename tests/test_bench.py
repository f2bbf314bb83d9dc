"""The load-test engine (asyncdicom.loadtest) against in-process AEs, and ``asyncdicom bench``
as a subprocess against in-process peers and ``asyncdicom storescp``."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from io import BytesIO
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from asyncdicom import AE
from asyncdicom.ae import Server
from asyncdicom.loadtest import LoadResult, LoadSpec, new_histogram, run_load
from asyncdicom.loadtest.chart import write_percentile_chart
from asyncdicom.loadtest.engine import LoadGenerator
from asyncdicom.loadtest.newuids import (
    SERIES_INSTANCE_UID,
    SOP_INSTANCE_UID,
    STUDY_INSTANCE_UID,
    UIDPatchError,
    locate_uids,
    patch_uids,
)
from asyncdicom.loadtest.processes import split
from asyncdicom.presets import qr_find_supported
from asyncdicom.storage.synthetic import write_ct_files
from asyncdicom.users import UserStore
from tests.cli_main import run_main
from tests.test_cli import GUARD, StoreSCPProcess, app_process, err, run_cli, storage_scp

pytestmark = pytest.mark.anyio

_UID_KEYWORDS = {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"}


@asynccontextmanager
async def serving(scp: AE) -> AsyncIterator[Server]:
    with anyio.fail_after(GUARD):
        async with scp.server("127.0.0.1", 0) as server:
            yield server


def spec(port: int, **kw: Any) -> LoadSpec:
    kw.setdefault("called_aet", "SCP")
    return LoadSpec("127.0.0.1", port, **kw)


# ------------------------------------------------------------------------------------ engine


async def test_closed_loop_count_with_a_window(anyio_backend: str) -> None:
    """Each association keeps `window` operations outstanding: the peer's handler only
    answers once four echoes are in flight at once (one at a time would never get there)."""
    scp = AE("SCP", async_ops_window=(8, 8))
    in_flight = 0
    four = anyio.Event()

    @scp.on_echo
    async def on_echo(request: Any) -> int:
        nonlocal in_flight
        in_flight += 1
        if in_flight >= 4:
            four.set()
        await four.wait()
        in_flight -= 1
        return 0

    async with serving(scp) as server:
        result = await run_load(spec(server.port, window=4, count=20))
    assert result.operations == 20 and result.errors == 0
    assert result.latency.get_total_count() == 20
    assert result.setup.get_total_count() == result.associations_opened == 1
    assert result.negotiated["max_operations_invoked"] == 4
    assert result.negotiated["operations_outstanding"] == 4


async def test_many_associations_each_set_up_once(anyio_backend: str) -> None:
    scp = AE("SCP")
    calling: set[int] = set()

    @scp.on_echo
    async def on_echo(request: Any) -> int:
        calling.add(request.association.id)
        return 0

    async with serving(scp) as server:
        result = await run_load(spec(server.port, associations=5, count=50))
    assert result.operations == 50 and result.errors == 0
    assert result.associations_opened == 5 == result.setup.get_total_count()
    assert len(calling) == 5


async def test_rejecting_peer_counts_rejected(anyio_backend: str) -> None:
    scp = AE("SCP", require_called_ae_title=True)
    async with serving(scp) as server:
        result = await run_load(spec(server.port, called_aet="SOMEONE-ELSE", count=3))
    assert result.operations == 3
    assert result.errors_by_kind == {"rejected": 3}
    assert result.latency.get_total_count() == 0


async def test_aborting_peer_counts_aborted_and_reopens(anyio_backend: str) -> None:
    """The peer aborts the association at every third C-ECHO: that echo is an "aborted"
    error and the next operations go on a new association."""
    scp = AE("SCP")
    seen = 0

    @scp.on_echo
    async def on_echo(request: Any) -> int:
        nonlocal seen
        seen += 1
        if seen % 3 == 0:
            await request.association.abort(linger=0)
        return 0

    async with serving(scp) as server:
        result = await run_load(spec(server.port, count=9))
    assert result.operations == 9
    assert result.errors_by_kind == {"aborted": 3}
    assert result.latency.get_total_count() == 6
    assert result.associations_opened == 3


async def test_failure_status_is_counted_by_code(anyio_backend: str) -> None:
    scp = AE("SCP")
    n = 0

    @scp.on_echo
    async def on_echo(request: Any) -> int:
        nonlocal n
        n += 1
        return 0xC001 if n % 2 else 0x0001  # a Warning is not an error

    async with serving(scp) as server:
        result = await run_load(spec(server.port, count=6))
    assert result.operations == 6
    assert result.errors_by_kind == {"0xC001": 3}


async def test_open_loop_follows_the_schedule(anyio_backend: str) -> None:
    async with serving(AE("SCP")) as server:
        result = await run_load(spec(server.port, associations=2, rate=100, duration=1))
    assert result.operations == 100  # 100/s for 1 s, exactly (the operations due in [0, 1 s))
    assert result.errors == 0


async def test_open_loop_latency_counts_from_the_scheduled_time(anyio_backend: str) -> None:
    """Coordinated omission avoided: operations that could only start late (here: the
    schedule began half a second ago) count the wait in their latency."""
    async with serving(AE("SCP")) as server:
        generator = LoadGenerator(spec(server.port, rate=100, count=10))
        result = await generator.run(start=anyio.current_time() - 0.5)
    assert result.operations == 10
    # operation i was due at start + i/100 s, so at least 0.5 - 0.09 s before it was sent
    assert result.latency.get_min_value() >= 400_000


async def test_find(anyio_backend: str) -> None:
    scp = AE("SCP", supported_contexts=tuple(qr_find_supported()))
    queries: list[str] = []

    @scp.on("C-FIND")
    async def on_find(request: Any) -> AsyncIterator[Dataset]:
        ds = await request.dataset()
        queries.append(ds.PatientID)
        for n in range(2):
            match = Dataset()
            match.QueryRetrieveLevel = "STUDY"
            match.StudyInstanceUID = f"1.2.3.{n}"
            yield match

    async with serving(scp) as server:
        result = await run_load(
            spec(server.port, operation="find", query=(("PatientID", "P1"),), count=4)
        )
    assert result.operations == 4 and result.errors == 0
    assert queries == ["P1"] * 4


async def test_store_new_uids_change_only_the_uids(tmp_path: Path, anyio_backend: str) -> None:
    files = write_ct_files(tmp_path / "src", 2, 3000)
    received = tmp_path / "received"
    async with serving(storage_scp(received)) as server:
        result = await run_load(
            spec(
                server.port,
                called_aet="STORESCP",
                operation="store",
                files=tuple(files),
                count=4,
                new_uids=True,
            )
        )
    assert result.operations == 4 and result.errors == 0
    # the new UIDs are longer than the synthetic ones
    assert result.bytes_sent > 2 * sum(len(_dataset_bytes(f)) for f in files)
    originals = {str(pydicom.dcmread(f).InstanceNumber): pydicom.dcmread(f) for f in files}
    stored = [pydicom.dcmread(p) for p in sorted(received.iterdir())]
    assert len(stored) == 4
    seen: set[str] = set()
    for ds in stored:
        original = originals[str(ds.InstanceNumber)]
        for keyword in _UID_KEYWORDS:
            assert ds[keyword].value != original[keyword].value
            seen.add(ds[keyword].value)
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.PixelData == original.PixelData
        kept = [e for e in original if e.keyword not in _UID_KEYWORDS]
        assert [(e.tag, e.value) for e in ds if e.keyword not in _UID_KEYWORDS] == [
            (e.tag, e.value) for e in kept
        ]
    # copy 0 and copy 1 of the two-instance series: two studies, two series, four instances
    assert len({ds.StudyInstanceUID for ds in stored}) == 2
    assert len({ds.SeriesInstanceUID for ds in stored}) == 2
    assert len({ds.SOPInstanceUID for ds in stored}) == 4
    by_copy: dict[str, set[str]] = {}
    for ds in stored:
        by_copy.setdefault(ds.StudyInstanceUID, set()).add(ds.SeriesInstanceUID)
    assert all(len(series) == 1 for series in by_copy.values())


def _dataset_bytes(path: Path) -> bytes:
    from asyncdicom.storage.reader import read_part10_for_send

    return read_part10_for_send(path).read_bytes()


# ------------------------------------------------------------------------------------ new UIDs


def _tricky_dataset() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.3.4.5"
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3.9"
    ds.ReferencedImageSequence = Sequence([item])  # (0008,1140): between the UIDs
    ds.PatientName = "Doe^J"
    ds.StudyInstanceUID = "1.2.3.6"
    # no Series Instance UID: it is inserted
    ds.StudyID = "S1"
    ds.add_new(0x7FE00010, "OB", b"\x01\x02" * 8)
    return ds


@pytest.mark.parametrize(
    ("syntax", "undefined_lengths"),
    [
        (ImplicitVRLittleEndian, True),
        (ExplicitVRLittleEndian, True),
        (ExplicitVRLittleEndian, False),
        (ExplicitVRBigEndian, False),
    ],
)
def test_patch_uids_keeps_everything_else(syntax: str, undefined_lengths: bool) -> None:
    ds = _tricky_dataset()
    if undefined_lengths:
        ds.ReferencedImageSequence.is_undefined_length = True
        ds.ReferencedImageSequence[0].is_undefined_length_sequence_item = True
    data = _encode(ds, syntax)
    where = locate_uids(data, syntax)
    assert where.values[SOP_INSTANCE_UID] == "1.2.3.4.5"
    assert where.values[STUDY_INSTANCE_UID] == "1.2.3.6"
    assert where.values[SERIES_INSTANCE_UID] == ""
    new = {SOP_INSTANCE_UID: "9.8.7", STUDY_INSTANCE_UID: "9.8.6.5", SERIES_INSTANCE_UID: "9.1"}
    patched = patch_uids(data, where, new)
    back = _read_raw(patched, syntax)
    assert back.SOPInstanceUID == "9.8.7"
    assert back.StudyInstanceUID == "9.8.6.5"
    assert back.SeriesInstanceUID == "9.1"
    for keyword in ("SOPClassUID", "PatientName", "StudyID", "PixelData"):
        assert back[keyword].value == ds[keyword].value
    assert back.ReferencedImageSequence[0].ReferencedSOPInstanceUID == "1.2.3.9"


def _encode(ds: Dataset, syntax: str) -> bytes:
    out = DicomBytesIO()
    out.is_little_endian = syntax != ExplicitVRBigEndian
    out.is_implicit_VR = syntax == ImplicitVRLittleEndian
    write_dataset(out, ds)
    return bytes(out.getvalue())


def _read_raw(data: bytes, syntax: str) -> Dataset:
    return read_dataset(
        BytesIO(data),
        is_implicit_VR=syntax == ImplicitVRLittleEndian,
        is_little_endian=syntax != ExplicitVRBigEndian,
    )


def _uids(**values: str) -> bytes:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return _encode(ds, ExplicitVRLittleEndian)


def test_patch_uids_corrects_group_lengths() -> None:
    group8 = _uids(SOPInstanceUID="1.2.3")
    group20 = _uids(StudyInstanceUID="1.2.4", SeriesInstanceUID="1.2.5")
    data = (
        struct.pack("<HH2sHI", 8, 0, b"UL", 4, len(group8))
        + group8
        + struct.pack("<HH2sHI", 0x20, 0, b"UL", 4, len(group20))
        + group20
    )
    where = locate_uids(data, ExplicitVRLittleEndian)
    new = {SOP_INSTANCE_UID: "1.2.345.6", STUDY_INSTANCE_UID: "7.7", SERIES_INSTANCE_UID: "8.88.8"}
    back = _read_raw(patch_uids(data, where, new), ExplicitVRLittleEndian)
    assert back[0x00080000].value == len(_uids(SOPInstanceUID="1.2.345.6"))
    assert back[0x00200000].value == len(_uids(StudyInstanceUID="7.7", SeriesInstanceUID="8.88.8"))
    assert (back.SOPInstanceUID, back.StudyInstanceUID) == ("1.2.345.6", "7.7")
    assert back.SeriesInstanceUID == "8.88.8"


def test_deflated_data_set_cannot_be_patched() -> None:
    with pytest.raises(UIDPatchError, match="deflated"):
        locate_uids(b"", "1.2.840.10008.1.2.1.99")


# ------------------------------------------------------------------------------------ results


def test_results_merge_after_encoding() -> None:
    one, two = LoadResult(operations=3, elapsed=1.0), LoadResult(operations=2, elapsed=2.0)
    for value in (1000, 2000, 3000):
        one.latency.record_value(value)
    for value in (50_000, 60_000):
        two.latency.record_value(value)
    one.errors_by_kind = {"aborted": 1}
    two.errors_by_kind = {"aborted": 2, "0xA700": 1}
    merged = LoadResult.merged(
        [LoadResult.decode(json.loads(json.dumps(r.encode()))) for r in (one, two)]
    )
    assert merged.operations == 5 and merged.elapsed == 2.0
    assert merged.errors_by_kind == {"aborted": 3, "0xA700": 1}
    assert merged.latency.get_total_count() == 5
    assert 59.9 <= merged.summary()["latency_ms"]["max"] <= 60.1
    assert merged.summary()["association_setup_ms"]["p50"] == 0.0


@pytest.mark.parametrize(
    ("rate", "duration", "expected"),
    [(100, 1, 100), (10, 0.3, 3), (30, 0.1, 3), (7, 0.5, 4), (1000, 0.001, 1), (3, 0.1, 1)],
)
async def test_open_loop_runs_exactly_rate_times_duration(
    anyio_backend: str, rate: float, duration: float, expected: int
) -> None:
    """The operations due within the duration, counted once: rate x duration when it is a
    whole number (0.3 s at 10/s is 3, though 3/10 is not below 0.3 in floating point for
    every start time), one more when it is not (0.5 s at 7/s: due at 0, 1/7, 2/7, 3/7 s)."""
    from asyncdicom.loadtest.engine import planned_operations

    assert planned_operations(rate, duration) == expected
    seen = 0
    scp = AE("SCP")

    @scp.on_echo
    async def on_echo(request: Any) -> int:
        nonlocal seen
        seen += 1
        return 0

    async with serving(scp) as server:
        for start in (None, anyio.current_time() + 1e6 / 7 % 1):
            seen = 0
            generator = LoadGenerator(spec(server.port, rate=rate, duration=duration))
            result = await generator.run(start=start)
            assert result.operations == expected == seen, start
            assert result.errors == 0


@pytest.mark.parametrize("processes", [2, 3])
def test_split_shares_the_open_loop_operations(processes: int) -> None:
    """Split over worker processes, an open-loop run does the same rate x duration operations
    (each share's own rate x duration would round on its own: 5/s for 1 s over 2 processes
    would be 2 + 2 or 3 + 3)."""
    from asyncdicom.loadtest.engine import planned_operations

    for rate, duration in ((5.0, 1.0), (100.0, 1.0), (7.0, 0.5), (10.0, 0.3)):
        base = LoadSpec("h", 1, associations=6, rate=rate, duration=duration)
        shares = split(base, processes)
        assert sum(s.count or 0 for s, _ in shares) == planned_operations(rate, duration)
        assert all(s.duration is None for s, _ in shares)
    capped = split(LoadSpec("h", 1, associations=6, rate=100.0, duration=1.0, count=7), 2)
    assert [s.count for s, _ in capped] == [4, 3]


async def test_refused_connections_count_as_connect_errors(anyio_backend: str) -> None:
    """Nobody listens on the port: every operation fails with the kind ``connect``."""
    from tests.test_cli import free_port

    result = await run_load(spec(free_port(), count=3))
    assert result.operations == 3
    assert result.errors_by_kind == {"connect": 3}
    assert result.associations_opened == 0


async def test_a_peer_that_does_not_answer_counts_as_timeout(anyio_backend: str) -> None:
    """The peer's C-ECHO handler never returns: each operation ends at the DIMSE timeout, kind
    ``timeout``; and a peer that accepts the connection but never answers the A-ASSOCIATE-RQ
    ends each at the ACSE timeout, kind ``timeout`` too."""
    from asyncdicom.config import Timeouts

    stuck = anyio.Event()
    scp = AE("SCP")

    @scp.on_echo
    async def on_echo(request: Any) -> int:
        await stuck.wait()
        return 0

    try:
        async with serving(scp) as server:
            timeouts = Timeouts(dimse=0.2, acse=5.0)
            result = await run_load(spec(server.port, count=2, timeouts=timeouts))
    finally:
        stuck.set()
    assert result.operations == 2
    assert result.errors_by_kind == {"timeout": 2}

    async def silent(stream: Any) -> None:
        async with stream:
            await stuck_forever.wait()

    stuck_forever = anyio.Event()
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, silent)
            result = await run_load(spec(port, count=2, timeouts=Timeouts(acse=0.2)))
            stuck_forever.set()
            tg.cancel_scope.cancel()
    assert result.operations == 2
    assert result.errors_by_kind == {"timeout": 2}
    assert result.associations_opened == 0


def test_split_over_processes() -> None:
    base = LoadSpec("h", 1, associations=5, count=11, rate=100.0)
    shares = split(base, 2)
    assert [s.associations for s, _ in shares] == [3, 2]
    assert [s.count for s, _ in shares] == [6, 5]
    assert [s.rate for s, _ in shares] == [50.0, 50.0]
    assert [offset for _, offset in shares] == [0.0, 0.01]
    assert len(split(LoadSpec("h", 1, associations=1, count=5), 4)) == 1


def test_percentile_chart_is_a_png(tmp_path: Path) -> None:
    h = new_histogram()
    for value in range(100, 10_000, 37):
        h.record_value(value)
    path = tmp_path / "chart.png"
    write_percentile_chart(
        path, [("latency", h), ("setup", new_histogram())], width=300, height=200
    )
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (300, 200)
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0] == zlib.crc32(
            kind + body
        )
        if kind == b"IDAT":
            idat += body
        pos += 12 + length
    pixels = zlib.decompress(idat)
    assert len(pixels) == height * (1 + 3 * width)
    # the line is drawn: some pixels have the first curve's colour
    assert bytes((31, 119, 180)) in pixels


def _png_rows(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, RGB rows each after its filter byte) of a chart (one IDAT, filter 0)."""
    width, height = struct.unpack(">II", data[16:24])
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    return width, height, zlib.decompress(idat)


def _ink_rows(data: bytes, color: tuple[int, int, int]) -> list[int]:
    """The rows of a chart holding a pixel of ``color``."""
    width, height, pixels = _png_rows(data)
    stride = 1 + 3 * width
    return [y for y in range(height) if bytes(color) in pixels[y * stride + 1 : (y + 1) * stride]]


@pytest.mark.parametrize(
    ("samples", "nines"), [(5, 1.0), (40, 1.6020599913), (1000, 3.0), (10**7, 5.0)]
)
def test_the_percentile_axis_ends_where_the_samples_do(samples: int, nines: float) -> None:
    """The x axis ran to 99.999 % whatever the count: 40 samples drew their maximum as a flat
    tail over four decades.  It ends at 1 - 1/n (97.5 % for 40), 90 % at least, 99.999 % at
    most."""
    from asyncdicom.loadtest.chart import percentile_curve, supported_nines

    h = new_histogram()
    h.record_value(1000, samples)  # record_value(value, count)
    assert supported_nines([h, new_histogram()]) == pytest.approx(nines)
    points = percentile_curve(h, supported_nines([h]))
    assert points[0][0] == 0.0 and points[-1][0] == pytest.approx(nines)


def test_the_chart_has_a_title_and_a_legend_apart_from_the_axis_label(tmp_path: Path) -> None:
    """The chart had no title, and its legend crowded the y axis's label.  Now the title's
    lines come first (in the axis colour), then one line with the axis label on the left and
    the legend's colour keys on the right half, then the plot."""
    from asyncdicom.loadtest.chart import COLORS

    h = new_histogram()
    for value in range(100, 10_000, 37):
        h.record_value(value)
    path = tmp_path / "titled.png"
    write_percentile_chart(path, [("latency", h)], title="bench echo: SCP\n40 operations")
    width, height, pixels = _png_rows(path.read_bytes())
    stride = 1 + 3 * width
    white = bytes((255, 255, 255))

    def inked(y: int) -> list[bytes]:
        row = pixels[y * stride + 1 : (y + 1) * stride]
        return [row[i : i + 3] for i in range(0, len(row), 3) if row[i : i + 3] != white]

    rows = [y for y in range(height) if inked(y)]
    title = [y for y in rows if y < rows[0] + 40]
    assert all(c == bytes((60, 60, 60)) for y in title[:10] for c in inked(y))
    key_rows = [y for y in _ink_rows(path.read_bytes(), COLORS[0]) if y < height // 4]
    assert key_rows and min(key_rows) > rows[0] + 7 * 2 * 2, (rows[:5], key_rows)
    for y in key_rows:
        row = pixels[y * stride + 1 : (y + 1) * stride]
        columns = [i // 3 for i in range(0, len(row), 3) if row[i : i + 3] == bytes(COLORS[0])]
        assert min(columns) > width // 2, columns


def test_chart_title_names_the_run() -> None:
    from datetime import datetime, timezone

    from asyncdicom.cli.bench import chart_title

    result = LoadResult(operations=1234)
    spec_ = LoadSpec("::1", 104, called_aet="PACS", operation="find", associations=3, count=9)
    when = datetime(2026, 12, 7, 17, 30, tzinfo=timezone.utc)
    assert chart_title(result, spec_, when).splitlines() == [
        "bench find: PACS at [::1]:104",
        "1,234 operations, 3 associations x window 1, closed loop; 2026-12-07 17:30Z",
    ]


# ------------------------------------------------------------------------------------ CLI


async def bench_cli(port: str, called: str, *options: str, backend: str, tmp_path: Path) -> Any:
    """``asyncdicom bench`` against 127.0.0.1:``port``, its JSON written to tmp_path/r.json."""
    return await run_cli(
        "bench", "127.0.0.1", port, "--called-aet", called, *options,
        "--json", str(tmp_path / "r.json"), "--backend", backend, cwd=tmp_path,
    )  # fmt: skip


async def test_cli_against_our_storescp_json(tmp_path: Path, anyio_backend: str) -> None:
    files = write_ct_files(tmp_path / "src", 2, 2000)
    args = ["storescp", "--port", "0", "--host", "127.0.0.1", "--aet", "STORESCP", "--ignore"]
    args += ["--backend", anyio_backend]
    (tmp_path / "cwd").mkdir()
    async with app_process(*args, cwd=tmp_path / "cwd") as process:
        scp = StoreSCPProcess(process)
        port = await scp.wait_listening()
        out_json = tmp_path / "r.json"
        result = await bench_cli(
            str(port),
            "STORESCP",
            "--operation",
            "store",
            "--files",
            *map(str, files),
            "--associations",
            "2",
            "--window",
            "2",
            "--count",
            "10",
            "--plot",
            str(tmp_path / "r.png"),
            backend=anyio_backend,
            tmp_path=tmp_path,
        )
        await scp.stop()
    assert result.returncode == 0, err(result)
    summary = json.loads(out_json.read_text())
    assert set(summary) == {
        "operations",
        "errors",
        "errors_by_kind",
        "ops_per_s",
        "MB_per_s",
        "latency_ms",
        "association_setup_ms",
        "negotiated",
        # what `bench merge` needs
        "run",
        "started",
        "ended",
        "elapsed_s",
        "bytes_sent",
        "associations_opened",
        "histograms",
        "timeline",
    }
    assert summary["run"] == {
        "operation": "store",
        "peers": [{"called_aet": "STORESCP", "host": "127.0.0.1", "port": port}],
        "associations": 2,
        "windows": [2],
        "rate": None,
        "processes": 1,
        "runs": 1,
    }
    assert sum(summary["timeline"]["operations"]) == 10
    assert summary["associations_opened"] >= 2
    assert summary["operations"] == 10 and summary["errors"] == 0
    assert summary["errors_by_kind"] == {}
    assert summary["ops_per_s"] > 0 and summary["MB_per_s"] > 0
    for key in ("latency_ms", "association_setup_ms"):
        assert set(summary[key]) == {"p50", "p90", "p99", "p999", "max"}
        assert 0 < summary[key]["p50"] <= summary[key]["p99"] <= summary[key]["max"]
    assert summary["negotiated"]["max_operations_invoked"] == 2
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    assert "latency" in result.stdout.decode()


async def test_cli_open_loop_rate(tmp_path: Path, anyio_backend: str) -> None:
    out_json = tmp_path / "r.json"
    async with serving(AE("SCP")) as server:
        result = await bench_cli(
            str(server.port),
            "SCP",
            "--rate",
            "100",
            "--duration",
            "1",
            "--associations",
            "2",
            backend=anyio_backend,
            tmp_path=tmp_path,
        )
    assert result.returncode == 0, err(result)
    assert json.loads(out_json.read_text())["operations"] == 100


async def test_cli_processes_merge(tmp_path: Path, anyio_backend: str) -> None:
    out_json = tmp_path / "r.json"
    scp = AE("SCP")
    peers: set[int] = set()

    @scp.on_echo
    async def on_echo(request: Any) -> int:
        peers.add(request.association.peer_port)
        return 0

    async with serving(scp) as server:
        result = await bench_cli(
            str(server.port),
            "SCP",
            "--count",
            "40",
            "--associations",
            "2",
            "--processes",
            "2",
            backend=anyio_backend,
            tmp_path=tmp_path,
        )
    assert result.returncode == 0, err(result)
    summary = json.loads(out_json.read_text())
    assert summary["operations"] == 40 and summary["errors"] == 0
    assert summary["latency_ms"]["max"] > 0
    assert len(peers) == 2


async def test_cli_failures_exit_1_with_kinds(tmp_path: Path, anyio_backend: str) -> None:
    out_json = tmp_path / "r.json"
    scp = AE("SCP")

    @scp.on_echo
    async def on_echo(request: Any) -> int:
        return 0xA700

    async with serving(scp) as server:
        result = await bench_cli(
            str(server.port),
            "SCP",
            "--count",
            "3",
            backend=anyio_backend,
            tmp_path=tmp_path,
        )
    assert result.returncode == 1
    assert json.loads(out_json.read_text())["errors_by_kind"] == {"0xA700": 3}
    assert "3 of 3 operations" in err(result) and "Traceback" not in err(result)


async def test_cli_sends_a_user_identity_from_every_process(
    tmp_path: Path, anyio_backend: str
) -> None:
    """``--username``/``--password-file`` reach every association of every worker process; a
    wrong passcode is a rejection, counted as errors, exit status 1."""
    store = UserStore()
    store.add("alice", "right")
    scp = AE("SCP", require_user_identity=True)
    checked = store.identity_handler()
    users: list[bytes] = []

    def identity(rq: Any, item: Any) -> Any:
        users.append(item.primary_field)
        return checked(rq, item)

    scp.on_user_identity(identity)
    (tmp_path / "pw").write_text("right\n")
    (tmp_path / "bad").write_text("wrong\n")
    async with serving(scp) as server:
        result = await bench_cli(
            str(server.port), "SCP", "--count", "20", "--associations", "2", "--processes", "2",
            "--username", "alice", "--password-file", str(tmp_path / "pw"),
            backend=anyio_backend, tmp_path=tmp_path,
        )  # fmt: skip
        assert result.returncode == 0, err(result)
        summary = json.loads((tmp_path / "r.json").read_text())
        assert summary["operations"] == 20 and summary["errors"] == 0
        assert users and set(users) == {b"alice"}
        refused = await bench_cli(
            str(server.port), "SCP", "--count", "3",
            "--username", "alice", "--password-file", str(tmp_path / "bad"),
            backend=anyio_backend, tmp_path=tmp_path,
        )  # fmt: skip
    assert refused.returncode == 1
    assert json.loads((tmp_path / "r.json").read_text())["errors"] >= 1
    assert "Traceback" not in err(refused) and "wrong" not in err(refused)


@pytest.mark.parametrize(
    "args",
    [
        ["--password", "x"],
        ["--operation", "store"],
        ["--new-uids"],
        ["--operation", "move"],
        ["--rate", "0"],
        ["--count", "3", "--duration", "1"],
    ],
)
def test_cli_usage_errors(args: list[str], tmp_path: Path) -> None:
    result = run_main("bench", "127.0.0.1", "104", "--called-aet", "X", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert "asyncdicom bench: error:" in err(result)


async def test_move(tmp_path: Path, anyio_backend: str) -> None:
    from asyncdicom import presets

    files = write_ct_files(tmp_path, 2, 64)
    scp = AE("SCP", supported_contexts=presets.qr_supported())
    dest = AE("DEST", accept_any_storage=True)
    received: list[str] = []

    @scp.on("C-MOVE")
    def move(request: Any) -> Any:
        yield from (str(f) for f in files)

    @dest.on_store
    async def on_store(request: Any) -> int:
        await request.discard()
        received.append(request.message.affected_sop_instance_uid)
        return 0

    async with serving(dest) as dest_server, serving(scp) as server:
        scp.move_destinations["DEST"] = ("127.0.0.1", dest_server.port)
        result = await run_load(
            spec(
                server.port,
                operation="move",
                query=(("StudyInstanceUID", "1.2.3"),),
                move_destination="DEST",
                count=3,
            )
        )
    assert result.operations == 3 and result.errors == 0, result.errors_by_kind
    assert len(received) == 6


async def test_commit(tmp_path: Path, anyio_backend: str) -> None:
    from asyncdicom import presets
    from asyncdicom.services.commitment import CommitmentSCP

    files = write_ct_files(tmp_path, 2, 64)
    scp = AE("SCP", supported_contexts=presets.storage_commitment_scp_supported())
    checked: list[int] = []

    def check(references: list[tuple[str, str]]) -> dict[str, int]:
        checked.append(len(references))
        return {}

    async with CommitmentSCP(scp, check), serving(scp) as server:
        result = await run_load(spec(server.port, operation="commit", files=files, count=3))
    assert result.operations == 3 and result.errors == 0, result.errors_by_kind
    assert checked == [2, 2, 2]

    refusing = AE("SCP", supported_contexts=presets.storage_commitment_scp_supported())
    async with (
        CommitmentSCP(refusing, lambda refs: {refs[0][1]: 0x0112}),
        serving(refusing) as server,
    ):
        result = await run_load(spec(server.port, operation="commit", files=files, count=2))
    assert (result.operations, result.errors) == (2, 2)  # operations counts every attempt
    assert result.errors_by_kind == {"commit-failed": 2}
