"""``asyncdicom bench``: load-test a DICOM node (see :mod:`asyncdicom.loadtest`).

N associations, K operations outstanding on each (when the peer grants an asynchronous
operations window), closed loop or at a fixed arrival rate (``--rate``; latency is measured from
each operation's scheduled time, so a slow peer shows as latency, not as a lower rate).  Live
progress on a terminal, a final table on standard output, ``--json`` and ``--plot`` files.
Exit status 0 only when no operation failed.

``asyncdicom bench merge FILE...`` merges the ``--json`` results of several runs (several
hosts loading one peer) into one (:mod:`asyncdicom.loadtest.merge`) and prints and writes it as
a run's.  The word ``merge`` right after ``bench`` selects it; ``bench`` otherwise takes a
``HOST`` there, so a peer whose host name is ``merge`` is written ``merge.`` (the same name,
fully qualified) or by its address.
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
    BenchResultError,
    LoadGenerator,
    LoadResult,
    LoadSpec,
    Operation,
    RunInfo,
    WorkerFailed,
    merge_runs,
    read_result,
    run_in_processes,
    write_percentile_chart,
)
from .apps import APPS
from .argtypes import ae_title, port, positive_int, quoted, timeout
from .findscu import parse_key
from .options import (
    HelpFormatter,
    add_client_timeouts,
    add_common,
    add_max_pdu,
    add_tls_client,
    add_user_identity,
    client_timeouts,
)
from .output import CLIError, err, format_address, warn
from .scu import scu_user_identity

__all__ = ["add_parser", "run"]

#: the run's length when neither --duration nor --count is given
DEFAULT_DURATION = 10.0
#: the word after ``bench`` that selects merging results (instead of a HOST)
MERGE = "merge"


class _BenchParser(argparse.ArgumentParser):
    """``bench``'s parser: arguments starting with the word ``merge`` go to the parser of
    ``bench merge`` (:attr:`merge_parser`), all others are a load test's."""

    merge_parser: argparse.ArgumentParser | None = None

    def parse_known_args(  # type: ignore[override]
        self, args: Any = None, namespace: Any = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if args and args[0] == MERGE and self.merge_parser is not None:
            parsed, extras = self.merge_parser.parse_known_args(args[1:], namespace)
            if extras:
                # e.g. `bench merge 104 --called-aet X`, meant as a load test of host "merge"
                hint = ""
                if any(a.startswith("--called-aet") for a in extras):
                    hint = f" (a load test of a host named {MERGE!r}: write it '{MERGE}.')"
                self.merge_parser.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
            return parsed, extras
        return super().parse_known_args(args, namespace)


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
        epilog=(
            f"'asyncdicom bench {MERGE} FILE...' merges the --json results of several runs "
            f"(see 'asyncdicom bench {MERGE} --help'); a peer whose host name is {MERGE!r} is "
            f"written '{MERGE}.' or by its address."
        ),
    )
    p.__class__ = _BenchParser
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
    _add_merge_parser(p)


def _add_merge_parser(bench: argparse.ArgumentParser) -> None:
    """The parser of ``bench merge`` (see :class:`_BenchParser`)."""
    m = argparse.ArgumentParser(
        prog=f"{bench.prog} {MERGE}",
        formatter_class=HelpFormatter,
        description=(
            "Merge the --json results of several bench runs (several hosts loading one node) "
            "into one: counts added, latency histograms added, rates summed over the time "
            "window the runs have in common. The result is printed and written as a run's."
        ),
    )
    m.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="results written by 'bench --json' (or by 'bench merge --json')",
    )
    m.add_argument(
        "--json", type=Path, default=None, metavar="FILE", help="write the merged result as JSON"
    )
    m.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="FILE.png",
        help="write the merged latency-percentile chart (PNG)",
    )
    add_common(m)
    m.set_defaults(func=run_merge, bench_parser=m)
    assert isinstance(bench, _BenchParser)
    bench.merge_parser = m


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
    if result.run is None:
        result.run = RunInfo.of(spec, args.processes)
    return _report(result, args)


def _report(result: LoadResult, args: argparse.Namespace) -> int:
    """The table, the --json and --plot files of a result (run or merged); 1 when an
    operation failed."""
    _print_table(result)
    if args.json is not None:
        args.json.write_text(json.dumps(result.summary(), indent=2) + "\n")
    if args.plot is not None:
        curves = [("operation latency", result.latency), ("association setup", result.setup)]
        assert result.run is not None
        when = datetime.now(timezone.utc)
        if result.run.runs > 1:
            when = datetime.fromtimestamp(result.started, timezone.utc)
        title = chart_title(result, result.run, when)
        write_percentile_chart(os.fspath(args.plot), curves, title=title)
    if result.errors:
        assert result.run is not None
        kinds = ", ".join(f"{k}: {n}" for k, n in sorted(result.errors_by_kind.items()))
        err(
            f"{result.errors} of {result.operations} operations with "
            f"{_peers(result.run)} failed ({kinds})"
        )
        return 1
    return 0


async def run_merge(args: argparse.Namespace) -> int:
    """``bench merge``: read the results, merge them, report as ``run`` does.  A file that
    cannot be read, is no bench result, or does not merge with the others is a usage error
    (exit 2); 1 when the merged runs had failed operations."""
    parser: argparse.ArgumentParser = args.bench_parser
    results: list[LoadResult] = []
    for name in args.files:
        try:
            results.append(read_result(name))
        except FileNotFoundError:
            parser.error(f"argument FILE: {name}: no such file")
        except OSError as exc:
            parser.error(f"argument FILE: {name}: cannot be read ({exc.strerror or exc})")
        except BenchResultError as exc:
            parser.error(f"argument FILE: {name}: not a bench result: {exc}")
    try:
        merged = merge_runs(results, args.files)
    except BenchResultError as exc:
        parser.error(f"cannot merge: {exc}")
    shortest = min(results, key=lambda r: r.elapsed)
    if len(results) > 1 and merged.elapsed < 0.5 * shortest.elapsed:
        warn(
            f"the runs have {merged.elapsed:.2f} s in common, "
            f"{merged.elapsed / shortest.elapsed:.0%} of the shortest ({shortest.elapsed:.2f} s): "
            "the merged rates rest on that window only"
        )
    return _report(merged, args)


def _peers(run: RunInfo) -> str:
    """The peers of a run for a message: ``HOST:PORT``, or several separated by commas."""
    return ", ".join(format_address(host, port) for _aet, host, port in run.peers)


def chart_title(result: LoadResult, spec: LoadSpec | RunInfo, when: datetime | None = None) -> str:
    """The title of ``bench --plot``'s chart, two lines: the operation and the peer(s); how
    many operations (and how they were paced, and how many runs were merged), and the date
    (UTC)."""
    when = when or datetime.now(timezone.utc)
    run = spec if isinstance(spec, RunInfo) else RunInfo.of(spec)
    loop = f"{run.rate:g}/s" if run.rate else "closed loop"
    associations = "1 association" if run.associations == 1 else f"{run.associations} associations"
    peers = ", ".join(f"{aet} at {format_address(host, port)}" for aet, host, port in run.peers)
    if len(run.peers) > 2:  # the chart's width
        peers = f"{len(run.peers)} peers"
    runs = f"{run.runs} runs, " if run.runs > 1 else ""
    return (
        f"bench {run.operation}: {peers}"
        f"\n{result.operations:,} operations, {runs}{associations} x window {_windows(run)}, "
        f"{loop}; {when:%Y-%m-%d %H:%M}Z"
    )


def _windows(run: RunInfo) -> str:
    return "/".join(str(w) for w in run.windows)


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


def _print_table(result: LoadResult) -> None:
    from rich.console import Console
    from rich.table import Table

    run = result.run
    assert run is not None
    summary = result.summary()
    loop = f"open loop, {run.rate:g}/s" if run.rate else "closed loop"
    runs = f", {run.runs} runs merged" if run.runs > 1 else ""
    table = Table(
        title=(
            f"bench {run.operation} {_peers(run)}: "
            f"{run.associations} associations x window {_windows(run)}, {loop}, "
            f"{run.processes} process{'es' if run.processes > 1 else ''}{runs}"
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
    if run.runs > 1:
        start, end = (summary["started"], summary["ended"])
        console.print(
            f"{run.runs} runs merged: rates over their common window, {start} to {end}",
            highlight=False,
        )
