"""``asyncdicom router``: receive C-STORE into a durable queue and forward by rules.

``asyncdicom router --port P --queue DIR --forward AET@HOST:PORT [--forward ...] [--rules F]``
runs the router (:mod:`asyncdicom.router.core`) until SIGINT or SIGTERM; SIGUSR1 prints the
state of the queues and destinations.  ``asyncdicom router status --queue DIR`` prints what
the queue folder holds (queued per destination, dead letters, whether a router runs on it)
and exits.

At start the router checks that it can listen, reads the rules (a mistake in them is a usage
error, exit status 2, naming the line), takes the queue folder (another router on it: one
error line, exit status 1) and resumes what is queued there.
"""

from __future__ import annotations

import argparse
import signal
import time
from pathlib import Path
from typing import Any

import anyio

from .apps import APPS
from .argtypes import folder, positive_int, quoted, timeout
from .options import (
    add_access_control,
    add_common,
    add_listen,
    add_max_pdu,
    add_server_timeouts,
    add_tls_out,
    add_tls_server,
)
from .output import CLIError, UsageError, notice, plural

__all__ = ["add_parser", "run", "status_lines"]

#: seconds between two progress lines in the log (-v), when something changed
_PROGRESS_EVERY = 10.0


def _rules_file(text: str) -> tuple[str, str]:
    """An argparse type: a rules file, read now (its path and its text)."""
    try:
        with open(text, encoding="utf-8") as f:
            return text, f.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise argparse.ArgumentTypeError(f"cannot read {quoted(text)}: {reason}") from None


def _destination(text: str) -> Any:
    from ..router.rules import RulesError, parse_destination

    try:
        return parse_destination(text)
    except RulesError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(sub: Any) -> None:
    """Add the ``router`` sub-command to ``sub``."""
    p = sub.add_parser(
        "router",
        help=APPS["router"],
        description="Receive instances with C-STORE into a durable queue on disk and forward "
        "each one to destinations chosen by rules (every destination without --rules). "
        "'asyncdicom router status --queue DIR' prints what a queue folder holds.",
    )
    p.add_argument(
        "action",
        nargs="?",
        choices=("status",),
        metavar="ACTION",
        help="status: print the queues and dead letters of --queue and exit",
    )
    add_listen(p, "ROUTER")
    # --port is required to run, not for 'status' (checked in run())
    for action in p._actions:
        if action.dest == "port":
            action.required = False
            action.default = None
    p.add_argument(
        "--queue",
        type=folder,
        required=True,
        metavar="DIR",
        help="the queue folder (created if needed); one router at a time uses it",
    )
    p.add_argument(
        "--forward",
        type=_destination,
        action="append",
        default=None,
        metavar="AET@HOST:PORT",
        help="a destination (repeatable)",
    )
    p.add_argument(
        "--rules",
        type=_rules_file,
        default=None,
        metavar="FILE",
        help="routing rules (format in docs/cli.md); without it every instance goes to every "
        "destination",
    )
    p.add_argument(
        "--retry-max",
        type=positive_int,
        default=10,
        metavar="N",
        help="attempts per instance and destination before it goes to the dead-letter folder",
    )
    p.add_argument(
        "--retry-delay",
        type=timeout,
        default=1.0,
        metavar="S",
        help="seconds before the first new attempt after a failure; doubled after each "
        "failure in a row, up to --retry-delay-max",
    )
    p.add_argument(
        "--allow-lossy",
        action="store_true",
        help="when a destination accepts only lossy syntaxes for an instance that is not, "
        "compress it lossily (a new instance: new SOP Instance UID); without it that instance "
        "is a dead letter for that destination",
    )
    p.add_argument(
        "--retry-delay-max",
        type=timeout,
        default=60.0,
        metavar="S",
        help="the longest wait between two attempts (--retry-delay if that is longer)",
    )
    add_server_timeouts(p)
    add_max_pdu(p)
    add_access_control(p)
    add_tls_server(p)
    add_tls_out(p, "the destinations", "--forward")
    add_common(p)
    p.set_defaults(func=run)


def _check(args: argparse.Namespace) -> None:
    if args.action == "status":
        for option, value in (
            ("--port", args.port),
            ("--forward", args.forward),
            ("--rules", args.rules),
        ):
            if value is not None:
                raise UsageError(f"argument {option}: not allowed with 'status'")
        return
    missing = [o for o, v in (("--port", args.port), ("--forward", args.forward)) if v is None]
    if missing:
        raise UsageError(f"the following arguments are required: {', '.join(missing)}")
    names = [d.name for d in args.forward]
    for name in names:
        if names.count(name) > 1:
            raise UsageError(f"argument --forward: {name} is given twice")
    titles = {d.ae_title for d in args.forward}
    for aet in args.tls_out_to or []:
        if aet not in titles:
            raise UsageError(f"argument --tls-out-to: {quoted(aet)} is not a --forward AE title")


def _ruleset(args: argparse.Namespace) -> Any:
    from ..router.rules import RulesError, RuleSet, parse_rules

    destinations = tuple(args.forward)
    if args.rules is None:
        return RuleSet(destinations)
    path, text = args.rules
    try:
        rules = parse_rules(text, destinations)
    except RulesError as exc:
        raise UsageError(f"argument --rules: {path}: {exc}") from None
    for dest in rules.unused():
        notice(
            f"router: no rule sends anything to {dest.name}",
            "destination_unused",
            destination=dest.name,
        )
    return rules


async def run(args: argparse.Namespace) -> int:
    """Run the router until SIGINT or SIGTERM (or print the status); the exit status."""
    _check(args)
    if args.action == "status":
        return await _status(args.queue)
    from ..router.core import Router
    from ..router.queue import QueueBusy
    from .server import (
        check_listen,
        install_access_control,
        outgoing_tls,
        prepare_folder,
        server_config,
    )

    rules = _ruleset(args)
    await check_listen(args.host, args.port)
    await prepare_folder(args.queue, "--queue")
    router = Router(
        args.aet,
        args.queue,
        rules,
        retry_max=args.retry_max,
        retry_delay=args.retry_delay,
        retry_delay_max=args.retry_delay_max,
        allow_lossy=args.allow_lossy,
        **server_config(args),
        **outgoing_tls(args),
    )
    install_access_control(router.ae, args)
    try:
        async with router:
            await _serve(router, args, rules)
    except QueueBusy as exc:
        raise CLIError(str(exc)) from None
    return 0


async def _serve(router: Any, args: argparse.Namespace, rules: Any) -> None:
    """Serve until SIGINT or SIGTERM, printing the status on SIGUSR1."""
    from .server import audit_trail, listening, say_listening

    if router.resumed:
        notice(
            f"router: resuming {plural(router.resumed, 'queued instance')} "
            f"({_per_destination(router)})",
            "queue_resumed",
            queued=router.resumed,
        )
    with (
        audit_trail(router.ae, args),
        anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGUSR1) as signals,
    ):
        async with (
            listening(router.ae, args.host, args.port) as server,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(_progress, router)
            say_listening(
                "router",
                router.ae,
                args.host,
                server.port,
                f", forwarding to {', '.join(d.name for d in rules.destinations)}",
                queue=str(args.queue),
            )
            async for signum in signals:
                if signum == signal.SIGUSR1:
                    for line, fields in status_lines(router.status()):
                        notice(line, "router_status", **fields)
                    continue
                break
            tg.cancel_scope.cancel()


def _per_destination(router: Any) -> str:
    return ", ".join(f"{f.destination.name}: {len(f.items)}" for f in router.forwarders.values())


async def _progress(router: Any) -> None:
    """A progress line in the log (``-v``) every :data:`_PROGRESS_EVERY` seconds while
    anything changes."""
    last: Any = None
    while True:
        await anyio.sleep(_PROGRESS_EVERY)
        state = router.status()
        key = (
            state["received"],
            tuple((d["queued"], d["forwarded"]) for d in state["destinations"]),
        )
        if key != last:
            last = key
            router.log.info(
                "progress",
                received=state["received"],
                refused=state["refused"],
                **{
                    d["destination"]: f"{d['queued']} queued, {d['forwarded']} forwarded"
                    for d in state["destinations"]
                },
            )


def status_lines(state: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The lines SIGUSR1 prints for :meth:`Router.status() <asyncdicom.router.core.Router.status>`
    (each with its fields for ``--log-json``)."""
    lines: list[tuple[str, dict[str, Any]]] = [
        (
            f"router: received {state['received']}, refused {state['refused']}, "
            f"resumed from the queue {state['resumed']}",
            {k: state[k] for k in ("received", "refused", "resumed")},
        )
    ]
    for d in state["destinations"]:
        state_text = d["state"]
        if d["retry_in"] is not None:
            state_text += f" (next attempt in {d['retry_in']:g} s)"
        text = (
            f"router: {d['destination']}: {state_text}, {d['queued']} queued, "
            f"{d['forwarded']} forwarded, {d['dead_letters']} dead letters"
        )
        if d["last_error"]:
            text += f", last error: {d['last_error']}"
        lines.append((text, dict(d)))
    return lines


async def _status(queue: Path) -> int:
    from ..router.queue import snapshot

    try:
        snap = await anyio.to_thread.run_sync(snapshot, queue)
    except FileNotFoundError as exc:
        raise CLIError(str(exc)) from None
    if snap.running_pid is None:
        running = "no router runs on it"
    elif snap.running_pid > 0:
        running = f"a router runs on it (pid {snap.running_pid})"
    else:
        running = "a router runs on it"
    print(f"queue {queue}: {plural(snap.instances, 'instance')} queued; {running}")
    now = time.time()
    for dest in snap.destinations:
        oldest = "" if dest.oldest is None else f" (oldest {max(0.0, now - dest.oldest):.0f} s ago)"
        print(f"  {dest.name}: {dest.queued} queued{oldest}, {plural(dest.dead, 'dead letter')}")
    return 0
