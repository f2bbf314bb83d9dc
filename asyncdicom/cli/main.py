"""The ``asyncdicom`` command: echoscu, storescu, storescp and demo.

Exit status: 0 only on full success, 1 when an operation failed (rejected, aborted, a status
other than success/warning), 2 for usage errors.  Errors are one clear line on stderr; ``-v``
shows the protocol log (``-vv`` debug), ``--log-json`` makes it JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

from .. import __version__
from ..ae import AE, ContextRequest, Timeouts
from ..errors import DICOMError
from ..log import configure_cli_logging
from ..protocol import uids
from ..protocol.status import StatusCategory, category
from ..storage.files import StorageError

if TYPE_CHECKING:
    from ..storage.files import Part10Source

__all__ = ["main"]


class CLIError(Exception):
    """A failure to report as one line and exit status 1."""


# --------------------------------------------------------------------------- helpers


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv)")
    p.add_argument("--log-json", action="store_true", help="log as JSON lines on stderr")
    p.add_argument(
        "--backend",
        choices=("asyncio", "trio"),
        default="asyncio",
        help="async library to run on (default asyncio)",
    )


def _add_scu(p: argparse.ArgumentParser) -> None:
    p.add_argument("host", help="peer host name or address (IPv4 or IPv6)")
    p.add_argument("port", type=int, help="peer TCP port")
    p.add_argument("--aet", default="ASYNCDICOM", help="our (calling) AE title")
    p.add_argument("--called-aet", default="ANY-SCP", help="the peer's (called) AE title")
    p.add_argument("--bind", default=None, help="local address to connect from")
    p.add_argument("--max-pdu", type=int, default=262144, help="largest PDU we accept")
    p.add_argument("--acse-timeout", type=float, default=30.0, metavar="S")
    p.add_argument("--dimse-timeout", type=float, default=60.0, metavar="S")
    p.add_argument("--connect-timeout", type=float, default=30.0, metavar="S")


def _scu_ae(args: argparse.Namespace) -> AE:
    return AE(
        args.aet,
        max_pdu_length=args.max_pdu,
        timeouts=Timeouts(
            connect=args.connect_timeout, acse=args.acse_timeout, dimse=args.dimse_timeout
        ),
    )


def _ok(status: int) -> bool:
    return category(status) in (StatusCategory.SUCCESS, StatusCategory.WARNING)


def _err(text: str) -> None:
    print(f"asyncdicom: error: {text}", file=sys.stderr)


# --------------------------------------------------------------------------- echoscu


async def _echoscu(args: argparse.Namespace) -> int:
    ae = _scu_ae(args)
    started = time.perf_counter()
    failures = 0
    async with ae.associate(
        args.host,
        args.port,
        called_aet=args.called_aet,
        contexts=[uids.VERIFICATION],
        bind=args.bind,
    ) as assoc:
        for _ in range(args.repeat):
            status = (await assoc.echo()).status
            if status != 0x0000:
                failures += 1
                _err(f"C-ECHO status 0x{status:04X}")
    elapsed = time.perf_counter() - started
    print(
        f"C-ECHO {args.repeat - failures}/{args.repeat} succeeded with {args.host}:{args.port}"
        f" in {elapsed:.3f} s"
    )
    return 0 if failures == 0 else 1


# --------------------------------------------------------------------------- storescu


@dataclass
class _StoreItem:
    path: Path
    sop_class_uid: str
    transfer_syntax_uid: str
    size: int
    #: the file as located by the scan; store() reuses it instead of parsing the header again
    source: Part10Source | None = None


@dataclass
class _StoreStats:
    sent: int = 0
    warnings: int = 0
    failed: int = 0
    bytes: int = 0
    errors: list[str] = field(default_factory=list)


def _walk(paths: Sequence[str]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            for root, _dirs, files in os.walk(path):
                base = Path(root)
                # sort the names, not Paths (comparing Paths is slow for thousands of files)
                out.extend(base / f for f in sorted(files))
        elif path.exists():
            out.append(path)
        else:
            raise CLIError(f"no such file or folder: {p}")
    return out


def _scan(paths: list[Path], stats: _StoreStats) -> list[_StoreItem]:
    from ..storage.files import InvalidDicomFile, read_part10_for_send

    items = []
    for path in paths:
        try:
            src = read_part10_for_send(path)
        except (InvalidDicomFile, OSError) as exc:
            stats.failed += 1
            stats.errors.append(f"{path}: not a DICOM file ({exc})")
            continue
        size = src.dataset_offset + src.dataset_length  # the whole file
        items.append(_StoreItem(path, src.sop_class_uid, src.transfer_syntax_uid, size, src))
    return items


def _contexts_for(items: list[_StoreItem]) -> list[ContextRequest]:
    """Presentation contexts to send ``items``.

    Each (SOP class, file transfer syntax) gets a context proposing only that syntax, so that a
    file goes out exactly as stored whichever syntax the acceptor prefers; each SOP class with
    uncompressed files also gets one fallback context proposing Explicit and Implicit VR Little
    Endian, for an acceptor that refuses the file's own syntax (the file is then transcoded).
    """
    contexts: list[ContextRequest] = []
    seen: set[tuple[str, str]] = set()
    fallback: set[str] = set()
    for it in items:
        key = (it.sop_class_uid, it.transfer_syntax_uid)
        if key not in seen:
            seen.add(key)
            contexts.append(ContextRequest(it.sop_class_uid, (it.transfer_syntax_uid,)))
        if it.transfer_syntax_uid in uids.UNCOMPRESSED_TRANSFER_SYNTAXES:
            fallback.add(it.sop_class_uid)
    for sop_class in sorted(fallback):
        contexts.append(
            ContextRequest(
                sop_class, (uids.EXPLICIT_VR_LITTLE_ENDIAN, uids.IMPLICIT_VR_LITTLE_ENDIAN)
            )
        )
    if len(contexts) > 128:
        raise CLIError(
            f"{len(contexts)} presentation contexts needed (one per SOP class and transfer "
            "syntax, plus fallbacks): more than the 128 one association can carry"
        )
    return contexts


class _AssociationLost(Exception):
    """A store failed and took the association with it (e.g. a file that became unreadable
    in the middle of its data set: the half-sent message forces an abort)."""


#: (item, what to pass to store(), or the error that loading the file raised)
_Loaded = tuple[_StoreItem, "Part10Source | Path | Exception"]


def _load(item: _StoreItem) -> Part10Source | Path | Exception:
    """Worker thread: read a small file's data set into memory (one open, one read); a big
    one is left to store(), which streams it."""
    from ..services.storage import SEND_WHOLE_LIMIT
    from ..storage.files import InvalidDicomFile

    source = item.source
    if source is None:
        return item.path
    if source.dataset_length > SEND_WHOLE_LIMIT:
        return source
    try:
        return source.load()
    except (InvalidDicomFile, OSError) as exc:
        return exc


#: data sets up to this size are read in the event loop's thread by the prefetcher; bigger
#: ones (up to SEND_WHOLE_LIMIT) in a worker thread.  See _prefetch.
_INLINE_READ_LIMIT = 1 << 20


async def _prefetch(
    queue: Any, ready: Any, stats: _StoreStats, advance: Callable[[int], None]
) -> None:
    """Take items from the shared queue and load each one item ahead of the sender: the next
    file is read while the current C-STORE is on the wire (the loop is waiting for its
    response then).

    A data set of at most :data:`_INLINE_READ_LIMIT` is read right here, without a
    worker-thread hop: reading it from the page cache takes well under a millisecond, while
    the hop (wake a thread, wake the loop back up) cost more than the read itself and showed
    as a quarter of the send rate (1000 x 0.5 MB: ~790 -> ~1000 MB/s without it).  Bigger
    files are read in a worker thread, so the loop is never blocked for long.

    ``ready`` has no buffer, so at most one loaded item waits here besides the one being sent.
    If the sender stops (its association failed), the item in hand and the rest of the queue
    are counted as failed: they were this worker's share.
    """
    async with queue, ready:
        async for item in queue:
            if item.source is not None and item.source.dataset_length <= _INLINE_READ_LIMIT:
                loaded = _load(item)
            else:
                loaded = await anyio.to_thread.run_sync(_load, item)
            try:
                await ready.send((item, loaded))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                stats.failed += 1
                advance(1)
                async for _lost in queue:
                    stats.failed += 1
                    advance(1)
                return


async def _store_worker(
    args: argparse.Namespace,
    ae: AE,
    contexts: list[ContextRequest],
    queue: Any,
    stats: _StoreStats,
    advance: Callable[[int], None],
) -> None:
    send, ready = anyio.create_memory_object_stream[_Loaded](0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_prefetch, queue, send, stats, advance)
        await _store_loaded(args, ae, contexts, ready, stats, advance)


async def _store_loaded(
    args: argparse.Namespace,
    ae: AE,
    contexts: list[ContextRequest],
    ready: Any,
    stats: _StoreStats,
    advance: Callable[[int], None],
) -> None:
    """One association: send what :func:`_prefetch` hands over until it is done."""
    async with ready:
        item: _StoreItem | None = None
        try:
            async with ae.associate(
                args.host,
                args.port,
                called_aet=args.called_aet,
                contexts=contexts,
                bind=args.bind,
            ) as assoc:
                async for item, loaded in ready:
                    if isinstance(loaded, Exception):
                        stats.failed += 1
                        stats.errors.append(f"{item.path}: {loaded}")
                        advance(1)
                        item = None
                        continue
                    try:
                        status = (await assoc.store(loaded)).status
                    except (DICOMError, StorageError, OSError) as exc:
                        # refused (no context, cannot transcode) or unreadable (a big file
                        # that changed since the scan): this file failed
                        if not assoc.is_established:
                            raise _AssociationLost(exc) from exc
                        stats.failed += 1
                        stats.errors.append(f"{item.path}: {exc}")
                    else:
                        if category(status) is StatusCategory.SUCCESS:
                            stats.sent += 1
                        elif category(status) is StatusCategory.WARNING:
                            stats.sent += 1
                            stats.warnings += 1
                        else:
                            stats.failed += 1
                            stats.errors.append(f"{item.path}: status 0x{status:04X}")
                        stats.bytes += item.size
                    advance(1)
                    item = None
        except (DICOMError, _AssociationLost) as exc:
            # this worker's association failed: its current item and whatever it would have
            # taken count as failed; the other workers go on
            stats.errors.append(f"association failed: {exc}")
            if item is not None:
                stats.failed += 1
                advance(1)
            # leaving ``async with ready`` tells _prefetch to count the rest as failed


def _no_progress(_n: int) -> None:
    pass


@contextlib.contextmanager
def _progress(total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar on a terminal (rich, imported only then); elsewhere nothing."""
    if not sys.stderr.isatty():
        yield _no_progress
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("storing"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
        transient=True,
    ) as progress:
        task = progress.add_task("store", total=total)
        yield partial(progress.advance, task)


async def _storescu(args: argparse.Namespace) -> int:
    stats = _StoreStats()
    paths = _walk(args.paths)
    items = await anyio.to_thread.run_sync(_scan, paths, stats)
    if not items:
        raise CLIError("nothing to send")
    contexts = _contexts_for(items)
    ae = _scu_ae(args)
    started = time.perf_counter()
    send, receive = anyio.create_memory_object_stream[_StoreItem](len(items))
    for it in items:
        send.send_nowait(it)
    send.close()
    with _progress(len(items)) as advance:
        async with anyio.create_task_group() as tg:
            for _ in range(max(1, min(args.concurrency, len(items)))):
                tg.start_soon(_store_worker, args, ae, contexts, receive.clone(), stats, advance)
            receive.close()
    elapsed = time.perf_counter() - started
    for line in stats.errors[:20]:
        _err(line)
    if len(stats.errors) > 20:
        _err(f"... and {len(stats.errors) - 20} more")
    mb = stats.bytes / 1e6
    print(
        f"sent {stats.sent}, failed {stats.failed}"
        + (f", with warnings {stats.warnings}" if stats.warnings else "")
        + f"; {mb:.1f} MB in {elapsed:.2f} s ({mb / elapsed if elapsed else 0:.1f} MB/s)"
    )
    return 0 if stats.failed == 0 and not stats.errors else 1


# --------------------------------------------------------------------------- storescp


def _storescp_ae(args: argparse.Namespace) -> AE:
    ae = AE(
        args.aet,
        max_pdu_length=args.max_pdu,
        max_associations=args.max_associations,
        accept_any_storage=True,
        timeouts=Timeouts(
            acse=args.acse_timeout,
            dimse=args.dimse_timeout,
            network=args.network_timeout,
            artim=args.acse_timeout,
        ),
    )
    output = None if args.ignore else Path(args.output_dir)
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)

    @ae.on_store
    async def on_store(request: Any) -> int:
        if output is None:
            await request.discard()
        else:
            await request.save_to(output)
        return 0x0000

    return ae


async def _storescp(args: argparse.Namespace) -> int:
    ae = _storescp_ae(args)
    async with anyio.create_task_group() as tg:
        server = await tg.start(ae.serve, args.host, args.port)
        print(
            f"storescp: {ae.ae_title} listening on {args.host}:{server.port}",
            file=sys.stderr,
            flush=True,
        )
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        tg.cancel_scope.cancel()
    return 0


# --------------------------------------------------------------------------- demo


def _sample_files() -> list[Path]:
    import pydicom.data

    folder = Path(pydicom.data.__file__).parent / "test_files"
    names = [
        "CT_small.dcm",
        "MR_small.dcm",
        "rtplan.dcm",
        "rtdose.dcm",
        "waveform_ecg.dcm",
        "JPEG2000.dcm",
        "MR_small_RLE.dcm",
        "SC_rgb.dcm",
    ]
    return [folder / n for n in names if (folder / n).exists()]


async def _demo(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..storage.files import read_part10_for_send

    console = Console()
    files = _sample_files()
    received: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="asyncdicom-demo-") as tmp:
        scp = AE("DEMO-SCP", accept_any_storage=True)

        @scp.on_store
        async def on_store(request: Any) -> int:
            path = await request.save_to(tmp)
            received[request.message.affected_sop_instance_uid] = path
            return 0x0000

        table = Table(title=f"asyncdicom {__version__} demo ({args.backend})")
        for col in ("operation", "object", "size", "status", "ms"):
            table.add_column(col)
        ok = True
        async with scp.server("127.0.0.1", 0) as server:
            scu = AE("DEMO-SCU")
            sources = [read_part10_for_send(f) for f in files]
            contexts = _contexts_for(
                [
                    _StoreItem(f, s.sop_class_uid, s.transfer_syntax_uid, f.stat().st_size)
                    for f, s in zip(files, sources, strict=True)
                ]
            )
            async with scu.associate(
                "127.0.0.1",
                server.port,
                called_aet="DEMO-SCP",
                contexts=[uids.VERIFICATION, *contexts],
            ) as assoc:
                stored = 0
                t0 = time.perf_counter()
                status = (await assoc.echo()).status
                ok &= status == 0
                table.add_row(
                    "C-ECHO",
                    "Verification",
                    "-",
                    f"0x{status:04X}",
                    f"{(time.perf_counter() - t0) * 1000:.1f}",
                )
                for f, src in zip(files, sources, strict=True):
                    t0 = time.perf_counter()
                    status = (await assoc.store(f)).status
                    ms = (time.perf_counter() - t0) * 1000
                    good = _ok(status) and src.sop_instance_uid in received
                    stored += good
                    ok &= good
                    table.add_row(
                        "C-STORE",
                        f.name,
                        f"{f.stat().st_size // 1024} KiB",
                        f"0x{status:04X}" + ("" if good else " (not received)"),
                        f"{ms:.1f}",
                    )
        console.print(table)
        console.print(
            f"{stored} of {len(files)} instances stored and written as Part 10 files"
            f" ({len(received)} distinct SOP Instance UIDs)"
            + ("; all good." if ok else "; FAILURES above.")
        )
    return 0 if ok else 1


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``asyncdicom`` command."""
    parser = argparse.ArgumentParser(prog="asyncdicom", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"asyncdicom {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("echoscu", help="send C-ECHO (verification)")
    _add_scu(p)
    p.add_argument("--repeat", type=int, default=1, metavar="N", help="C-ECHOs to send")
    _add_common(p)
    p.set_defaults(func=_echoscu)

    p = sub.add_parser("storescu", help="send DICOM files with C-STORE")
    _add_scu(p)
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (walked)")
    p.add_argument("--concurrency", type=int, default=1, metavar="N", help="parallel associations")
    _add_common(p)
    p.set_defaults(func=_storescu)

    p = sub.add_parser("storescp", help="receive DICOM files with C-STORE")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="0.0.0.0", help="address to listen on ('::' for IPv6)")
    p.add_argument("--aet", default="STORESCP")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--output-dir", metavar="DIR", help="write received files here")
    out.add_argument("--ignore", action="store_true", help="receive and discard")
    p.add_argument("--max-associations", type=int, default=1000, metavar="N")
    p.add_argument(
        "--acse-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="association negotiation timeout, also the ARTIM timer",
    )
    p.add_argument(
        "--dimse-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="abort when a message in progress stops arriving for this long",
    )
    p.add_argument(
        "--network-timeout",
        type=float,
        default=None,
        metavar="S",
        help="abort an association silent for this long",
    )
    p.add_argument("--max-pdu", type=int, default=262144, metavar="BYTES")
    _add_common(p)
    p.set_defaults(func=_storescp)

    p = sub.add_parser("demo", help="SCP and SCU in one process: echo and store samples")
    _add_common(p)
    p.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``asyncdicom`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_cli_logging(verbose=args.verbose, json=args.log_json)
    try:
        return int(anyio.run(args.func, args, backend=args.backend))
    except KeyboardInterrupt:
        return 130
    except (CLIError, DICOMError, OSError, ValueError) as exc:
        _err(str(exc))
        return 1
    except BaseExceptionGroup as group:
        first = _first_leaf(group)
        if isinstance(first, (CLIError, DICOMError, OSError, ValueError)):
            _err(str(first))
            return 1
        raise


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


if __name__ == "__main__":
    sys.exit(main())
