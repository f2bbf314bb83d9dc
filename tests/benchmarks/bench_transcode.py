"""Decompression throughput, asyncdicom's transcoding vs DCMTK's own tools, and the peak memory of
converting one 64 MB multi-frame instance.

Run: ``python tests/benchmarks/bench_transcode.py [--count 40] [--rounds 3]``

1. Throughput.  ``--count`` synthetic 512 x 512 16-bit CT images (smooth anatomy-like content,
   so that they compress as CT does) are compressed once with DCMTK (``dcmcjpeg +e1``: JPEG
   lossless SV1; ``dcmcjpls``: JPEG-LS lossless; ``dcmcrle``: RLE) into a cache folder.  Each
   round then decompresses every set to Explicit VR Little Endian files, alternating:

   * ``dcmtk``: ``dcmdjpeg`` / ``dcmdjpls`` / ``dcmdrle``, one process per file (that is how the
     tools are used; what a tool costs per file without a codec is reported apart: ``dcmconv``
     copying the uncompressed originals, i.e. process start, data dictionary, read, write);
   * ``asyncdicom``: :func:`asyncdicom.storage.transcoding.transcode_instance` in one process,
     each result written to a file (the cost ``storescu`` and the C-GET SCP pay per instance).

   Best of ``--rounds`` per (set, side); images/s and MB/s of decoded output.

2. Memory.  One multi-frame instance of 128 frames of 512 x 512 x 16 bit (64 MiB decoded),
   RLE-compressed with DCMTK, converted to Explicit VR Little Endian in a fresh process each
   by: asyncdicom (``transcode_instance``), pydicom alone (``ds.decompress()`` then
   ``save_as``), and ``dcmdrle``.  Reported: the peak RSS and, for the Python ones, its growth
   over the RSS after the imports (``VmHWM`` reset through ``/proc/self/clear_refs``, minus
   ``VmRSS`` then: what the conversion itself holds); for ``dcmdrle``, ``ru_maxrss``.

Results: a table on stdout and ``bench-results/transcode.json``.  The machine's load
(``os.getloadavg()``) is recorded before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SETS = {
    "jpeg-lossless": (["dcmcjpeg", "+e1"], "dcmdjpeg"),
    "jpeg-ls-lossless": (["dcmcjpls"], "dcmdjpls"),
    "rle": (["dcmcrle"], "dcmdrle"),
}
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _image(rows: int, cols: int, seed: int) -> Any:
    import numpy as np

    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    cy, cx = rows / 2, cols / 2
    body = ((x - cx) / (cols * 0.42)) ** 2 + ((y - cy) / (rows * 0.36)) ** 2 < 1
    organ = ((x - cx * (0.8 + seed % 5 * 0.05)) / 60) ** 2 + ((y - cy) / 40) ** 2 < 1
    rng = np.random.default_rng(seed)
    img = np.where(body, 1040, 24).astype(np.float32) + np.where(organ, 60, 0)
    img += rng.normal(0, 6, (rows, cols)) * body
    return img.clip(0, 4095).astype(np.uint16)


def _dataset(frames: int, seed: int) -> Any:
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import generate_uid

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "BENCH"
    ds.Modality = "CT"
    ds.Rows = ds.Columns = 512
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = np.stack([_image(512, 512, seed + i) for i in range(frames)]).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = EXPLICIT_LE
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _prepare(cache: Path, count: int) -> dict[str, list[Path]]:
    raw = cache / "raw"
    if not raw.is_dir() or len(list(raw.iterdir())) != count:
        shutil.rmtree(raw, ignore_errors=True)
        raw.mkdir(parents=True)
        for i in range(count):
            _dataset(1, i).save_as(raw / f"{i:04d}.dcm", enforce_file_format=True)
    out: dict[str, list[Path]] = {}
    for name, (compress, _) in SETS.items():
        folder = cache / name
        if not folder.is_dir() or len(list(folder.iterdir())) != count:
            folder.mkdir(exist_ok=True)
            for src in sorted(raw.iterdir()):
                subprocess.run([*compress, str(src), str(folder / src.name)], check=True)
        out[name] = sorted(folder.iterdir())
    return out


def _dcmtk(tool: str, files: list[Path], target: Path) -> float:
    started = time.perf_counter()
    for f in files:
        subprocess.run([tool, str(f), str(target / f.name)], check=True)
    return time.perf_counter() - started


def _ours(files: list[Path], target: Path) -> float:
    from asyncdicom.storage.meta import encode_file_meta
    from asyncdicom.storage.reader import read_part10_for_send
    from asyncdicom.storage.transcoding import transcode_instance

    started = time.perf_counter()
    for f in files:
        source = read_part10_for_send(f)
        out = transcode_instance(source, EXPLICIT_LE)
        meta = encode_file_meta(
            sop_class_uid=source.sop_class_uid,
            sop_instance_uid=out.sop_instance_uid,
            transfer_syntax_uid=EXPLICIT_LE,
            implementation_class_uid="1.2.826.0.1.3680043.8.498.1",
        )
        with open(target / f.name, "wb") as fp:
            fp.write(b"\0" * 128 + b"DICM" + meta)
            for chunk in out.chunks:
                fp.write(chunk)
    return time.perf_counter() - started


def _throughput(sets: dict[str, list[Path]], rounds: int, work: Path) -> dict[str, Any]:
    decoded_mb = 512 * 512 * 2 / 1e6
    best: dict[str, dict[str, float]] = {}
    # what a DCMTK tool costs per file without a codec: dcmconv copying the uncompressed
    # originals (process start, data dictionary, reading and writing), in the same rounds
    raw = sorted((work.parent / "raw").iterdir()) if (work.parent / "raw").is_dir() else []
    copy = work / "dcmconv"
    copy.mkdir(exist_ok=True)
    copies = []
    for _ in range(rounds):
        copies.append(_dcmtk("dcmconv", raw, copy))
        for name, files in sets.items():
            for side in ("dcmtk", "asyncdicom"):
                target = work / f"{name}-{side}"
                shutil.rmtree(target, ignore_errors=True)
                target.mkdir()
                if side == "dcmtk":
                    elapsed = _dcmtk(SETS[name][1], files, target)
                else:
                    elapsed = _ours(files, target)
                key = best.setdefault(name, {})
                key[side] = min(key.get(side, float("inf")), elapsed)
    count = len(next(iter(sets.values())))
    starts = [min(copies) / max(1, len(raw))]
    table = {}
    for name, sides in best.items():
        table[name] = {
            side: {
                "seconds": round(s, 3),
                "images_per_s": round(count / s, 1),
                "mb_per_s": round(count * decoded_mb / s, 1),
            }
            for side, s in sides.items()
        }
    return {"per_set": table, "dcmtk_dcmconv_per_file_s": round(min(starts), 4), "images": count}


_CHILD = r"""
import sys, time
kind, path, out = sys.argv[1:4]

def status(key):
    with open("/proc/self/status") as fp:
        for line in fp:
            if line.startswith(key + ":"):
                return int(line.split()[1])

import numpy, pydicom, pydicom.pixels
from pydicom import dcmread
import asyncdicom.storage.transcoding as t
from asyncdicom.storage.reader import read_part10_for_send
import pylibjpeg, rle  # the codecs, loaded before the baseline
if kind == "pydicom":
    from pydicom.pixels.decoders.base import get_decoder
    get_decoder("1.2.840.10008.1.2.5").available_plugins
with open("/proc/self/clear_refs", "w") as fp:
    fp.write("5")  # resets the peak (VmHWM) to the current RSS
base = status("VmRSS")
started = time.perf_counter()
if kind == "asyncdicom":
    source = read_part10_for_send(path)
    result = t.transcode_instance(source, "1.2.840.10008.1.2.1")
    with open(out, "wb") as fp:
        for chunk in result.chunks:
            fp.write(chunk)
else:
    ds = dcmread(path)
    ds.decompress(generate_instance_uid=False)
    ds.save_as(out)
elapsed = time.perf_counter() - started
print(base, status("VmHWM"), elapsed)
"""

_DCMTK_CHILD = r"""
import resource, subprocess, sys, time
t = time.perf_counter()
subprocess.run(sys.argv[1:], check=True)
elapsed = time.perf_counter() - t
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, elapsed)
"""


def _memory(cache: Path, work: Path) -> dict[str, Any]:
    big_raw = cache / "multiframe-raw.dcm"
    big = cache / "multiframe-rle.dcm"
    if not big.is_file():
        _dataset(128, 1000).save_as(big_raw, enforce_file_format=True)
        subprocess.run(["dcmcrle", str(big_raw), str(big)], check=True)
    results: dict[str, Any] = {
        "decoded_mib": 128 * 512 * 512 * 2 / 2**20,
        "encoded_mib": round(big.stat().st_size / 2**20, 1),
    }
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for kind in ("asyncdicom", "pydicom"):
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, kind, str(big), str(work / f"{kind}.dcm")],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        )
        base, peak, elapsed = proc.stdout.split()
        results[kind] = {
            "peak_rss_mib": round(int(peak) / 1024, 1),
            "growth_mib": round((int(peak) - int(base)) / 1024, 1),
            "seconds": round(float(elapsed), 2),
        }
    proc = subprocess.run(
        [sys.executable, "-c", _DCMTK_CHILD, "dcmdrle", str(big), str(work / "dcmtk.dcm")],
        check=True,
        capture_output=True,
        text=True,
    )
    peak, elapsed = proc.stdout.split()
    results["dcmtk"] = {
        "peak_rss_mib": round(int(peak) / 1024, 1),
        "seconds": round(float(elapsed), 2),
    }
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "bench-tc")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    load_before = os.getloadavg()
    args.cache.mkdir(parents=True, exist_ok=True)
    sets = _prepare(args.cache, args.count)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "raw").symlink_to(args.cache / "raw")
        work = work / "run"
        work.mkdir()
        throughput = _throughput(sets, args.rounds, work)
        memory = _memory(args.cache, work)
    result = {
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "throughput": throughput,
        "memory": memory,
    }
    out = ROOT / "bench-results" / "transcode.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
