"""``asyncdicom bench``: load-test a DICOM node (see :mod:`asyncdicom.loadtest`).

N associations, K operations outstanding on each (when the peer grants an asynchronous
operations window), closed loop or at a fixed arrival rate (``--rate``; latency is measured from
each operation's scheduled time, so a slow peer shows as latency, not as a lower rate).  Live
progress on a terminal, a final table on standard output, ``--json`` and ``--plot`` files.
Exit status 0 only when no operation failed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio

from ..loadtest import (
    LoadGenerator,
    LoadResult,
    LoadSpec,
    Operation,
    WorkerFailed,
    run_in_processes,
    write_percentile_chart,
)
from .apps import APPS
from .argtypes import ae_title, port, positive_int, quoted, timeout
from .findscu import parse_key
from .options import (
    add_client_timeouts,
    add_common,
    add_max_pdu,
    add_tls_client,
    add_user_identity,
    client_timeouts,
)
from .output import CLIError, err, format_address
from .scu import scu_user_identity

__all__ = ["add_parser", "run"]

#: the run's length when neither --duration nor --count is given
DEFAULT_DURATION = 10.0


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a number of operations per second: {text!r}"
        ) from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(
            f"must be a number of operations per second above 0, not {text}"
        )
    return value


def _key(text: str) -> tuple[str, str]:
    """``-k KEYWORD[=VALUE]``, checked as findscu checks its keys (an empty or unknown key,
    a value its VR cannot hold, are usage errors); a keyword only, no sequence."""
    from pydicom.datadict import tag_for_keyword

    keyword, _, value = text.partition("=")
    keyword = keyword.strip()
    _tag, vr, _value = parse_key(text)
    if tag_for_keyword(keyword) is None:
        raise argparse.ArgumentTypeError(f"{quoted(keyword)} is not a DICOM keyword")
    if vr == "SQ":
        raise argparse.ArgumentTypeError(f"{keyword} is a sequence: not supported as a key here")
    return keyword, value


def add_parser(sub: Any) -> None:
    """Add the ``bench`` sub-command to ``sub``."""
    p = sub.add_parser(
        "bench",
        help=APPS["bench"],
        description=(
            "Load-test a DICOM node: many associations, several operations outstanding on each, "
            "closed loop or at a fixed arrival rate; latency percentiles and rates."
        ),
    )
    p.add_argument("host", metavar="HOST", help="peer host name or address (IPv4 or IPv6)")
    p.add_argument("port", metavar="PORT", type=port, help="peer TCP port (1..65535)")
    p.add_argument(
        "--called-aet",
        type=ae_title,
        required=True,
        metavar="C",
        help="the peer's (called) AE title",
    )
    p.add_argument(
        "--aet", type=ae_title, default="ASYNCDICOM", metavar="A", help="our (calling) AE title"
    )
    p.add_argument(
        "--operation",
        choices=[op.value for op in Operation],
        default="echo",
        help="the operation to repeat",
    )
    p.add_argument(
        "--files",
        nargs="+",
        default=None,
        metavar="PATH",
        help="DICOM files or folders (walked recursively) to store, or to commit",
    )
    p.add_argument(
        "--associations",
        type=positive_int,
        default=1,
        metavar="N",
        help="concurrent associations (each re-opened when the peer closes it)",
    )
    p.add_argument(
        "--window",
        type=positive_int,
        default=1,
        metavar="K",
        help="operations outstanding per association (proposed as the asynchronous operations "
        "window; the peer may grant fewer)",
    )
    p.add_argument(
        "--rate",
        type=_rate,
        default=None,
        metavar="OPS_PER_S",
        help="open loop: start operations at this fixed rate (all associations together); "
        "latency counts from each operation's scheduled time (default: closed loop)",
    )
    stop = p.add_mutually_exclusive_group()
    stop.add_argument(
        "--duration",
        type=timeout,
        default=None,
        metavar="S",
        help=f"seconds to run (default {DEFAULT_DURATION:g} when --count is not given)",
    )
    stop.add_argument(
        "--count", type=positive_int, default=None, metavar="N", help="operations to do in all"
    )
    p.add_argument(
        "--processes",
        type=positive_int,
        default=1,
        metavar="P",
        help="worker processes to spread the associations over (their results are merged)",
    )
    p.add_argument(
        "--new-uids",
        action="store_true",
        help="store every instance with fresh Study/Series/SOP Instance UIDs (the pixel data "
        "is not re-encoded)",
    )
    p.add_argument(
        "--json", type=Path, default=None, metavar="FILE", help="write the results as JSON"
    )
    p.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="FILE.png",
        help="write a latency-percentile chart (PNG)",
    )
    p.add_argument(
        "-k",
        "--key",
        type=_key,
        action="append",
        default=None,
        metavar="KEY[=VALUE]",
        help="find/move: a query key by keyword (repeatable), e.g. -k PatientID=123",
    )
    p.add_argument(
        "--level",
        choices=("PATIENT", "STUDY", "SERIES", "IMAGE"),
        default="STUDY",
        help="find/move: the Query/Retrieve Level",
    )
    p.add_argument(
        "--model",
        choices=("patient", "study"),
        default="study",
        help="find/move: the information model (Patient Root or Study Root)",
    )
    p.add_argument(
        "--move-dest", type=ae_title, default=None, metavar="AET", help="move: the destination AE"
    )
    p.add_argument(
        "--commit-timeout",
        type=timeout,
        default=60.0,
        metavar="S",
        help="commit: seconds to wait for each report (on the same association)",
    )
    p.add_argument(
        "--bind", default=None, metavar="ADDR", help="local address to connect from (default: any)"
    )
    add_max_pdu(p)
    add_client_timeouts(p, "seconds allowed for each TCP connection")
    add_tls_client(p)
    add_user_identity(p)
    add_common(p)
    p.set_defaults(func=run, bench_parser=p)


def _files(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        elif path.exists():
            out.append(path)
        else:
            raise CLIError(f"{name}: no such file or folder")
    if paths and not out:
        raise CLIError("no files in the folders named")
    return out


def spec_from_args(args: argparse.Namespace) -> LoadSpec:
    """The :class:`~asyncdicom.loadtest.LoadSpec` of ``bench``'s options (a usage error,
    exit 2, for options that do not fit together)."""
    parser: argparse.ArgumentParser = args.bench_parser
    op = Operation(args.operation)
    if op in (Operation.STORE, Operation.COMMIT) and not args.files:
        parser.error(f"argument --files: the {op.value} operation needs files")
    if op is Operation.MOVE and not args.move_dest:
        parser.error("argument --move-dest: the move operation needs a destination")
    if args.new_uids and op is not Operation.STORE:
        parser.error("argument --new-uids: applies to --operation store only")
    duration = args.duration
    if duration is None and args.count is None:
        duration = DEFAULT_DURATION
    return LoadSpec(
        host=args.host,
        port=args.port,
        called_aet=args.called_aet,
        operation=op,
        files=tuple(_files(args.files or [])),
        associations=args.associations,
        window=args.window,
        rate=args.rate,
        duration=duration,
        count=args.count,
        new_uids=args.new_uids,
        query=tuple(args.key or ()),
        level=args.level,
        model=args.model,
        move_destination=args.move_dest,
        commit_timeout=args.commit_timeout,
        aet=args.aet,
        bind=args.bind,
        max_pdu=args.max_pdu,
        timeouts=client_timeouts(args),
        tls=bool(getattr(args, "ssl_context", None)),
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_check_hostname=not args.tls_no_hostname_check,
        user_identity=scu_user_identity(args),
    )


async def run(args: argparse.Namespace) -> int:
    """Run the load test; 0 when no operation failed."""
    from rich.console import Console

    spec = spec_from_args(args)
    live_console = Console(stderr=True)
    state = {"operations": 0, "errors": 0}

    def on_progress(operations: int, errors: int) -> None:
        state["operations"], state["errors"] = operations, errors

    started = anyio.current_time()
    result: LoadResult
    async with anyio.create_task_group() as tg:
        if live_console.is_terminal:
            tg.start_soon(_show_progress, live_console, state, started)
        if args.processes > 1:
            try:
                result = await run_in_processes(
                    spec, args.processes, backend=args.backend, on_progress=on_progress
                )
            except WorkerFailed as exc:
                raise CLIError(str(exc)) from None
        else:
            generator = LoadGenerator(spec)
            await anyio.to_thread.run_sync(generator.prepare)

            async def poll() -> None:
                while True:
                    on_progress(generator.operations, generator.errors)
                    await anyio.sleep(0.2)

            tg.start_soon(poll)
            result = await generator.run()
        tg.cancel_scope.cancel()
    _print_table(result, spec, args)
    if args.json is not None:
        args.json.write_text(json.dumps(result.summary(), indent=2) + "\n")
    if args.plot is not None:
        curves = [("operation latency", result.latency), ("association setup", result.setup)]
        write_percentile_chart(os.fspath(args.plot), curves, title=chart_title(result, spec))
    if result.errors:
        kinds = ", ".join(f"{k}: {n}" for k, n in sorted(result.errors_by_kind.items()))
        err(
            f"{result.errors} of {result.operations} operations with "
            f"{format_address(spec.host, spec.port)} failed ({kinds})"
        )
        return 1
    return 0


def chart_title(result: LoadResult, spec: LoadSpec, when: datetime | None = None) -> str:
    """The title of ``bench --plot``'s chart, two lines: the operation and the peer; how many
    operations (and how they were paced), and the date (UTC)."""
    when = when or datetime.now(timezone.utc)
    loop = f"{spec.rate:g}/s" if spec.rate else "closed loop"
    associations = (
        "1 association" if spec.associations == 1 else f"{spec.associations} associations"
    )
    return (
        f"bench {spec.operation.value}: {spec.called_aet} at {format_address(spec.host, spec.port)}"
        f"\n{result.operations:,} operations, {associations} x window {spec.window}, {loop}; "
        f"{when:%Y-%m-%d %H:%M}Z"
    )


async def _show_progress(console: Any, state: dict[str, int], started: float) -> None:
    from rich.live import Live
    from rich.text import Text

    def line() -> Text:
        elapsed = max(anyio.current_time() - started, 1e-9)
        ops, errors = state["operations"], state["errors"]
        return Text(
            f"{elapsed:6.1f} s  {ops:>9,} operations  {ops / elapsed:>9,.0f}/s  {errors:,} errors"
        )

    with Live(line(), console=console, transient=True, auto_refresh=False) as live:
        while True:
            await anyio.sleep(0.25)
            live.update(line(), refresh=True)


def _print_table(result: LoadResult, spec: LoadSpec, args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    summary = result.summary()
    loop = f"open loop, {spec.rate:g}/s" if spec.rate else "closed loop"
    table = Table(
        title=(
            f"bench {spec.operation.value} {format_address(spec.host, spec.port)}: "
            f"{spec.associations} associations x window {spec.window}, {loop}, "
            f"{args.processes} process{'es' if args.processes > 1 else ''}"
        ),
        title_justify="left",
    )
    table.add_column("")
    for name in ("p50", "p90", "p99", "p99.9", "max"):
        table.add_column(f"{name} ms", justify="right")
    for label, key in (("latency", "latency_ms"), ("association setup", "association_setup_ms")):
        values = summary[key]
        table.add_row(label, *(f"{values[k]:.3f}" for k in ("p50", "p90", "p99", "p999", "max")))
    console = Console(soft_wrap=True)
    console.print(table)
    negotiated = summary["negotiated"]
    window = negotiated.get("operations_outstanding", "-")
    console.print(
        f"operations {result.operations:,}  errors {result.errors:,}  "
        f"{result.ops_per_s:,.1f} ops/s  {result.mb_per_s:,.2f} MB/s  "
        f"in {result.elapsed:.2f} s; associations opened {result.associations_opened:,}, "
        f"outstanding per association {window}",
        highlight=False,
    )
    for kind, n in sorted(result.errors_by_kind.items()):
        console.print(f"  errors {kind}: {n:,}", highlight=False)
