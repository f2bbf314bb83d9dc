"""``asyncdicom qrscp``: a small archive (Query/Retrieve SCP).

Stores the instances it receives by C-STORE in a folder (sorted by patient, study and series)
and indexes them in SQLite; answers C-FIND, C-GET, C-MOVE and C-ECHO from that index
(:class:`asyncdicom.archive.Archive`).  The index is kept across restarts; a new index on a
folder that already holds files indexes them first.  At start qrscp checks that it can listen
(``cannot listen on HOST:PORT: REASON``, exit status 1, and no folder or index created), then
checks the storage folder: one that cannot be written, or an index file that cannot be used,
is one error line and exit status 2.  C-MOVE destinations are given as
``--move-destination AET=HOST:PORT`` (repeatable).

It also answers Storage Commitment requests (N-ACTION): each instance is looked up in the index
and the report (N-EVENT-REPORT) goes back on the requesting association while it is open, else
on a new association to the requestor's address, given as ``--peer AET=HOST:PORT``
(repeatable).

The associations qrscp opens (to C-MOVE destinations, and to storage commitment peers for the
reports) are plain TCP unless ``--tls-out`` (TLS to every one) or ``--tls-out-to AET``
(repeatable: TLS to those AE titles only, ``AEConfig.client_ssl_contexts``) says
otherwise.
"""

from __future__ import annotations

import argparse
import functools
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from ..ae import AE
from ..archive import Archive, qrscp_config
from ..qr import IndexDatabaseError
from ..qr.postgres import install_hint, is_postgresql_url
from .apps import APPS
from .argtypes import ae_title, folder, port, quoted
from .options import add_common, add_server, add_tls_out
from .output import UsageError, notice, plural
from .server import (
    audit_trail,
    install_access_control,
    outgoing_tls,
    serve_until_signal,
    serve_workers_until_signal,
    server_config,
    start_server,
    worker_args,
    worker_process_args,
)
from .storescp import add_store_as, check_store_as

__all__ = ["add_parser", "db_file", "move_destination", "qrscp_ae", "qrscp_worker", "run"]


def move_destination(text: str) -> tuple[str, str, int]:
    """An argparse type: ``AET=HOST:PORT`` (an IPv6 address in brackets, ``[::1]:104``) ->
    (AE title, host, port)."""
    title, sep, address = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{quoted(text)}: expected AET=HOST:PORT")
    aet = ae_title(title)
    host, colon, port_text = address.rpartition(":")
    if not colon or not host or not port_text:
        raise argparse.ArgumentTypeError(f"{quoted(text)}: expected AET=HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise argparse.ArgumentTypeError(
            f"{quoted(text)}: write an IPv6 address in brackets, e.g. {aet}=[::1]:104"
        )
    if not host or any(ch.isspace() for ch in host):
        raise argparse.ArgumentTypeError(f"{quoted(text)}: no valid host")
    return aet, host, port(port_text)


def db_file(text: str) -> Path | str:
    """An argparse type: the ``--db`` path, or a ``postgresql://`` URL (opened at start; its
    driver must be installed)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("the file name is empty")
    if is_postgresql_url(text):
        if hint := install_hint():
            raise argparse.ArgumentTypeError(hint)
        return text
    return Path(text)


def add_parser(sub: Any) -> None:
    """Add the ``qrscp`` sub-command to ``sub``."""
    p = sub.add_parser(
        "qrscp",
        help=APPS["qrscp"],
        description="Store the instances received by C-STORE, index them in SQLite, and answer "
        "C-FIND, C-GET, C-MOVE, C-ECHO and storage commitment requests from the index.",
    )
    add_server(p, "QRSCP")
    p.add_argument(
        "--storage",
        type=folder,
        required=True,
        metavar="DIR",
        help="the archive's folder (created if needed; must be writable)",
    )
    add_store_as(p, retrieve=True)
    p.add_argument(
        "--db",
        type=db_file,
        default=None,
        metavar="FILE|URL",
        help="the SQLite index file (default: DIR/index.sqlite), or a PostgreSQL database "
        "(postgresql://user@host:port/dbname; needs asyncdicom[postgresql]) that several "
        "qrscp nodes may share",
    )
    p.add_argument(
        "--check-folder",
        action="store_true",
        help="compare the folder with the index at start and index the files it lacks, also "
        "on a PostgreSQL index (with every node sharing it stopped); a SQLite index is "
        "always checked",
    )
    p.add_argument(
        "--move-destination",
        type=move_destination,
        action="append",
        default=None,
        metavar="AET=HOST:PORT",
        help="an AE a C-MOVE may send to (repeatable)",
    )
    p.add_argument(
        "--peer",
        type=move_destination,
        action="append",
        default=None,
        metavar="AET=HOST:PORT",
        help="where a Storage Commitment requestor listens, for reports on a new association "
        "(repeatable)",
    )
    p.add_argument(
        "--worklist",
        type=folder,
        default=None,
        metavar="DIR",
        help="answer Modality Worklist C-FIND from the .wl/.dcm files of DIR (read again as "
        "they change)",
    )
    p.add_argument(
        "--mpps",
        type=folder,
        default=None,
        metavar="DIR",
        help="the folder where the MPPS procedure steps are kept (default: mpps in --storage)",
    )
    add_tls_out(
        p, "C-MOVE destinations and storage commitment peers", "--move-destination or --peer"
    )
    add_common(p)
    p.set_defaults(func=run)


def qrscp_ae(args: argparse.Namespace) -> AE:
    """The AE of ``qrscp`` for the parsed options (the archive's handlers not yet installed)."""
    ae = AE(
        config=qrscp_config(
            args.aet,
            **server_config(args),
            **outgoing_tls(args),
            retrieve_allow_lossy=bool(getattr(args, "allow_lossy", False)),
        )
    )
    install_access_control(ae, args)
    return ae


async def run(args: argparse.Namespace) -> int:
    """Run ``qrscp`` until SIGINT or SIGTERM; the exit status."""
    storage: Path = args.storage
    destinations: dict[str, tuple[str, int]] = {}
    for aet, host, peer_port in args.move_destination or []:
        if aet in destinations:
            raise UsageError(f"argument --move-destination: {quoted(aet)} is given twice")
        destinations[aet] = (host, peer_port)
    peers: dict[str, tuple[str, int]] = {}
    for aet, host, peer_port in args.peer or []:
        if aet in peers:
            raise UsageError(f"argument --peer: {quoted(aet)} is given twice")
        peers[aet] = (host, peer_port)
    for aet in args.tls_out_to or []:
        if aet not in destinations and aet not in peers:
            raise UsageError(
                f"argument --tls-out-to: {quoted(aet)} is neither a --move-destination nor a --peer"
            )
    if args.worklist is not None and not args.worklist.is_dir():
        raise UsageError(f"argument --worklist: {quoted(str(args.worklist))} is not a folder")
    check_store_as(args)
    # nothing is created (folder, index) before it is known that qrscp can listen
    await start_server(args, "qrscp", storage, "--storage")
    archive = Archive(
        storage,
        db=args.db,
        move_destinations=destinations,
        commitment_peers=peers,
        check_folder=True if args.check_folder else None,
        store_as=args.store_as,
        allow_lossy=args.allow_lossy,
    )
    try:
        await archive.open()
    except (IndexDatabaseError, sqlite3.Error, OSError) as exc:
        raise UsageError(
            f"argument --db: cannot use the index {quoted(archive.db_name)}: {exc}"
        ) from None
    try:
        for line in archive.folder_check.report(storage):
            notice(f"qrscp: {line}", "folder_checked", db=archive.db_name)
        ae = qrscp_ae(args)
        archive.install(ae)
        await install_worklist_and_mpps(ae, args, storage)
        count = await anyio.to_thread.run_sync(archive.index.count)
        detail = f" ({plural(count, 'instance')} in {storage})"
        if args.workers != 1:
            # the folder is checked and the index complete: the workers open it as it is
            await archive.aclose()
            factory = functools.partial(qrscp_worker, worker_args(args), destinations, peers)
            return await serve_workers_until_signal(
                factory, args, "qrscp", detail=detail, instances=count
            )
        return await serve_until_signal(
            ae,
            args,
            "qrscp",
            detail=detail,
            instances=count,
        )
    finally:
        await archive.aclose()


@asynccontextmanager
async def qrscp_worker(
    args: argparse.Namespace,
    destinations: dict[str, tuple[str, int]],
    peers: dict[str, tuple[str, int]],
    info: Any,
) -> AsyncIterator[AE]:
    """The AE of one worker process of ``qrscp --workers``: the archive opened without the
    folder check (done once, before the workers start), MPPS steps read from their files
    (another worker may have written them), the audit trail."""
    args = worker_process_args(args, info)
    archive = Archive(
        args.storage,
        db=args.db,
        move_destinations=destinations,
        commitment_peers=peers,
        check_folder=False,
        store_as=args.store_as,
        allow_lossy=args.allow_lossy,
    )
    async with archive:
        ae = qrscp_ae(args)
        archive.install(ae)
        await install_worklist_and_mpps(ae, args, args.storage, worker=True)
        with audit_trail(ae, args):
            yield ae


async def install_worklist_and_mpps(
    ae: AE, args: argparse.Namespace, storage: Path, *, worker: bool = False
) -> None:
    """Serve MPPS on ``ae`` (steps kept in ``--mpps``, by default ``STORAGE/mpps``) and, with
    ``--worklist``, the Modality Worklist; raises :class:`UsageError` for a folder that cannot
    be used.  ``worker``: in a worker process of ``--workers`` (what was said at start is not
    said again; the MPPS folder is shared with the other workers).  With a PostgreSQL index
    the MPPS folder is taken as shared too (other nodes use it)."""
    from ..services.mpps import MPPSSCP
    from ..worklist import Worklist

    if args.worklist is not None:
        worklist = Worklist(args.worklist)
        count = len(await anyio.to_thread.run_sync(worklist.items))
        worklist.install(ae)
        if not worker:
            notice(
                f"qrscp: Modality Worklist: {plural(count, 'item')} in {args.worklist}",
                "worklist_loaded",
                items=count,
                folder=str(args.worklist),
            )
    folder = args.mpps if args.mpps is not None else storage / "mpps"
    try:
        mpps = await anyio.to_thread.run_sync(MPPSSCP, folder)
    except OSError as exc:
        reason = exc.strerror or exc
        raise UsageError(
            f"argument --mpps: cannot read the folder {quoted(str(folder))}: {reason}"
        ) from None
    # the workers of one server share the folder, and so do the nodes on one PostgreSQL index
    mpps.shared_folder = worker or is_postgresql_url(args.db)
    mpps.install(ae)
    for path, reason in [] if worker else mpps.skipped:
        notice(f"qrscp: MPPS: skipped {path}: {reason}", "mpps_file_skipped", file=str(path))
