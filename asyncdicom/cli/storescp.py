"""``asyncdicom storescp``: receive C-STORE and write Part 10 files.

The output folder is created if needed and checked at start, before listening: one that cannot
be written is one error line and exit status 2; temporary files that an interrupted run left in
it are removed.  While it runs, ``storescp`` prints one line per association that stored
something when the association ends (how many instances, how many bytes, from whom, how long,
how it ended); ``-v`` adds one line per instance.  An instance that cannot be written is one
warning line and a failure status for the peer (0xA700 out of resources when the file system
refused it), never a traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from ..ae import AE
from ..errors import StorageError
from ..hooks import HookEvent
from ..services.storage import save_request, store_failure_status
from ..storage.writer import DUPLICATE_POLICIES, LAYOUTS, remove_stale_temp_files
from .common import (
    access_control,
    add_access_control,
    add_common,
    add_max_pdu,
    add_server_timeouts,
    add_tls_server,
    ae_title,
    audit_trail,
    err,
    format_address,
    install_access_control,
    listen_port,
    notice,
    server_timeouts,
    server_tls,
)

__all__ = ["add_file_options", "add_parser", "output_folder", "prepare_output_folder", "run"]


def add_parser(sub: Any) -> None:
    """Add the ``storescp`` sub-command to ``sub``."""
    p = sub.add_parser(
        "storescp",
        help="receive DICOM files with C-STORE",
        description="Accept associations, store the instances received by C-STORE, answer C-ECHO.",
    )
    p.add_argument(
        "--port",
        type=listen_port,
        required=True,
        metavar="P",
        help="TCP port to listen on, 0..65535 (0: any free port, printed at start)",
    )
    p.add_argument(
        "--host",
        default="0.0.0.0",
        metavar="H",
        help="address to listen on ('::' for every IPv6 interface)",
    )
    p.add_argument(
        "--aet",
        type=ae_title,
        default="STORESCP",
        metavar="A",
        help="our AE title (any Called AE Title is accepted unless --require-called-aet)",
    )
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument(
        "--output-dir",
        type=output_folder,
        metavar="DIR",
        help="write received files here (created if needed; must be writable)",
    )
    out.add_argument("--ignore", action="store_true", help="receive and discard")
    add_file_options(p)
    add_server_timeouts(p)
    add_max_pdu(p)
    add_access_control(p)
    add_tls_server(p)
    add_common(p)
    p.set_defaults(func=run)


# --------------------------------------------------------------------------- output folder


def add_file_options(p: argparse.ArgumentParser) -> None:
    """``--layout`` and ``--on-duplicate``: how received instances are named in the output
    folder (storescp, getscu)."""
    p.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="flat",
        help="flat: DIR/<SOP Instance UID>.dcm; sorted: "
        "DIR/<Patient ID>/<Study UID>/<Series UID>/<SOP Instance UID>.dcm",
    )
    p.add_argument(
        "--on-duplicate",
        choices=DUPLICATE_POLICIES,
        default="unique",
        help="when a file with the instance's name exists: unique keeps both (the new one as "
        "<name>_1.dcm), overwrite replaces it, ignore keeps it and drops the new one; "
        "each case is a warning",
    )


def output_folder(text: str) -> Path:
    """An argparse type: the ``--output-dir`` path (checked further at start, see
    :func:`prepare_output_folder`)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("the folder name is empty")
    return Path(text)


def prepare_output_folder(path: Path) -> str | None:
    """Create ``path`` if needed and check that a file can be created in it; return what is
    wrong, or ``None``.  The check writes and removes a temporary file, so it finds whatever
    would refuse the instances (permissions, a read-only file system, a file in the way)."""
    shown = repr(str(path))
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        return f"{shown} is not a folder"
    except OSError as exc:
        return f"cannot create the folder {shown}: {exc.strerror or exc}"
    probe = path / f".{uuid.uuid4().hex}.part"  # named like a stale temporary file
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        return f"cannot write in the folder {shown}: {exc.strerror or exc}"
    os.close(fd)
    os.unlink(probe)
    return None


# --------------------------------------------------------------------------- reporting


@dataclass
class _Received:
    """What one association stored."""

    started: float
    instances: int = 0
    bytes: int = 0
    failed: int = 0


def _size(n: int) -> str:
    return f"{n / 1e3:.1f} kB" if n < 1_000_000 else f"{n / 1e6:.1f} MB"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class _Reporter:
    """Counts per association; one summary line when an association that stored (or failed to
    store) something ends."""

    def __init__(self) -> None:
        self._by_association: dict[int, _Received] = {}

    def install(self, ae: AE) -> None:
        ae.hooks.add(HookEvent.ASSOCIATION_ACCEPTED, self._accepted)
        ae.hooks.add(HookEvent.CONNECTION_CLOSED, self._closed)

    def counts(self, association: Any) -> _Received:
        received = self._by_association.get(association.id)
        if received is None:
            # the association has ended (its summary is out) while this request was served:
            # count it nowhere rather than keep an entry for a closed association
            received = _Received(time.monotonic())
        return received

    def _accepted(self, event: HookEvent, association: Any, **data: Any) -> None:
        self._by_association[association.id] = _Received(time.monotonic())

    def _closed(self, event: HookEvent, association: Any, **data: Any) -> None:
        received = self._by_association.pop(association.id, None)
        if received is None or not (received.instances or received.failed):
            return
        seconds = time.monotonic() - received.started
        peer = association.calling_ae_title or "?"
        where = format_address(association.peer_host, association.peer_port)
        if association.released:
            ending = "released"
        elif association.abort_info is not None:
            ending = "aborted"
        else:
            ending = "connection closed"
        failed = f", {received.failed} failed" if received.failed else ""
        notice(
            f"storescp: received {_plural(received.instances, 'instance')} "
            f"({_size(received.bytes)}) from {peer}@{where} in {seconds:.2f} s{failed} "
            f"({ending})",
            "association_summary",
            instances=received.instances,
            bytes=received.bytes,
            failed=received.failed,
            calling_aet=peer,
            peer=where,
            seconds=round(seconds, 3),
            ending=ending,
        )


def _sop_class_name(uid: str) -> str:
    from pydicom.uid import UID

    return str(UID(uid).name)


# --------------------------------------------------------------------------- the app


def storescp_ae(args: argparse.Namespace, reporter: _Reporter | None = None) -> AE:
    """The AE of ``storescp`` for the parsed options (the output folder must exist)."""
    ae = AE(
        args.aet,
        max_pdu_length=args.max_pdu,
        **access_control(args),
        **server_tls(args),
        accept_any_storage=True,
        timeouts=server_timeouts(args),
    )
    install_access_control(ae, args)
    reporter = reporter or _Reporter()
    reporter.install(ae)
    output: Path | None = None if args.ignore else args.output_dir
    per_instance = args.verbose >= 1
    on_duplicate = args.on_duplicate
    layout = args.layout

    @ae.on_store
    async def on_store(request: Any) -> int:
        association = request.association
        counts = reporter.counts(association)
        uid = request.message.affected_sop_instance_uid
        if output is None:
            size = 0
            async for chunk in request.chunks():
                size += len(chunk)
            file = None
        else:
            try:
                stored = await save_request(
                    request, output, on_duplicate=on_duplicate, layout=layout
                )
            except (OSError, StorageError, ValueError) as exc:
                counts.failed += 1
                status = store_failure_status(exc)
                association.log.warning(
                    "store_failed",
                    instance=uid,
                    status=f"0x{status:04X}",
                    error=str(exc) or type(exc).__name__,
                )
                return status
            size = stored.dataset_size
            file = str(stored)
        counts.instances += 1
        counts.bytes += size
        if per_instance:
            association.log.info(
                "instance_received",
                sop_class=_sop_class_name(request.message.affected_sop_class_uid),
                instance=uid,
                file=file,
                bytes=size,
            )
        return 0x0000

    return ae


async def run(args: argparse.Namespace) -> int:
    """Run ``storescp`` until SIGINT or SIGTERM; the exit status."""
    if not args.ignore:
        output: Path = args.output_dir
        problem = prepare_output_folder(output)
        if problem is not None:
            err(f"argument --output-dir: {problem}")
            return 2
        removed = remove_stale_temp_files(output)
        if removed:
            notice(
                f"storescp: removed {_plural(removed, 'temporary file')} left in {output} "
                "by an interrupted run",
                "stale_temp_files_removed",
                count=removed,
                folder=str(output),
            )
    ae = storescp_ae(args)
    # the signals are caught before the "listening" line: a SIGTERM sent as soon as it is
    # read stops the app cleanly (exit status 0)
    with (
        audit_trail(ae, args),
        anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
    ):
        async with anyio.create_task_group() as tg:
            server = await tg.start(ae.serve, args.host, args.port)
            notice(
                f"storescp: {ae.ae_title} listening on {format_address(args.host, server.port)}",
                "listening",
                ae_title=ae.ae_title,
                host=args.host,
                port=server.port,
            )
            async for _ in signals:
                break
            tg.cancel_scope.cancel()
    return 0
