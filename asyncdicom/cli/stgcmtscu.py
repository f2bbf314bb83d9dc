"""``asyncdicom stgcmtscu``: ask a peer to commit to storing instances (Storage Commitment).

The files and folders named are read like storescu reads them (headers only); their (SOP Class
UID, SOP Instance UID) pairs go in one N-ACTION request (Storage Commitment Push Model, PS3.4
Annex J), and the app waits up to ``--timeout`` seconds for the peer's report
(N-EVENT-REPORT).  The report may come on the requesting association, which stays open while
the app waits, or, with ``--listen-port P``, on an association the peer opens to this AE on
port P (the peer must know this AE title's address).

One error line per instance the peer did not commit, with its Failure Reason in words, then a
summary line on stdout.  Exit status 0 only when every instance was committed; 1 when some were
not, when no report came in time, or when a file could not be read; 2 for usage errors.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import anyio

from ..ae import AE
from ..presets import STORAGE_COMMITMENT, storage_commitment_scu_supported
from ..services.commitment import (
    CommitmentRefused,
    CommitmentResult,
    CommitmentTimeout,
)
from .apps import APPS
from .argtypes import listen_port, timeout
from .options import add_common, add_scu
from .output import CLIError, err, format_address
from .scu import associate, scu_ae
from .server import listening, say_listening
from .storescu import _print_problems, _Report, _scan, _walk

__all__ = ["FAILURE_REASONS", "add_parser", "describe_reason", "run"]

#: Failure Reason (0008,1197) values in words (PS3.4 J.3.3.1.3 and C.4.2.1.4)
FAILURE_REASONS = {
    0x0110: "processing failure",
    0x0112: "no such object instance",
    0x0119: "class / instance conflict",
    0x0122: "referenced SOP class not supported",
    0x0131: "duplicate transaction UID",
    0x0213: "resource limitation",
}


def describe_reason(reason: int) -> str:
    """``0x0112 (no such object instance)``; an unknown value as ``0x0123 (unknown reason)``."""
    return f"0x{reason:04X} ({FAILURE_REASONS.get(reason, 'unknown reason')})"


def add_parser(sub: Any) -> None:
    """Add the ``stgcmtscu`` sub-command to ``sub``."""
    p = sub.add_parser(
        "stgcmtscu",
        help=APPS["stgcmtscu"],
        description="Send a Storage Commitment request (N-ACTION) for the instances in the "
        "files and folders named, and wait for the peer's report (N-EVENT-REPORT), on the "
        "same association or, with --listen-port, on one the peer opens.",
    )
    add_scu(p)
    for action in p._actions:
        if action.dest == "called_aet":
            # the peer decides by our AE title and its own: no default that would hide a typo
            action.required = True
            action.default = None
    p.add_argument("paths", nargs="+", metavar="FILE", help="files or folders (walked)")
    p.add_argument(
        "--listen-port",
        type=listen_port,
        default=None,
        metavar="P",
        help="also listen on this port while waiting, for a report on a new association "
        "(0: any free port, printed)",
    )
    p.add_argument(
        "--listen-host",
        default="0.0.0.0",
        metavar="H",
        help="address to listen on with --listen-port",
    )
    p.add_argument(
        "--timeout",
        type=timeout,
        default=600.0,
        metavar="S",
        help="seconds to wait for the report after the request was accepted",
    )
    add_common(p)
    p.set_defaults(func=run)


async def run(args: argparse.Namespace) -> int:
    """Request the commitment and wait for the report; 0 if every instance was committed."""
    problems = _Report()
    paths = _walk(args.paths, problems)
    items = await anyio.to_thread.run_sync(_scan, paths, problems)
    files: dict[tuple[str, str], Path] = {}
    for item in items:
        files.setdefault((item.source.sop_class_uid, item.source.sop_instance_uid), item.path)
    if not files:
        _print_problems(problems, show_all=True, all_stored=False)
        raise CLIError("nothing to commit: no DICOM instance in the files named")
    ae = scu_ae(args)
    if args.listen_port is None:
        return await _commit(args, ae, files, problems)
    ae.config = dataclasses.replace(
        ae.config, supported_contexts=storage_commitment_scu_supported()
    )
    listen_tls = None
    if getattr(args, "ssl_context", None) is not None:
        # with --tls the report comes over TLS too: our certificate serves the listener, and
        # the reporting peer must show one signed by --tls-ca
        if args.tls_cert is None:
            raise CLIError(
                "--listen-port with --tls needs --tls-cert (and --tls-key): the listener "
                "that receives the report serves TLS with our certificate"
            )
        from ..transport import server_context

        listen_tls = server_context(args.tls_cert, args.tls_key, ca=args.tls_ca)
    async with listening(ae, args.listen_host, args.listen_port, ssl_context=listen_tls) as server:
        say_listening("stgcmtscu", ae, args.listen_host, server.port, " for the report")
        return await _commit(args, ae, files, problems)


async def _commit(
    args: argparse.Namespace,
    ae: AE,
    files: dict[tuple[str, str], Path],
    problems: _Report,
) -> int:
    peer = format_address(args.host, args.port)
    try:
        async with associate(args, STORAGE_COMMITMENT, ae=ae) as assoc:
            result = await assoc.commit(list(files), timeout=args.timeout)
    except CommitmentTimeout:
        _print_problems(problems, show_all=True, all_stored=False)
        hint = (
            ""
            if args.listen_port is not None
            else " (if the peer reports on a new association, give --listen-port)"
        )
        err(f"no storage commitment report from {peer} within {args.timeout:g} s (--timeout){hint}")
        return 1
    except CommitmentRefused as exc:
        _print_problems(problems, show_all=True, all_stored=False)
        err(f"{peer} refused the storage commitment request: {exc.response}")
        return 1
    return _print_result(result, files, problems)


def _print_result(
    result: CommitmentResult, files: dict[tuple[str, str], Path], problems: _Report
) -> int:
    """One error line per instance not committed, then the summary; the exit status."""
    _print_problems(problems, show_all=True, all_stored=False)
    committed = {uid for _cls, uid in result.committed}
    reasons = {uid: reason for _cls, uid, reason in result.failed}
    failed = 0
    for (_sop_class, uid), path in files.items():
        if uid in committed and uid not in reasons:
            continue
        failed += 1
        why = describe_reason(reasons[uid]) if uid in reasons else "not in the report"
        err(f"{path}: not committed: {why} (SOP Instance UID {uid})")
    total = len(files)
    print(
        f"committed {total - failed} of {total} instances, failed {failed}; transaction "
        f"{result.transaction_uid}, reported by {result.reported_by or 'the peer'}",
        flush=True,
    )
    return 0 if failed == 0 and problems.failed == 0 else 1
