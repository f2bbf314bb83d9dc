"""A pynetdicom Storage and Verification SCP for interop tests and benchmarks.

Usage::

    python tests/harness/pynetdicom_scp.py --port P (--output-dir D | --ignore)
        [--host 127.0.0.1] [--aet PYNETDICOM] [--max-pdu N] [--max-associations N]
        [--timeout S] [--tcp-nodelay]

It accepts Verification and every storage SOP class pynetdicom knows
(``AllStoragePresentationContexts``) with every transfer syntax in pynetdicom's
``ALL_TRANSFER_SYNTAXES`` (uncompressed, deflated, JPEG, JPEG-LS, JPEG 2000, RLE, MPEG, HEVC),
answers C-ECHO and C-STORE with status 0x0000, and:

* prints ``READY <port>`` on stdout once it listens (``--port 0`` lets the OS choose);
* runs until stdin reaches end of file (or SIGTERM/SIGINT), then prints ``STATS {json}``
  with counters and exits 0.

With ``--output-dir`` each data set is written, as received and without decoding it, to
``<dir>/<SOP Instance UID>.dcm`` (Part 10 with the file meta information pynetdicom builds); a
temporary name and a rename keep readers from seeing partial files. ``--ignore`` discards it.

``--tcp-nodelay`` sets TCP_NODELAY on every accepted connection (pynetdicom itself does not).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"  # PS3.4 A.4

# A UID is digits and dots (PS3.5 9.1); anything else would be unsafe in a file name.
_UID_RE = re.compile(r"^[0-9.]{1,64}$")


class _Counters:
    """Thread-safe counters: pynetdicom runs each association in its own thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.values: dict[str, int] = {
            "associations": 0,
            "echoes": 0,
            "stores": 0,
            "stored_bytes": 0,
            "store_failures": 0,
        }

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self.values[name] += amount

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.values)


def _set_tcp_nodelay(event: Any) -> None:
    """EVT_CONN_OPEN handler: disable Nagle's algorithm on the association's socket.

    pynetdicom leaves it on; with it, small PDUs wait for the peer's delayed ACK.
    """
    raw = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if isinstance(raw, socket.socket):
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python tests/harness/pynetdicom_scp.py",
        description="pynetdicom Storage/Verification SCP for interop tests and benchmarks.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 = any free port")
    parser.add_argument("--aet", default="PYNETDICOM", help="our AE title")
    parser.add_argument(
        "--max-pdu", type=int, default=16382, help="maximum PDU length we receive (0 = no limit)"
    )
    parser.add_argument("--max-associations", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=60.0, help="ACSE/DIMSE/network timeout")
    parser.add_argument(
        "--tcp-nodelay", action="store_true", help="disable Nagle's algorithm on connections"
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--output-dir", type=Path, help="write received data sets here")
    target.add_argument("--ignore", action="store_true", help="receive but do not store")
    return parser.parse_args(argv)


def _make_ae(args: argparse.Namespace) -> Any:
    ae = AE(ae_title=args.aet)
    ae.maximum_pdu_size = args.max_pdu
    ae.maximum_associations = args.max_associations
    ae.acse_timeout = args.timeout
    ae.dimse_timeout = args.timeout
    ae.network_timeout = args.timeout
    ae.add_supported_context(VERIFICATION_SOP_CLASS)
    for context in AllStoragePresentationContexts:
        if context.abstract_syntax is not None:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    return ae


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    output_dir: Path | None = None if args.ignore else args.output_dir
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
    counters = _Counters()

    def on_connection(event: Any) -> None:
        counters.add("associations")

    def on_echo(event: Any) -> int:
        counters.add("echoes")
        return 0x0000

    def on_store(event: Any) -> int:
        if output_dir is None:
            counters.add("stores")
            return 0x0000
        uid = str(event.request.AffectedSOPInstanceUID)
        if not _UID_RE.match(uid):
            counters.add("store_failures")
            return 0xA900  # Data Set does not match SOP Class (we refuse to use it as a name)
        data: bytes = event.encoded_dataset(include_meta=True)
        final = output_dir / f"{uid}.dcm"
        partial = output_dir / f".{uid}.{threading.get_ident()}.part"
        try:
            partial.write_bytes(data)
            os.replace(partial, final)
        except OSError:
            counters.add("store_failures")
            return 0xA700  # Out of resources
        counters.add("stores")
        counters.add("stored_bytes", len(data))
        return 0x0000

    ae = _make_ae(args)
    handlers = [
        (evt.EVT_ACCEPTED, on_connection),
        (evt.EVT_C_ECHO, on_echo),
        (evt.EVT_C_STORE, on_store),
    ]
    if args.tcp_nodelay:
        handlers.append((evt.EVT_CONN_OPEN, _set_tcp_nodelay))
    server = ae.start_server((args.host, args.port), block=False, evt_handlers=handlers)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        port = int(server.server_address[1])
        print(f"READY {port}", flush=True)
        # Block until the parent closes our stdin (its shutdown signal) or a signal arrives.
        while sys.stdin.buffer.read(65536):
            pass
    finally:
        server.shutdown()
        print("STATS " + json.dumps(counters.snapshot()), flush=True)
    return 0


if __name__ == "__main__":
    from pynetdicom_race import close_reactor_race  # run as a script: tests/harness first

    close_reactor_race()
    sys.exit(main())
