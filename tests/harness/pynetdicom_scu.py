"""pynetdicom as an SCU, for benchmarks and interop tests.

Usage::

    python tests/harness/pynetdicom_scu.py echo HOST PORT [--repeat N]
    python tests/harness/pynetdicom_scu.py assoc-echo HOST PORT [--count N]
    python tests/harness/pynetdicom_scu.py store HOST PORT FILE_OR_DIR... [--repeat N]
        [--preload] [--chunked]

Common options: ``--aet``, ``--called-aet``, ``--max-pdu`` (0 = no limit), ``--timeout``,
``--tcp-nodelay`` (set TCP_NODELAY on the connection once it is open; pynetdicom does not, and
without it small PDUs wait for the peer's delayed ACK: about 20 stores/s instead of hundreds on
loopback, so pass it for like-for-like comparisons).

* ``echo``: one association, N C-ECHO requests, release.
* ``assoc-echo``: N times associate, one C-ECHO, release (sequentially).
* ``store``: one association, every file sent ``--repeat`` times, release. Presentation contexts
  are proposed per SOP class found in the files' meta information: one context for each
  transfer syntax used by that class, plus one with explicit and implicit VR little endian so
  uncompressed data can be converted. By default pynetdicom reads each file into a data set
  inside the timed loop (like ``storescu`` reads files); ``--preload`` reads them all before
  associating, so the timing covers encoding and the network only; ``--chunked`` makes
  pynetdicom stream the encoded file without decoding it (no conversion possible).

One JSON object is printed on stdout. Times are in seconds (``time.perf_counter``);
``elapsed_s`` covers the requests only (not association set-up or release), ``total_s`` the whole
run, ``rate_per_s`` is ``requests / elapsed_s`` (``associations / elapsed_s`` for
``assoc-echo``, where ``elapsed_s`` includes set-up and release); ``file_bytes`` counts the
sizes of the files sent. Exit code: 0 when every request got status 0x0000 or a warning, 1 when
some failed or the association ended early (then ``error`` says why and unsent requests count
as failed), 2 when no association was established (``error`` says why).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config, evt

VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"  # PS3.4 A.4
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"  # PS3.5 A.2
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"  # PS3.5 A.1
MAX_PRESENTATION_CONTEXTS = 128  # context IDs are the odd numbers 1..255 (PS3.8 9.3.2.2)


def _classify(status: Any) -> str:
    """'success', 'warning' or 'failure' for a pynetdicom status data set (PS3.7 C)."""
    code = status.get("Status") if status is not None else None
    if code is None:
        return "failure"  # no response: timeout or abort
    code = int(code)
    if code == 0x0000:
        return "success"
    if code in (0x0001, 0x0107, 0x0116) or 0xB000 <= code <= 0xBFFF:
        return "warning"
    return "failure"


def _set_tcp_nodelay(event: Any) -> None:
    """EVT_CONN_OPEN handler: disable Nagle's algorithm on the association's socket.

    pynetdicom leaves it on; with it, small PDUs wait for the peer's delayed ACK.
    """
    raw = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if isinstance(raw, socket.socket):
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _make_ae(args: argparse.Namespace) -> Any:
    ae = AE(ae_title=args.aet)
    ae.maximum_pdu_size = args.max_pdu
    ae.acse_timeout = args.timeout
    ae.dimse_timeout = args.timeout
    ae.network_timeout = args.timeout
    return ae


def _associate(ae: Any, args: argparse.Namespace) -> Any:
    handlers = [(evt.EVT_CONN_OPEN, _set_tcp_nodelay)] if args.tcp_nodelay else []
    assoc = ae.associate(args.host, args.port, ae_title=args.called_aet, evt_handlers=handlers)
    if not assoc.is_established:
        if assoc.is_rejected:
            raise ConnectionError(f"association rejected by {args.host}:{args.port}")
        raise ConnectionError(
            f"no association with {args.host}:{args.port} (connection failed or aborted)"
        )
    return assoc


def _message_id(index: int) -> int:
    # Message ID is an unsigned 16-bit value (PS3.7 9.3.1.1 / E.1); 0 is avoided.
    return index % 0xFFFF + 1


class _AssociationEnded(Exception):
    """The association was aborted (by either side) before all requests were sent."""


def _send(assoc: Any, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    # pynetdicom raises RuntimeError when the association is gone (e.g. after a DIMSE timeout
    # made it abort); report that instead of a traceback.
    if not assoc.is_established:
        raise _AssociationEnded("association ended before all requests were sent")
    try:
        return method(*args, **kwargs)
    except RuntimeError as exc:
        raise _AssociationEnded(f"association ended: {exc}") from exc


def run_echo(args: argparse.Namespace) -> dict[str, Any]:
    ae = _make_ae(args)
    ae.add_requested_context(VERIFICATION_SOP_CLASS)
    start = time.perf_counter()
    assoc = _associate(ae, args)
    outcomes: Counter[str] = Counter()
    error: str | None = None
    sent = 0
    try:
        begin = time.perf_counter()
        try:
            for index in range(args.repeat):
                status = _send(assoc, assoc.send_c_echo, msg_id=_message_id(index))
                sent += 1
                outcomes[_classify(status)] += 1
        except _AssociationEnded as exc:
            error = str(exc)
        elapsed = time.perf_counter() - begin
    finally:
        assoc.release()
    total = time.perf_counter() - start
    result: dict[str, Any] = {
        "operation": "echo",
        "associations": 1,
        "requests": sent,
        "success": outcomes["success"],
        "warning": outcomes["warning"],
        "failed": outcomes["failure"] + (args.repeat - sent),
        "associate_s": begin - start,
        "elapsed_s": elapsed,
        "total_s": total,
        "rate_per_s": sent / elapsed if elapsed > 0 else None,
    }
    if error is not None:
        result["error"] = error
    return result


def run_assoc_echo(args: argparse.Namespace) -> dict[str, Any]:
    ae = _make_ae(args)
    ae.add_requested_context(VERIFICATION_SOP_CLASS)
    outcomes: Counter[str] = Counter()
    start = time.perf_counter()
    for _ in range(args.count):
        assoc = _associate(ae, args)
        try:
            outcomes[_classify(_send(assoc, assoc.send_c_echo, msg_id=1))] += 1
        finally:
            assoc.release()
    elapsed = time.perf_counter() - start
    return {
        "operation": "assoc-echo",
        "associations": args.count,
        "requests": args.count,
        "success": outcomes["success"],
        "warning": outcomes["warning"],
        "failed": outcomes["failure"],
        "elapsed_s": elapsed,
        "total_s": elapsed,
        "rate_per_s": args.count / elapsed if elapsed > 0 else None,
    }


def _expand(paths: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        else:
            files.append(path)
    return files


def _contexts_for(files: Sequence[Path]) -> dict[str, list[str]]:
    """SOP class -> transfer syntaxes to propose, one context each (see module docstring)."""
    by_class: dict[str, list[str]] = {}
    for path in files:
        meta = read_file_meta_info(path)
        sop_class = str(meta.MediaStorageSOPClassUID)
        syntax = str(meta.TransferSyntaxUID)
        syntaxes = by_class.setdefault(sop_class, [])
        if syntax not in syntaxes:
            syntaxes.append(syntax)
    return by_class


def run_store(args: argparse.Namespace) -> dict[str, Any]:
    files = _expand(args.files)
    if not files:
        raise ValueError("no input files")
    ae = _make_ae(args)
    for sop_class, syntaxes in _contexts_for(files).items():
        for syntax in syntaxes:
            ae.add_requested_context(sop_class, [syntax])
        ae.add_requested_context(sop_class, [EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN])
    if len(ae.requested_contexts) > MAX_PRESENTATION_CONTEXTS:
        raise ValueError(f"more than {MAX_PRESENTATION_CONTEXTS} presentation contexts needed")
    if args.chunked:
        _config.STORE_SEND_CHUNKED_DATASET = True
    sources: list[Any] = [dcmread(p) for p in files] if args.preload else list(files)
    sizes = [p.stat().st_size for p in files]
    outcomes: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    planned = len(sources) * args.repeat
    error: str | None = None
    start = time.perf_counter()
    assoc = _associate(ae, args)
    requests = 0
    sent_bytes = 0
    try:
        begin = time.perf_counter()
        try:
            for _ in range(args.repeat):
                for source, size in zip(sources, sizes, strict=True):
                    try:
                        status = _send(
                            assoc, assoc.send_c_store, source, msg_id=_message_id(requests)
                        )
                    except (ValueError, AttributeError) as exc:
                        # pynetdicom refuses locally (e.g. no accepted context for the data).
                        status = None
                        statuses[f"local: {exc}"] += 1
                    requests += 1
                    sent_bytes += size
                    outcome = _classify(status)
                    outcomes[outcome] += 1
                    if outcome != "success" and status is not None and "Status" in status:
                        statuses[f"0x{int(status.Status):04X}"] += 1
        except _AssociationEnded as exc:
            error = str(exc)
        elapsed = time.perf_counter() - begin
    finally:
        assoc.release()
    total = time.perf_counter() - start
    result: dict[str, Any] = {
        "operation": "store",
        "associations": 1,
        "files": len(files),
        "requests": requests,
        "success": outcomes["success"],
        "warning": outcomes["warning"],
        "failed": outcomes["failure"] + (planned - requests),
        "other_statuses": dict(statuses),
        "file_bytes": sent_bytes,
        "associate_s": begin - start,
        "elapsed_s": elapsed,
        "total_s": total,
        "rate_per_s": requests / elapsed if elapsed > 0 else None,
        "mb_per_s": sent_bytes / elapsed / 1e6 if elapsed > 0 else None,
    }
    if error is not None:
        result["error"] = error
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python tests/harness/pynetdicom_scu.py",
        description="pynetdicom SCU timing runs; prints one JSON object.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("host")
    common.add_argument("port", type=int)
    common.add_argument("--aet", default="PYNETDICOM-SCU", help="our (calling) AE title")
    common.add_argument("--called-aet", default="ANY-SCP", help="the peer's AE title")
    common.add_argument("--max-pdu", type=int, default=16382, help="0 = no limit")
    common.add_argument("--timeout", type=float, default=60.0, help="ACSE/DIMSE/network timeout")
    common.add_argument(
        "--tcp-nodelay", action="store_true", help="disable Nagle's algorithm on the connection"
    )
    sub = parser.add_subparsers(dest="operation", required=True)
    echo = sub.add_parser("echo", parents=[common], help="N C-ECHO on one association")
    echo.add_argument("--repeat", type=int, default=1)
    assoc_echo = sub.add_parser(
        "assoc-echo", parents=[common], help="N x (associate, C-ECHO, release)"
    )
    assoc_echo.add_argument("--count", type=int, default=1)
    store = sub.add_parser("store", parents=[common], help="C-STORE files on one association")
    store.add_argument("files", nargs="+", type=Path)
    store.add_argument("--repeat", type=int, default=1, help="send the file list N times")
    store.add_argument("--preload", action="store_true", help="read files before associating")
    store.add_argument(
        "--chunked", action="store_true", help="send encoded files without decoding them"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for name in ("repeat", "count"):
        if getattr(args, name, 1) < 1:
            print(json.dumps({"operation": args.operation, "error": f"--{name} must be >= 1"}))
            return 2
    runners = {"echo": run_echo, "assoc-echo": run_assoc_echo, "store": run_store}
    try:
        result = runners[args.operation](args)
    except (ConnectionError, ValueError, OSError, _AssociationEnded) as exc:
        print(json.dumps({"operation": args.operation, "error": str(exc)}), flush=True)
        return 2
    print(json.dumps(result), flush=True)
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    from pynetdicom_race import close_reactor_race  # run as a script: tests/harness first

    close_reactor_race()
    sys.exit(main())
