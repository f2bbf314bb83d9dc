"""atheris harness: the structure check of received data sets (asyncdicom/storage/structure.py).

Input: ``[transfer syntax selector][cut count][cut sizes, 2 bytes each][data set bytes]``.  The
bytes are checked as one fragment and as the fuzzer's fragments, in the transfer syntax the
selector picks (Implicit, Explicit and Big Endian Explicit VR, Deflated).

Properties: only :class:`~asyncdicom.errors.InvalidDataset` comes out of the check; the
verdict (refused or not, and how many elements were walked) does not depend on how the bytes
are split into fragments.

Run: ``python tests/fuzz/fuzz_dataset.py [corpus dir] [libFuzzer flags]`` (see run.py).
"""

from __future__ import annotations

import contextlib
import struct
import sys
import zlib
from pathlib import Path

if __name__ == "__main__":
    import atheris

    _imports = atheris.instrument_imports(include=["asyncdicom"])
else:
    _imports = contextlib.nullcontext()

with _imports:
    from fuzz_common import Input, cut, read_cuts

    from asyncdicom.errors import InvalidDataset
    from asyncdicom.protocol import uids
    from asyncdicom.storage.structure import StructureCheck

SYNTAXES = (
    uids.EXPLICIT_VR_LITTLE_ENDIAN,
    uids.IMPLICIT_VR_LITTLE_ENDIAN,
    uids.EXPLICIT_VR_BIG_ENDIAN,
    uids.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
)


def verdict(syntax: str, fragments: list[bytes]) -> tuple[str, int]:
    """("ok" or the refusal's first words, elements walked); anything but InvalidDataset
    escapes (a crash)."""
    check = StructureCheck(syntax)
    try:
        for fragment in fragments:
            check.feed(fragment)
        check.finish()
    except InvalidDataset as exc:
        assert str(exc)
        return "refused", -1
    return "ok", check.elements


def TestOneInput(data: bytes) -> None:
    inp = Input(data)
    syntax = SYNTAXES[inp.u8() % len(SYNTAXES)]
    sizes = read_cuts(inp, 16)
    stream = inp.rest()
    whole = verdict(syntax, [stream])
    split = verdict(syntax, cut(stream, sizes))
    assert whole == split, (whole, split)


def seeds() -> list[bytes]:
    """Seed inputs: pydicom's small sample data sets in their own syntax, whole and cut."""
    import pydicom.data
    from pydicom.filereader import read_file_meta_info

    folder = Path(pydicom.data.__file__).parent / "test_files"
    out = []
    for name in ("rtplan.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "UN_sequence.dcm",
                 "nested_priv_SQ.dcm", "test-SR.dcm", "MR_small_bigendian.dcm",
                 "image_dfl.dcm", "reportsi.dcm"):  # fmt: skip
        path = folder / name
        raw = path.read_bytes()
        if raw[128:132] != b"DICM":
            continue
        (meta_length,) = struct.unpack_from("<L", raw, 140)
        dataset = raw[144 + meta_length :]
        syntax = str(read_file_meta_info(path).TransferSyntaxUID)
        if syntax not in SYNTAXES:
            syntax = uids.EXPLICIT_VR_LITTLE_ENDIAN  # compressed: explicit VR little endian
        selector = bytes((SYNTAXES.index(syntax),))
        out.append(selector + b"\x00" + dataset[:12000])
        out.append(selector + b"\x02\x00\x07\x00\x0d" + dataset[:12000])
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = b"\x10\x00\x10\x00PN\x08\x00DOE^JOHN"
    out.append(b"\x03\x00" + deflater.compress(body) + deflater.flush())
    return out


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
