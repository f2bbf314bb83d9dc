"""Receive-path throughput: PDU framing plus PDV reassembly of a large C-STORE data set.

Run: ``python tests/benchmarks/bench_framer.py [--size-mb 256] [--repeat 3]``

A C-STORE-RQ with a data set of ``--size-mb`` MiB is fragmented with
:func:`asyncdicom.protocol.dimse.fragment_dataset` at each maximum PDU length.  The resulting byte
stream is then handed to the receiver in 64 KiB chunks, as ``recv()`` would deliver it (each
chunk is copied into a fresh ``bytes`` object, like a socket read), and parsed by:

* asyncdicom: ``codec.PDUFramer`` + ``dimse.MessageAssembler`` (data-set fragments come out as
  zero-copy memoryviews and are only counted);
* pynetdicom: what its DUL and DIMSE providers do per PDU: read exactly one PDU (a copy),
  ``pynetdicom.pdu.P_DATA_TF().decode()``, ``to_primitive()`` and
  ``DIMSEMessage.decode_msg()``, which appends each fragment to an in-memory ``BytesIO``.

Single process, single thread; MiB/s = data-set MiB / wall seconds, best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

from asyncdicom.protocol.codec import PDUFramer
from asyncdicom.protocol.dimse import (
    DatasetFragment,
    MessageAssembler,
    command_pdus,
    fragment_dataset,
)
from asyncdicom.protocol.messages import CStoreRQ
from asyncdicom.protocol.pdu import PDataTF

CHUNK = 64 * 1024
MIB = 1024 * 1024


def build_stream(size: int, max_pdu_length: int) -> tuple[bytes, list[int]]:
    """The wire bytes of one C-STORE-RQ (command + data set) and the PDU boundaries."""
    message = CStoreRQ(1, "1.2.840.10008.5.1.4.1.1.7", "1.2.826.0.1.3680043.8.498.1")
    data = bytes(size)
    stream = bytearray()
    bounds = []
    for pdu in command_pdus(1, message, max_pdu_length):
        stream += pdu
        bounds.append(len(stream))
    for pdu in fragment_dataset(1, data, max_pdu_length):
        stream += pdu
        bounds.append(len(stream))
    return bytes(stream), bounds


def run_asyncdicom(stream: bytes, bounds: list[int], max_pdu_length: int) -> int:
    framer = PDUFramer(max_pdata_length=max_pdu_length)
    assembler = MessageAssembler()
    view = memoryview(stream)
    received = 0
    feed = framer.feed
    next_pdu = framer.next_pdu
    receive = assembler.receive
    for offset in range(0, len(stream), CHUNK):
        feed(bytes(view[offset : offset + CHUNK]))  # a socket read returns a new bytes object
        while (pdu := next_pdu()) is not None:
            assert isinstance(pdu, PDataTF)
            for event in receive(pdu):
                if isinstance(event, DatasetFragment):
                    received += len(event.data)
    return received


def run_pynetdicom(stream: bytes, bounds: list[int], max_pdu_length: int) -> int:
    from pynetdicom.dimse_messages import DIMSEMessage
    from pynetdicom.pdu import P_DATA_TF

    view = memoryview(stream)
    message = DIMSEMessage()
    start = 0
    for end in bounds:
        pdu = P_DATA_TF()
        pdu.decode(bytes(view[start:end]))  # pynetdicom reads one whole PDU per recv loop
        message.decode_msg(pdu.to_primitive())
        start = end
    data_set: Any = message.data_set
    return len(data_set.getvalue())


def best_of(
    repeat: int, func: Callable[[bytes, list[int], int], int], *args: object
) -> tuple[float, int]:
    best = float("inf")
    result = 0
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        result = func(*args)  # type: ignore[arg-type]
        best = min(best, time.perf_counter() - started)
    return best, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=256, help="data set size in MiB")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (best)")
    parser.add_argument(
        "--max-pdu",
        type=int,
        nargs="*",
        default=[16 * 1024, 256 * 1024, MIB],
        help="maximum PDU lengths to test",
    )
    parser.add_argument("--no-pynetdicom", action="store_true", help="skip the comparison")
    args = parser.parse_args(argv)

    size = args.size_mb * MIB
    python = f"Python {platform.python_version()} on {platform.machine()}"
    print(f"{python}, data set {args.size_mb} MiB")
    columns = ("max PDU", "PDUs", "asyncdicom MiB/s", "pynetdicom MiB/s", "ratio")
    print("{:>10} {:>8} {:>16} {:>16} {:>7}".format(*columns))
    for max_pdu_length in args.max_pdu:
        stream, bounds = build_stream(size, max_pdu_length)
        seconds, received = best_of(args.repeat, run_asyncdicom, stream, bounds, max_pdu_length)
        assert received == size, (received, size)
        ours = size / MIB / seconds
        theirs_text, ratio_text = "-", "-"
        if not args.no_pynetdicom:
            seconds, received = best_of(args.repeat, run_pynetdicom, stream, bounds, max_pdu_length)
            assert received == size, (received, size)
            theirs = size / MIB / seconds
            theirs_text, ratio_text = f"{theirs:.0f}", f"{ours / theirs:.1f}x"
        label = f"{max_pdu_length // 1024} KiB"
        print(f"{label:>10} {len(bounds):>8} {ours:>16.0f} {theirs_text:>16} {ratio_text:>7}")
        del stream, bounds
    return 0


if __name__ == "__main__":
    sys.exit(main())
