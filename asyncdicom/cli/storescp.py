"""``asyncdicom storescp``: receive C-STORE and write Part 10 files.

At start ``storescp`` checks that it can listen (``cannot listen on HOST:PORT: REASON``, exit
status 1, and nothing created otherwise), then creates the output folder if needed and checks
it: one that cannot be written is one error line and exit status 2; temporary files that an
interrupted run left in it are removed.  While it runs, ``storescp`` prints one line per
association that stored something when the association ends (how many instances, how many
bytes, from whom, how long, how it ended); ``-v`` adds one line per instance.  An instance that
cannot be written is one warning line and a failure status for the peer (0xA700 out of
resources when the file system refused it), never a traceback.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..ae import AE
from ..errors import StorageError
from ..hooks import HookEvent
from ..protocol import messages
from ..protocol.uids import EXPLICIT_VR_LITTLE_ENDIAN
from ..services import make_response
from ..services.storage import (
    convert_saved,
    save_request,
    store_failure_comment,
    store_failure_status,
)
from ..storage.writer import DUPLICATE_POLICIES, LAYOUTS
from .apps import APPS
from .argtypes import folder
from .options import add_common, add_server
from .output import UsageError, format_address, notice, plural, uid_name
from .server import (
    audit_trail,
    install_access_control,
    serve_until_signal,
    serve_workers_until_signal,
    server_config,
    start_server,
    worker_args,
    worker_process_args,
)

if TYPE_CHECKING:
    from ..storage.dicomdir import DicomdirUpdater

__all__ = [
    "add_file_options",
    "add_parser",
    "add_store_as",
    "check_store_as",
    "media_directory",
    "run",
    "storescp_ae",
    "storescp_worker",
]


def add_parser(sub: Any) -> None:
    """Add the ``storescp`` sub-command to ``sub``."""
    p = sub.add_parser(
        "storescp",
        help=APPS["storescp"],
        description="Accept associations, store the instances received by C-STORE, answer C-ECHO.",
    )
    add_server(p, "STORESCP")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument(
        "--output-dir",
        type=folder,
        metavar="DIR",
        help="write received files here (created if needed; must be writable)",
    )
    out.add_argument("--ignore", action="store_true", help="receive and discard")
    add_file_options(p)
    add_store_as(p)
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
        "DIR/<Patient ID>/<Study UID>/<Series UID>/<SOP Instance UID>.dcm; media: "
        "DIR/PAxxxxxx/STxxxxxx/SExxxxxx/IMxxxxxx (General Purpose CD-R profile) with "
        "DIR/DICOMDIR kept current",
    )
    p.add_argument(
        "--on-duplicate",
        choices=DUPLICATE_POLICIES,
        default="unique",
        help="when a file with the instance's name exists: unique keeps both (the new one as "
        "<name>_1.dcm), overwrite replaces it, ignore keeps it and drops the new one; "
        "each case is a warning",
    )


@contextmanager
def media_directory(
    args: argparse.Namespace, app: str, folder: Path | None
) -> Iterator[DicomdirUpdater | None]:
    """With ``--layout media``, the updater of ``folder/DICOMDIR`` (else None): its first
    rewrite (started now, in the background) adds what an earlier run stored without listing
    it; when the block ends, it lists every instance stored.  A rewrite that fails is a
    warning line; ``-v`` tells each rewrite."""
    if args.layout != "media" or folder is None:
        yield None
        return
    from ..storage.dicomdir import DicomdirUpdater

    def failed(path: Path, reason: str) -> None:
        notice(f"{app}: DICOMDIR: {path}: {reason}", "dicomdir_problem", path=str(path))

    def written(path: Path, count: int) -> None:
        if args.verbose >= 1:
            notice(
                f"{app}: {path} lists {plural(count, 'instance')}",
                "dicomdir_written",
                path=str(path),
                instances=count,
            )

    updater = DicomdirUpdater(folder, recover=True, on_error=failed, on_written=written)
    updater.request()
    try:
        yield updater
    finally:
        try:
            updater.close()
        except OSError as exc:
            failed(folder / "DICOMDIR", f"not written: {exc.strerror or exc}")


def _syntax(text: str) -> str:
    from ..storage.transcoding import syntax_by_name

    try:
        return syntax_by_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_store_as(p: argparse.ArgumentParser, *, retrieve: bool = False) -> None:
    """``--store-as SYNTAX`` and ``--allow-lossy`` (storescp; qrscp with ``retrieve``: the
    flag also lets C-GET/C-MOVE sub-operations compress lossily)."""
    p.add_argument(
        "--store-as",
        type=_syntax,
        default=None,
        metavar="SYNTAX",
        help="store every instance in this transfer syntax (a UID, a keyword such as "
        "ExplicitVRLittleEndian, or explicit, implicit, deflated, rle, jpeg-ls-lossless, "
        "jpeg2000-lossless, ...); an instance that cannot be converted is kept as received, "
        "with a warning",
    )
    p.add_argument(
        "--allow-lossy",
        action="store_true",
        help=(
            "let --store-as name a lossy syntax, and C-GET/C-MOVE compress an instance lossily "
            "for a destination that accepts only lossy syntaxes for its SOP class (each "
            "instance so converted becomes a new instance, with a new SOP Instance UID)"
            if retrieve
            else "let --store-as name a lossy syntax (each instance converted becomes a new "
            "instance, with a new SOP Instance UID)"
        ),
    )


def check_store_as(args: argparse.Namespace) -> None:
    """A lossy ``--store-as`` needs ``--allow-lossy``; a compressed one, the codecs."""
    from ..storage.transcoding import can_encode, conversion_refused, is_lossy

    target = args.store_as
    if target is None:
        return
    if is_lossy(target) and not args.allow_lossy:
        raise UsageError(
            f"argument --store-as: {uid_name(target)} is lossy: add --allow-lossy to store "
            "instances lossily (each becomes a new instance)"
        )
    if not can_encode(target):
        why = conversion_refused(EXPLICIT_VR_LITTLE_ENDIAN, target, allow_lossy=True)
        raise UsageError(f"argument --store-as: {why or 'cannot encode ' + uid_name(target)}")


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
            f"storescp: received {plural(received.instances, 'instance')} "
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


# --------------------------------------------------------------------------- the app


def storescp_ae(
    args: argparse.Namespace,
    reporter: _Reporter | None = None,
    media: DicomdirUpdater | None = None,
) -> AE:
    """The AE of ``storescp`` for the parsed options (the output folder must exist); with
    ``media`` (:func:`media_directory`), each stored instance is noted in the DICOMDIR,
    rewritten when an association ends."""
    ae = AE(args.aet, **server_config(args), accept_any_storage=True)
    install_access_control(ae, args)
    reporter = reporter or _Reporter()
    reporter.install(ae)
    if media is not None:
        ae.hooks.add(HookEvent.CONNECTION_CLOSED, lambda *_a, **_k: media.request())
    output: Path | None = None if args.ignore else args.output_dir
    per_instance = args.verbose >= 1
    on_duplicate = args.on_duplicate
    layout = args.layout
    target_syntax: str | None = getattr(args, "store_as", None)
    allow_lossy = bool(getattr(args, "allow_lossy", False))

    @ae.on_store
    async def on_store(request: Any) -> int | messages.Response:
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
                # the reason travels to the peer too (Error Comment), as qrscp's does
                return make_response(
                    request.message, status, error_comment=store_failure_comment(exc)
                )
            size = stored.dataset_size
            file = str(stored)
            if target_syntax is not None:
                converted, _ = await convert_saved(
                    association, stored, target_syntax, allow_lossy=allow_lossy
                )
                file = str(converted)
            if media is not None:
                media.add(file)
        counts.instances += 1
        counts.bytes += size
        if per_instance:
            association.log.info(
                "instance_received",
                sop_class=uid_name(request.message.affected_sop_class_uid, show_uid=False),
                instance=uid,
                file=file,
                bytes=size,
            )
        return 0x0000

    return ae


async def run(args: argparse.Namespace) -> int:
    """Run ``storescp`` until SIGINT or SIGTERM; the exit status."""
    check_store_as(args)
    await start_server(args, "storescp", None if args.ignore else args.output_dir, "--output-dir")
    if args.workers != 1:
        factory = functools.partial(storescp_worker, worker_args(args))
        return await serve_workers_until_signal(factory, args, "storescp")
    with media_directory(args, "storescp", _output(args)) as media:
        return await serve_until_signal(storescp_ae(args, media=media), args, "storescp")


def _output(args: argparse.Namespace) -> Path | None:
    return None if args.ignore else Path(args.output_dir)


@asynccontextmanager
async def storescp_worker(args: argparse.Namespace, info: Any) -> AsyncIterator[AE]:
    """The AE of one worker process of ``storescp --workers`` (with its audit trail)."""
    args = worker_process_args(args, info)
    with media_directory(args, "storescp", _output(args)) as media:
        ae = storescp_ae(args, media=media)
        with audit_trail(ae, args):
            yield ae
